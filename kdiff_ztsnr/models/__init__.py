"""Inner v networks ``(x_in, t, **cond) -> v``, the ᾱ table they are trained on (report §2.2) and the bundle a
generator needs (`bundle.Pipeline`).

``build_model(config)`` builds the network of a k-diffusion-style config's ``model`` section (``type`` ∈ the
closed registry MODEL_TYPES, `registry`; a user's own ``type: 'module'`` only with ``trust_code=True``); ``build_denoiser(config)`` wraps it in ``DiscreteVDenoiser``; ``alphas_cumprod_for``
(`alphas`) is the one place that decides a model's ᾱ table. ``models.sdxl`` holds the SDXL architecture,
``models.trained`` the trained-model file format.

Names are imported lazily, so that importing a submodule does not import the others.
"""

import importlib

_EXPORTS = {'alphas_cumprod_for': 'alphas', 'check_scheduler_config': 'alphas', 'build_model': 'registry',
            'build_denoiser': 'registry', 'build_trusted_module': 'registry', 'MODEL_TYPES': 'registry',
            'CUSTOM_CODE_HINT': 'registry', 'Pipeline': 'bundle'}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f'.{_EXPORTS[name]}', __name__), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
