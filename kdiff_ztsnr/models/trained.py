"""The trained-model format: a checkpoint folder of safetensors files whose metadata carries the config.

``model.safetensors`` and ``ema.safetensors`` hold the inner network (metadata: ``config`` JSON, ``step``,
``base_side`` — the canvas side the model was trained at, for the §2.3 resolution rule), ``text.safetensors``
the frozen random text encoders of text.type 'clip'. An out_dir's ``latest`` file names its newest checkpoint.
Every file is written by `files.atomic_write`: a temporary name, flushed to disk, then renamed into place.
Reading one treats it as a stranger's: its config names a family of the closed registry (a 'module' network
comes from the caller, nothing is imported), the networks it declares are checked against its files on the
meta device before they are built, and every malformed part is one ValueError naming the file.
"""

import json
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from ..denoisers import DiscreteVDenoiser
from ..files import PathLike, SafetensorsReader, check_fits, load_weights
from ..text import TextConditioner, build_text
from ..untrusted import printable, regular_file
from .alphas import alphas_cumprod_for
from .registry import build_denoiser, build_model

MAX_CONFIG = 1 << 20                 # characters of config JSON in a checkpoint's metadata
BUILD_ERRORS = (KeyError, TypeError, AttributeError, IndexError, ValueError, RuntimeError, ZeroDivisionError,
                OverflowError, RecursionError)
MAX_UNSTORED_TEXT = 1 << 30          # bytes of random text encoders a checkpoint may declare without text.safetensors


def resolve_checkpoint(path: PathLike) -> Path:
    """A checkpoint directory, an exported model directory (weights only), or an out_dir whose ``latest``
    file names a checkpoint."""
    path = Path(path)
    if (path / 'state.pt').is_file() or (path / 'ema.safetensors').is_file():
        return path
    if (path / 'latest').is_file():
        with open(regular_file(path / 'latest'), encoding='utf-8', errors='replace') as f:
            name = f.read(256).strip()
        if not name or name in ('.', '..') or any(c in name for c in '/\\\0'):
            raise ValueError(f'{path / "latest"}: must name a checkpoint folder inside {path}, got {name!r}')
        return path / name
    raise FileNotFoundError(f'{path} is neither a checkpoint directory nor an out_dir with a latest checkpoint')


def read_metadata(path: Path) -> dict:
    """The string metadata of a safetensors file, with ``config`` parsed from JSON."""
    meta = SafetensorsReader(path).metadata
    if 'config' not in meta:
        raise ValueError(f'{path}: no training config in its metadata (not written by kdiff-ztsnr train)')
    if len(meta['config']) > MAX_CONFIG:
        raise ValueError(f'{path}: its config metadata is {len(meta["config"])} characters (at most {MAX_CONFIG})')
    try:
        meta['config'] = json.loads(meta['config'])
    except (ValueError, RecursionError) as e:
        raise ValueError(f'{path}: its config metadata is not valid JSON ({str(e)[:200]})') from None
    if not isinstance(meta['config'], dict) or not isinstance(meta['config'].get('model'), dict):
        raise ValueError(f'{path}: its config metadata must be a JSON object with a "model" object')
    return meta


def on_meta(build: Callable[[], Optional[nn.Module]]) -> Optional[nn.Module]:
    """What a builder would build, on the meta device: shapes without a byte allocated."""
    with torch.device('meta'):
        return build()


def check_model_size(config: dict, weights: Path, text_file: Path) -> None:
    """A checkpoint's config must build exactly the networks its files declare (names and shapes, checked on
    the meta device) before the real ones are allocated; random encoders without a file are capped."""
    check_fits(on_meta(lambda: build_model(config)), SafetensorsReader(weights))
    if config['text']['type'] != 'clip':
        return
    text = on_meta(lambda: build_text(config['text']))
    if text_file.is_file():
        check_fits(text, SafetensorsReader(text_file))
        return
    need = sum(t.numel() * t.element_size() for t in text.state_dict().values())
    if need > MAX_UNSTORED_TEXT:
        raise ValueError(f'{weights}: its config declares text encoders of {need} bytes without a text.safetensors '
                         f'(at most {MAX_UNSTORED_TEXT})')


def custom_code_refused(config: dict, path: PathLike) -> ValueError:
    target = printable(repr(config['model'].get('target')))
    return ValueError(f'{path}: model.type "module" names code ({target[:120]}); code named by a checkpoint is '
                      f'never imported. Build the network in Python and pass it: '
                      f'load_trained(path, inner_model=network)')


def load_trained(path: PathLike, ema: bool = True, device='cpu', inner_model: Optional[nn.Module] = None
                 ) -> tuple[DiscreteVDenoiser, Optional[TextConditioner], dict]:
    """(denoiser, text conditioner or None, metadata) from a checkpoint directory or out_dir, for sampling.
    A model.type 'module' checkpoint needs its network from the caller (inner_model): nothing is imported."""
    ckpt = resolve_checkpoint(path)
    weights = ckpt / ('ema.safetensors' if ema else 'model.safetensors')
    meta = read_metadata(weights)
    config = meta['config']
    custom = config['model'].get('type') == 'module'
    if custom and inner_model is None:
        raise custom_code_refused(config, weights)
    try:
        if not custom:
            check_model_size(config, weights, ckpt / 'text.safetensors')
        text = build_text(config['text'])
        inner = inner_model if custom else build_model(config)
    except BUILD_ERRORS as e:                    # a config not written by the trainer
        raise ValueError(f'{weights}: its config cannot build a model ({type(e).__name__}: {str(e)[:200]})') \
            from None
    if text is not None and (ckpt / 'text.safetensors').is_file():
        load_weights(text, ckpt / 'text.safetensors')
    load_weights(inner, weights)
    model = build_denoiser(config, inner).eval().requires_grad_(False).to(device)
    return model, (None if text is None else text.to(device)), meta


def trained_pipeline(path: PathLike, device='cpu', name: str = 'model'):
    """A pixel-space model written by kdiff_ztsnr.training (its EMA weights and frozen text encoders)."""
    ckpt = resolve_checkpoint(path)
    config = read_metadata(ckpt / 'ema.safetensors')['config']
    if config['model']['type'] == 'sdxl':               # the checkpoint's SGM single file / diffusers folder
        from .sdxl.parts import sdxl_checkpoint_pipeline
        return sdxl_checkpoint_pipeline(ckpt, config, device, name)
    model, text, meta = load_trained(path, ema=True, device=device)
    try:
        return _trained_pipeline(model, text, meta, device, name)
    except BUILD_ERRORS as e:
        raise ValueError(f'{ckpt}: its metadata does not describe a sampling setup ({type(e).__name__}: '
                         f'{str(e)[:200]})') from None


def _trained_pipeline(model, text, meta: dict, device, name: str):
    from .bundle import Pipeline
    config, mc = meta['config'], meta['config']['model']
    base_side = int(meta['base_side'])
    if not 1 <= base_side <= 1 << 16:
        raise ValueError(f'base_side {base_side} is not in [1, 65536]')
    if text is not None:
        text.chunk_kwargs['truncate'] = True        # generation warns and shows what an overlong prompt loses
    encode = (lambda prompts: {k: v.to(device) for k, v in text(prompts).items()}) if text is not None else \
        (lambda prompts: {})
    return Pipeline(inner_model=model.inner_model, alphas_cumprod=alphas_cumprod_for(mc.get('zero_terminal_snr', True)),
                    encode_prompts=encode, channels=mc['input_channels'], factor=1,
                    base_side=base_side,
                    size_multiple=2 ** (len(mc['depths']) - 1) * mc.get('patch_size', 1),
                    max_chunks=config['text'].get('max_chunks', 3), sigma_data=mc.get('sigma_data', 1.), name=name,
                    info={'config': json.dumps(config)}, components={'model': model.inner_model, 'text': text})
