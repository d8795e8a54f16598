"""The trained-model format: a checkpoint folder of safetensors files whose metadata carries the config.

``model.safetensors`` and ``ema.safetensors`` hold the inner network (metadata: ``config`` JSON, ``step``,
``base_side`` — the canvas side the model was trained at, for the §2.3 resolution rule), ``text.safetensors``
the frozen random text encoders of text.type 'clip'. An out_dir's ``latest`` file names its newest checkpoint.
Every file is written by `files.atomic_write`: a temporary name, flushed to disk, then renamed into place.
"""

import json
from pathlib import Path
from typing import Optional

from safetensors import safe_open

from ..denoisers import DiscreteVDenoiser
from ..files import PathLike, load_weights
from ..text import TextConditioner, build_text
from .alphas import alphas_cumprod_for
from .registry import build_denoiser, build_model


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
    if not Path(path).is_file():
        raise FileNotFoundError(f'{path}: no such file')
    try:
        with safe_open(str(path), 'pt') as f:
            meta = dict(f.metadata() or {})
    except Exception as e:
        raise ValueError(f'{path}: not a readable .safetensors file (truncated or corrupt: {str(e)[:200]})') from None
    if 'config' not in meta:
        raise ValueError(f'{path}: no training config in its metadata (not written by kdiff-ztsnr train)')
    try:
        meta['config'] = json.loads(meta['config'])
    except (ValueError, RecursionError) as e:
        raise ValueError(f'{path}: its config metadata is not valid JSON ({str(e)[:200]})') from None
    if not isinstance(meta['config'], dict):
        raise ValueError(f'{path}: its config metadata must be a JSON object')
    return meta


def check_trusted(config: dict, path: PathLike, trust_module: bool = False) -> None:
    """A shared checkpoint must not run code: model.type 'module' imports any callable its config names."""
    mc = config.get('model', {})
    target = str(mc.get('target', ''))
    if mc.get('type') == 'module' and not trust_module and not target.startswith(('kdiff_ztsnr.', 'torch.nn:')):
        raise ValueError(f'{path}: model.type "module" would import and call {target!r}; load it from Python with '
                         f'load_trained(path, trust_module=True) if you trust this checkpoint')


def load_trained(path: PathLike, ema: bool = True, device='cpu',
                 trust_module: bool = False) -> tuple[DiscreteVDenoiser, Optional[TextConditioner], dict]:
    """(denoiser, text conditioner or None, metadata) from a checkpoint directory or out_dir, for sampling."""
    ckpt = resolve_checkpoint(path)
    weights = ckpt / ('ema.safetensors' if ema else 'model.safetensors')
    meta = read_metadata(weights)
    config = meta['config']
    check_trusted(config, weights, trust_module)
    try:
        text = build_text(config['text'])
        inner = build_model(config)
    except (KeyError, TypeError, AttributeError, IndexError) as e:   # a config not written by the trainer
        raise ValueError(f'{weights}: its config cannot build a model ({type(e).__name__}: {e})') from None
    if text is not None and (ckpt / 'text.safetensors').is_file():
        load_weights(text, ckpt / 'text.safetensors')
    load_weights(inner, weights)
    model = build_denoiser(config, inner).eval().requires_grad_(False).to(device)
    return model, (None if text is None else text.to(device)), meta


def trained_pipeline(path: PathLike, device='cpu', name: str = 'model'):
    """A pixel-space model written by kdiff_ztsnr.training (its EMA weights and frozen text encoders)."""
    from .bundle import Pipeline
    ckpt = resolve_checkpoint(path)
    config = read_metadata(ckpt / 'ema.safetensors')['config']
    if config['model']['type'] == 'sdxl':               # the checkpoint's SGM single file / diffusers folder
        from .sdxl.parts import sdxl_checkpoint_pipeline
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
