"""The trained-model format: a checkpoint folder of safetensors files whose metadata carries the config.

``model.safetensors`` and ``ema.safetensors`` hold the inner network (metadata: ``config`` JSON, ``step``,
``base_side`` — the canvas side the model was trained at, for the §2.3 resolution rule), ``text.safetensors``
the frozen random text encoders of text.type 'clip'. An out_dir's ``latest`` file names its newest checkpoint.
Every file is written by `atomic_write`: a temporary name, flushed to disk, then renamed into place.
"""

import json
import os
from pathlib import Path
from typing import Callable, Optional, Union

from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ..denoisers import DiscreteVDenoiser
from ..text import TextConditioner, build_text
from . import alphas_cumprod_for, build_denoiser, build_model

PathLike = Union[str, os.PathLike]


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """write(tmp) to a temporary sibling, fsync it, then os.replace it onto path (never a half-written path)."""
    path = Path(path)
    tmp = path.with_name(f'.{path.name}.tmp{os.getpid()}')
    write(tmp)
    with open(tmp, 'rb+') as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_weights(module: nn.Module, path: Path, metadata: dict) -> None:
    """A module's state dict as safetensors (contiguous CPU copies), string metadata, atomically."""
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={k: str(v) for k, v in metadata.items()}))


def resolve_checkpoint(path: PathLike) -> Path:
    """A checkpoint directory, an exported model directory (weights only), or an out_dir whose ``latest``
    file names a checkpoint."""
    path = Path(path)
    if (path / 'state.pt').is_file() or (path / 'ema.safetensors').is_file():
        return path
    if (path / 'latest').is_file():
        return path / (path / 'latest').read_text().strip()
    raise FileNotFoundError(f'{path} is neither a checkpoint directory nor an out_dir with a latest checkpoint')


def read_metadata(path: Path) -> dict:
    """The string metadata of a safetensors file, with ``config`` parsed from JSON."""
    with safe_open(str(path), 'pt') as f:
        meta = dict(f.metadata() or {})
    if 'config' not in meta:
        raise ValueError(f'{path}: no training config in its metadata (not written by kdiff-ztsnr train)')
    meta['config'] = json.loads(meta['config'])
    return meta


def load_trained(path: PathLike, ema: bool = True,
                 device='cpu') -> tuple[DiscreteVDenoiser, Optional[TextConditioner], dict]:
    """(denoiser, text conditioner or None, metadata) from a checkpoint directory or out_dir, for sampling."""
    ckpt = resolve_checkpoint(path)
    weights = ckpt / ('ema.safetensors' if ema else 'model.safetensors')
    meta = read_metadata(weights)
    config = meta['config']
    text = build_text(config['text'])
    if text is not None and (ckpt / 'text.safetensors').is_file():
        text.load_state_dict(load_file(str(ckpt / 'text.safetensors')))
    inner = build_model(config)
    inner.load_state_dict(load_file(str(weights)))
    model = build_denoiser(config, inner).eval().requires_grad_(False).to(device)
    return model, (None if text is None else text.to(device)), meta


def trained_pipeline(path: PathLike, device='cpu', name: str = 'model'):
    """A pixel-space model written by kdiff_ztsnr.training (its EMA weights and frozen text encoders)."""
    from ..generation.pipeline import Pipeline
    ckpt = resolve_checkpoint(path)
    config = read_metadata(ckpt / 'ema.safetensors')['config']
    if config['model']['type'] == 'sdxl':               # the checkpoint's SGM single file / diffusers folder
        from .sdxl.train import sdxl_checkpoint_pipeline
        return sdxl_checkpoint_pipeline(ckpt, config, device, name)
    model, text, meta = load_trained(path, ema=True, device=device)
    config, mc = meta['config'], meta['config']['model']
    if text is not None:
        text.chunk_kwargs['truncate'] = True        # generation warns and shows what an overlong prompt loses
    encode = (lambda prompts: {k: v.to(device) for k, v in text(prompts).items()}) if text is not None else \
        (lambda prompts: {})
    return Pipeline(inner_model=model.inner_model, alphas_cumprod=alphas_cumprod_for(mc.get('zero_terminal_snr', True)),
                    encode_prompts=encode, channels=mc['input_channels'], factor=1,
                    base_side=int(meta['base_side']),
                    size_multiple=2 ** (len(mc['depths']) - 1) * mc.get('patch_size', 1),
                    max_chunks=config['text'].get('max_chunks', 3), sigma_data=mc.get('sigma_data', 1.), name=name,
                    info={'config': json.dumps(config)}, components={'model': model.inner_model, 'text': text})
