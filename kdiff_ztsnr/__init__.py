"""kdiff-ztsnr: exact zero-terminal-SNR sampling and training for v-prediction models on k-diffusion.

The core (`schedules`, `denoisers`, `sampling`, `guidance`, `img2img`, `losses`, `oracle`) is flat and
imported on first use, so that ``import kdiff_ztsnr`` (and the command line's --help) does not import torch.
"""

import importlib
import warnings

# k-diffusion imports clip-anytorch, which imports pkg_resources (deprecated in setuptools): not our users' concern.
warnings.filterwarnings('ignore', message='pkg_resources is deprecated', category=UserWarning)

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
