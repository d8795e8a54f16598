"""Training v-prediction ZTSNR models on k-diffusion's pieces (report §2.2, §4): `config` (defaults and
loading), `data` (image folders, buckets, tags, synthetic set, latent cache, the batch source), `optim`
(optimizer, LR and EMA schedules), `checkpoint` (training state), `trainer`.

Names are imported lazily, so that the command line can build its parser without importing torch.
"""

import importlib

_EXPORTS = {'Trainer': 'trainer', 'DEFAULTS': 'config', 'load_training_config': 'config',
            'resolve_text_dims': 'config'}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f'.{_EXPORTS[name]}', __name__), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
