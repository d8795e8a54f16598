"""Turn what a user names on the command line into a `Pipeline`.

Pipelines warn (and name the dropped text) when a prompt exceeds the chunk limit instead of raising.

'embedded' (the small model shipped in the package), a directory written by the trainer (a checkpoint or an
out_dir), or an SDXL-architecture model (diffusers folder or single-file .safetensors).
"""

import os
from pathlib import Path
from typing import Union

from .pipeline import Pipeline

EMBEDDED = Path(__file__).resolve().parents[1] / 'assets' / 'embedded'


def is_trainer_checkpoint(path: Path) -> bool:
    return (path / 'ema.safetensors').is_file() or (path / 'latest').is_file()


def is_sdxl(path: Path) -> bool:
    if path.is_dir():
        return (path / 'unet').is_dir() or (path / 'model_index.json').is_file()
    return path.suffix == '.safetensors'


def load_pipeline(spec: Union[str, os.PathLike] = 'embedded', device='cpu') -> Pipeline:
    """A Pipeline for 'embedded', a trainer checkpoint directory, or an SDXL folder / .safetensors file."""
    path = EMBEDDED if str(spec) == 'embedded' else Path(spec)
    if not path.exists():
        hint = ' (the embedded model ships with the package: reinstall it)' if str(spec) == 'embedded' else ''
        raise FileNotFoundError(f'model not found: {path}{hint}')
    if path.is_dir() and is_trainer_checkpoint(path):
        from ..models.checkpoint import trained_pipeline
        return trained_pipeline(path, device, name='embedded' if path == EMBEDDED else str(spec))
    if is_sdxl(path):
        from ..models.sdxl import load_sdxl
        return load_sdxl(path, device=device, text_kwargs={'truncate': True})
    raise ValueError(f'{path}: not a kdiff-ztsnr checkpoint (no ema.safetensors / latest) nor an SDXL model '
                     f'(diffusers folder with unet/, or a single-file .safetensors)')
