"""Generation from the one `Pipeline` (`models.bundle`, re-exported here): `load_pipeline`, `generate` (txt2img,
img2img, Enhance, inpainting), parameters and their validation (`params`, torch-free), image files and PNG
metadata; schedules come from the one entry point `schedule_policy.sigmas`.

Names are imported lazily, so that the command line can read `params` without importing torch.
"""

import importlib

_EXPORTS = {'Pipeline': '.models.bundle', 'load_pipeline': 'lookup', 'generate': 'generate',
            'GenerationParams': 'params', 'check_params': 'params', 'read_metadata': 'metadata',
            'save_png': 'metadata'}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f'.{_EXPORTS[name]}', __name__), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
