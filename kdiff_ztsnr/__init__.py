"""kdiff-ztsnr: exact zero-terminal-SNR sampling and training for v-prediction models on k-diffusion.

The core (`schedules`, `denoisers`, `sampling`, `guidance`, `img2img`, `losses`, `oracle`) is flat and
imported on first use, so that ``import kdiff_ztsnr`` (and the command line's --help) does not import torch.
"""

import importlib
import warnings


def ignore_third_party_warnings() -> None:
    """Filters for the dependencies' warnings that say nothing to our users (installed on import)."""
    # clip-anytorch (a k-diffusion dependency) imports pkg_resources, deprecated in setuptools
    warnings.filterwarnings('ignore', message='pkg_resources is deprecated', category=UserWarning)
    # k-diffusion's jsonmerge uses jsonschema's deprecated RefResolver
    warnings.filterwarnings('ignore', message='jsonschema.RefResolver is deprecated', category=DeprecationWarning)
    # torchsde, when a Brownian-tree query lands a float32 rounding past the tree's end (it then clamps it)
    warnings.filterwarnings('ignore', message=r'Should have \w+(>=|<=)\w+ but got', category=UserWarning)


ignore_third_party_warnings()

__version__ = '0.1.0'

_SUBMODULES = ('schedules', 'denoisers', 'sampling', 'guidance', 'img2img', 'losses', 'oracle', 'generation',
               'models', 'text', 'training', 'integrations')
_EXPORTS = {'DiscreteVDenoiser': 'denoisers', 'VDenoiser': 'denoisers', 'CompVisVDenoiser': 'denoisers',
            'v_scalings': 'denoisers', 'CFGDenoiser': 'guidance', 'infinite_step': 'sampling', 'ztsnr': 'sampling'}


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f'.{name}', __name__)
    if name in _EXPORTS:
        return getattr(importlib.import_module(f'.{_EXPORTS[name]}', __name__), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__() -> list[str]:
    return sorted([*globals(), *_SUBMODULES, *_EXPORTS])
