"""Turn what a user names on the command line into a `Pipeline`.

Pipelines warn (and name the dropped text) when a prompt exceeds the chunk limit instead of raising.

'embedded' (the small model shipped in the package), a directory written by the trainer (a checkpoint or an
out_dir), or an SDXL-architecture model (diffusers folder or single-file .safetensors).
"""

import json
import math
import os
from pathlib import Path
from typing import Union

import torch

from .pipeline import Pipeline

EMBEDDED = Path(__file__).parent / 'assets' / 'embedded'


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
        return trained_pipeline(path, device, name='embedded' if path == EMBEDDED else str(spec))
    if is_sdxl(path):
        from .sdxl import sdxl_pipeline
        return sdxl_pipeline(path, device=device, text_kwargs={'truncate': True})
    raise ValueError(f'{path}: not a kdiff-ztsnr checkpoint (no ema.safetensors / latest) nor an SDXL model '
                     f'(diffusers folder with unet/, or a single-file .safetensors)')


def trained_pipeline(path: Path, device='cpu', name: str = 'model') -> Pipeline:
    """A pixel-space model written by kdiff_ztsnr.training (its EMA weights and frozen text encoders)."""
    from .models import alphas_cumprod_for
    from .training import load_trained
    model, text, config = load_trained(path, ema=True, device=device)
    if text is not None:
        text.chunk_kwargs['truncate'] = True        # generation warns and shows what an overlong prompt loses
    mc = config['model']
    ac = alphas_cumprod_for(mc)
    sizes = config['dataset'].get('synthetic', {}).get('sizes') or [[32, 32]]
    encode = (lambda prompts: {k: v.to(device) for k, v in text(prompts).items()}) if text is not None else \
        (lambda prompts: {})
    return Pipeline(inner_model=model.inner_model, alphas_cumprod=ac, encode_prompts=encode,
                    channels=mc['input_channels'], factor=1, base_side=int(math.sqrt(sizes[0][0] * sizes[0][1])),
                    size_multiple=2 ** (len(mc['depths']) - 1) * mc.get('patch_size', 1),
                    max_chunks=config['text'].get('max_chunks', 3), sigma_data=mc.get('sigma_data', 1.), name=name,
                    info={'config': json.dumps(config)})
