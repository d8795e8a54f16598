"""Turn what a user names on the command line into a `Pipeline`.

Pipelines warn (and name the dropped text) when a prompt exceeds the chunk limit instead of raising.

'embedded' (the small model shipped in the package), a directory written by the trainer (a checkpoint or an
out_dir), or an SDXL-architecture model (diffusers folder or single-file .safetensors).
"""

import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

from ..errors import ParamError, ParamFileError, quote
from ..models.bundle import Pipeline

if TYPE_CHECKING:
    import torch

EMBEDDED = Path(__file__).resolve().parents[1] / 'assets' / 'embedded'


def is_trainer_checkpoint(path: Path) -> bool:
    return (path / 'ema.safetensors').is_file() or (path / 'latest').is_file()


def is_sdxl(path: Path) -> bool:
    if path.is_dir():
        return (path / 'unet').is_dir() or (path / 'model_index.json').is_file()
    return path.suffix == '.safetensors'


def sdxl_configs(config_dir: Union[str, os.PathLike, None]) -> dict:
    """load_sdxl's *_config arguments from a diffusers folder's configs (``unet/config.json`` …); components
    the folder lacks keep the shipped SDXL configs."""
    if config_dir is None:
        return {}
    root = Path(config_dir)
    if not root.is_dir():
        raise ParamFileError(f'{{config_dir={quote(root)}}}: not a directory (give a diffusers folder with '
                             f'unet/config.json, vae/config.json, … e.g. one written by `export_diffusers_config`)')
    found = {c: root / c / 'config.json' for c in ('unet', 'vae', 'text_encoder', 'text_encoder_2')}
    found = {c: f for c, f in found.items() if f.is_file()}
    if not found:
        raise ParamFileError(f'{{config_dir={quote(root)}}}: no unet/config.json, vae/config.json, '
                             f'text_encoder/config.json or text_encoder_2/config.json in it')
    return {f'{c}_config': str(f) for c, f in found.items()}


def load_pipeline(spec: Union[str, os.PathLike] = 'embedded',
                  device: Union[str, 'torch.device'] = 'cpu',     # auto | cpu | cuda[:N] | mps, or a torch.device
                  dtype: Union[str, 'torch.dtype', None] = None,  # auto | fp32 | fp16 | bf16 (None: auto)
                  vae_dtype: Union[str, 'torch.dtype', None] = None,  # SDXL VAE; None: fp32 if force_upcast & fp16
                  config_dir: Union[str, os.PathLike, None] = None,  # SDXL single file: a diffusers folder's configs
                  prediction_type: Optional[str] = None,          # SDXL: 'v' for files without markers
                  zero_terminal_snr: Optional[bool] = None,       # SDXL: override the zero-terminal-SNR detection
                  vae_tiling: bool = False) -> Pipeline:          # diffusers' tiled VAE encode/decode
    """A Pipeline for 'embedded', a trainer checkpoint directory, or an SDXL folder / .safetensors file, on
    device in dtype (the network's; σ and noise arithmetic stay float32)."""
    import torch
    from .device import CastInner, resolve_device, resolve_dtype
    device = resolve_device(device) if isinstance(device, str) else torch.device(device)
    dtype = dtype if isinstance(dtype, torch.dtype) else resolve_dtype(dtype, device)
    if isinstance(vae_dtype, str):
        vae_dtype = resolve_dtype(vae_dtype, device, 'vae_dtype')
    if prediction_type is not None and prediction_type not in ('v', 'v_prediction'):
        raise ParamError(f'{{prediction_type={quote(repr(prediction_type))}}}: kdiff-ztsnr samples v-prediction '
                         f'models only; the only override is v (for v-prediction files saved without the v_pred '
                         f'marker)')
    sdxl_kw = sdxl_configs(config_dir)
    path = EMBEDDED if str(spec) == 'embedded' else Path(spec)
    if not path.exists():
        hint = ' (the embedded model ships with the package: reinstall it)' if str(spec) == 'embedded' else ''
        raise FileNotFoundError(f'model not found: {path}{hint}')
    if path.is_dir() and is_trainer_checkpoint(path):
        from ..models.trained import trained_pipeline
        pipe = trained_pipeline(path, device, name='embedded' if path == EMBEDDED else str(spec))
        if dtype != torch.float32:
            pipe.inner_model = CastInner(pipe.inner_model.to(dtype))
        return pipe
    if is_sdxl(path):
        from ..models.sdxl import load_sdxl
        pipe = load_sdxl(path, dtype=dtype, device=device, vae_dtype=vae_dtype, prediction_type=prediction_type,
                         zero_terminal_snr=zero_terminal_snr, text_kwargs={'truncate': True}, **sdxl_kw,
                         force_zeros=None if config_dir is None or path.is_dir() else _force_zeros(config_dir))
        if vae_tiling:
            pipe.components['vae'].enable_tiling()
        return pipe
    raise ValueError(f'{path}: not a kdiff-ztsnr checkpoint (no ema.safetensors / latest) nor an SDXL model '
                     f'(diffusers folder with unet/, or a single-file .safetensors)')


def _force_zeros(config_dir: Union[str, os.PathLike]) -> Optional[bool]:
    """force_zeros_for_empty_prompt of a config_dir's model_index.json (None: not given there)."""
    index = Path(config_dir) / 'model_index.json'
    from ..untrusted import read_json_object
    return read_json_object(index, 'model index').get('force_zeros_for_empty_prompt') if index.is_file() else None
