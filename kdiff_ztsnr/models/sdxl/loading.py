"""Load a local SDXL-architecture v-prediction model as the package's `Pipeline`.

A diffusers folder (``unet/ vae/ text_encoder/ text_encoder_2/ tokenizer/ tokenizer_2/ scheduler/``) or a single
``.safetensors`` file in the original SGM/LDM key layout (ComfyUI, A1111: ``model.diffusion_model.*``,
``first_stage_model.*``, ``conditioner.embedders.0.transformer.*``, ``conditioner.embedders.1.model.*``), built
from the shipped JSON configs or from configs passed in. Nothing is downloaded. Components are built on the
meta device and filled from the converted state dict, checked key by key (missing, unexpected and mis-shaped
keys named in SGM form). The prediction type and schedule are read from the checkpoint (`prediction`).

Sizes: width and height must be multiples of the VAE factor (8); diffusers' UNet pads its own upsampling for
latent sizes its downsampling does not divide. Size conditioning defaults to original = target = the canvas.
"""

import copy
import json
import warnings
from pathlib import Path
from typing import Optional, Union

import torch
from torch import Tensor, nn

from ...files import load_safetensors
from ...text import TextConditioner, get_tokenizer
from ..alphas import alphas_cumprod_for
from ..bundle import Pipeline
from .components import COMPONENTS, SGM_PREFIXES, ConfigLike, PathLike, build_component, component_config
from .keys import CheckpointError, convert_component, sgm_key_fn
from .pipeline import sdxl_pipeline
from .prediction import describe, markers, resolve_prediction
from .vae import latent_stats_for


def _fit_keys(model: nn.Module, sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Drop position_ids buffers; strip ``text_model.`` for transformers' flattened CLIPTextModel."""
    sd = {k: v for k, v in sd.items() if not k.endswith('position_ids')}
    if not hasattr(model, 'text_model') and any(k.startswith('text_model.') for k in sd):
        sd = {k.removeprefix('text_model.'): v for k, v in sd.items()}
    return sd


def _examples(items: list[str], n: int = 4) -> str:
    return ', '.join(items[:n]) + (f', … ({len(items)} in all)' if len(items) > n else '')


def check_state_dict(model: nn.Module, sd: dict[str, Tensor], component: str, config: dict,
                     source: str = 'the checkpoint') -> None:
    """Raise CheckpointError naming missing, unexpected and wrongly shaped keys (in SGM names)."""
    name = sgm_key_fn(component, config)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    missing = list(dict.fromkeys(name(k) for k in expected if k not in sd))
    unexpected = [k for k in sd if k not in expected]  # no SGM name: they fit no block of the config
    shapes = [f'{name(k)} {tuple(sd[k].shape)} (config: {tuple(s)})' for k, s in expected.items()
              if k in sd and sd[k].shape != s]
    if not (missing or unexpected or shapes):
        return
    parts = [f'{len(xs)} {what}: {_examples(xs)}' for what, xs in
             [('missing', missing), ('unexpected (diffusers names)', unexpected),
              ('with wrong shapes', shapes)] if xs]
    raise CheckpointError(f'{source}: {component} weights do not match the {component} config; '
                          + '; '.join(parts) + f'. Is it an SDXL-architecture model? For a different '
                          f'architecture pass {component}_config= (a dict or JSON file; command line: '
                          f'--config DIR, a diffusers folder of configs).')


def load_component(component: str, config: dict, sd: dict[str, Tensor], dtype: torch.dtype,
                   source: str = 'the checkpoint') -> nn.Module:
    """Build one component on the meta device and load a converted state dict into it, checked."""
    model = build_component(component, config, empty=True)
    sd = _fit_keys(model, sd)
    check_state_dict(model, sd, component, config, source)
    sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    model.load_state_dict(sd, strict=True, assign=True)
    return model.eval()


def sdxl_tokenizers():
    """SDXL's two tokenizers, offline: CLIP-L pads with EOS, bigG with ``!`` (id 0), as open_clip does."""
    tok_g = copy.deepcopy(get_tokenizer())
    tok_g.pad_token = '!'
    return [get_tokenizer(), tok_g]


def read_checkpoint(path: PathLike) -> dict[str, Tensor]:
    """A single-file state dict (.safetensors; .ckpt/.pt through torch.load(weights_only=True))."""
    path = Path(path)
    if path.suffix == '.safetensors':
        return load_safetensors(path)
    sd = torch.load(path, map_location='cpu', weights_only=True)
    return sd.get('state_dict', sd)


def _cast(t: Tensor, dtype: torch.dtype, device) -> Tensor:
    return t.to(device, dtype) if t.is_floating_point() else t.to(device)


ST_DTYPES = {'F64': torch.float64, 'F32': torch.float32, 'F16': torch.float16, 'BF16': torch.bfloat16,
             'I64': torch.int64, 'I32': torch.int32, 'I16': torch.int16, 'I8': torch.int8, 'U8': torch.uint8,
             'BOOL': torch.bool}


def safetensors_header(path: PathLike) -> tuple[dict, int]:
    """(tensor name → {dtype, shape, data_offsets}, offset of the data) from a .safetensors file's header."""
    with open(path, 'rb') as f:
        n = int.from_bytes(f.read(8), 'little')
        header = json.loads(f.read(n))
    header.pop('__metadata__', None)
    return header, 8 + n


class SingleFile:
    """A single file read one component at a time, each tensor cast to its target dtype and device as it is
    read, so the host never holds the whole file nor an fp32 copy. .safetensors tensors are read with plain file
    reads into their own buffers (a memory map would also count every page it touched in RSS while open)."""

    def __init__(self, path: PathLike):
        self.path = Path(path)
        self.sd = None
        if self.path.suffix == '.safetensors':
            self.header, self.base = safetensors_header(self.path)
            self.keys = list(self.header)
        else:
            self.sd = read_checkpoint(self.path)
            self.keys = list(self.sd)

    def _read(self, f, key: str) -> Tensor:
        info = self.header[key]
        t = torch.empty(info['shape'], dtype=ST_DTYPES[info['dtype']])
        start, end = info['data_offsets']
        if end > start:
            f.seek(self.base + start)
            if f.readinto(t.reshape(-1).view(torch.uint8).numpy()) != end - start:
                raise CheckpointError(f'{self.path}: truncated file (tensor {key})')
        return t

    def component(self, prefix: str, dtype: torch.dtype, device) -> dict[str, Tensor]:
        names = [k for k in self.keys if k.startswith(prefix)]
        if self.sd is not None:
            return {k: _cast(self.sd.pop(k), dtype, device) for k in names}
        with open(self.path, 'rb', buffering=0) as f:
            return {k: _cast(self._read(f, k), dtype, device) for k in names}


def check_sgm_layout(sd: dict[str, Tensor], source: str) -> None:
    """Raise CheckpointError unless all four SGM component prefixes are present."""
    missing = [p for p in SGM_PREFIXES.values() if not any(k.startswith(p) for k in sd)]
    if not missing:
        return
    hint = (' It looks like an SD1/SD2 checkpoint (cond_stage_model.*).' if any(k.startswith('cond_stage_model.')
                                                                                for k in sd) else '')
    found = sorted({k.split('.')[0] for k in sd})
    raise CheckpointError(f'{source}: not an SDXL checkpoint in the SGM layout: no keys under '
                          f'{", ".join(missing)} (top-level names found: {_examples(found, 6)}).{hint}')


def _vae_dtype(dtype: torch.dtype, vae_config: dict) -> torch.dtype:
    """float32 for a float16 model whose VAE config asks for force_upcast (SDXL's VAE overflows in fp16)."""
    return torch.float32 if dtype == torch.float16 and vae_config.get('force_upcast', False) else dtype


def _single_file(path: Path, dtype: torch.dtype, vae_dtype: Optional[torch.dtype], configs: dict[str, dict],
                 prediction_type, zero_terminal_snr, device) -> tuple[list, bool, dict, str]:
    f = SingleFile(path)
    found_pred, found_ztsnr = markers(f.keys)
    ztsnr = resolve_prediction(found_pred, found_ztsnr, prediction_type, zero_terminal_snr, str(path))
    detected = describe(found_pred, found_ztsnr, prediction_type, zero_terminal_snr, 'marker keys')
    check_sgm_layout(dict.fromkeys(f.keys), str(path))
    dtypes = {c: dtype for c in COMPONENTS} | {'vae': vae_dtype or _vae_dtype(dtype, configs['vae'])}
    te2 = build_component('text_encoder_2', configs['text_encoder_2'], empty=True)
    models = []
    for c in COMPONENTS:                     # one component in memory at a time, already in its dtype/device
        sd = convert_component(c, f.component(SGM_PREFIXES[c], dtypes[c], device), configs, te2)
        models.append(load_component(c, configs[c], sd, dtypes[c], str(path)))
        del sd
    text = TextConditioner(models[2:], sdxl_tokenizers())
    return [models[0], models[1], text], ztsnr, {}, detected


def _folder(path: Path, dtype: torch.dtype, vae_dtype: Optional[torch.dtype], prediction_type,
            zero_terminal_snr, device) -> tuple[list, bool, dict, str]:
    missing = [c for c in COMPONENTS if not (path / c).is_dir()]
    if missing:
        raise FileNotFoundError(f'{path}: not a complete SDXL diffusers folder: missing '
                                f'{", ".join(m + "/" for m in missing)}')
    sched_file = path / 'scheduler' / 'scheduler_config.json'
    sched = json.loads(sched_file.read_text()) if sched_file.is_file() else None
    found_pred = {'v_prediction': 'v', 'epsilon': 'epsilon', None: None}.get(
        (sched or {}).get('prediction_type'), (sched or {}).get('prediction_type'))
    found_ztsnr = None if sched is None else bool(sched.get('rescale_betas_zero_snr', False))
    ztsnr = resolve_prediction(found_pred, found_ztsnr, prediction_type, zero_terminal_snr, str(path))
    detected = describe(found_pred, found_ztsnr, prediction_type, zero_terminal_snr, 'scheduler_config.json')
    from diffusers import AutoencoderKL, UNet2DConditionModel
    unet = UNet2DConditionModel.from_pretrained(path, subfolder='unet', torch_dtype=dtype, local_files_only=True)
    vae_dtype = vae_dtype or _vae_dtype(dtype, json.loads((path / 'vae' / 'config.json').read_text()))
    vae = AutoencoderKL.from_pretrained(path, subfolder='vae', torch_dtype=vae_dtype, local_files_only=True)
    text = TextConditioner.from_pretrained(path, torch_dtype=dtype)
    return [unet.to(device), vae.to(device), text.to(device)], ztsnr, sched or {}, detected


def load_sdxl(path: PathLike,                                 # diffusers folder or SGM .safetensors
              dtype: torch.dtype = torch.float32,                # UNet and text encoders
              device: Union[str, torch.device] = 'cpu',
              unet_config: ConfigLike = None,                    # single files: dict / JSON; None = shipped SDXL
              vae_config: ConfigLike = None,
              text_encoder_config: ConfigLike = None,            # CLIP-L
              text_encoder_2_config: ConfigLike = None,          # OpenCLIP bigG
              prediction_type: Optional[str] = None,             # override detection: 'v'
              zero_terminal_snr: Optional[bool] = None,          # override detection
              latent_stats=None,                                 # None, 'nai_anime' or (mean, std) per channel
              vae_dtype: Optional[torch.dtype] = None,           # None: dtype, float32 for fp16 + force_upcast
              text_kwargs: Optional[dict] = None,                # TextConditioner options
              force_zeros: Optional[bool] = None) -> Pipeline:   # None: model_index.json's (default True)
    """Load a local SDXL-architecture v-prediction model: a diffusers folder or an SGM single file.

    Configs (dict or JSON path; default the shipped SDXL ones) apply to single files only; a folder carries
    its own. prediction_type / zero_terminal_snr override the detected ones (module docstring). latent_stats:
    None (×scaling_factor), 'nai_anime' or (mean, std) per channel. vae_dtype defaults to float32 when dtype
    is float16 and the VAE config asks for force_upcast (SDXL's VAE overflows in fp16). text_kwargs go to
    TextConditioner (max_chunks, truncate, emphasis, …).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f'SDXL model not found: {path}')
    if path.is_dir():
        if any(c is not None for c in (unet_config, vae_config, text_encoder_config, text_encoder_2_config)):
            warnings.warn(f'{path}: a diffusers folder carries its own configs; the *_config arguments are ignored')
        (unet, vae, text), ztsnr, sched, detected = _folder(path, dtype, vae_dtype, prediction_type,
                                                             zero_terminal_snr, device)
    else:
        configs = {c: component_config(cfg, c) for c, cfg in
                   zip(COMPONENTS, (unet_config, vae_config, text_encoder_config, text_encoder_2_config))}
        (unet, vae, text), ztsnr, sched, detected = _single_file(path, dtype, vae_dtype, configs, prediction_type,
                                                                 zero_terminal_snr, device)
    if len(text.encoders) != 2:
        raise CheckpointError(f'{path}: SDXL needs two text encoders, found {len(text.encoders)}')
    if text_kwargs:
        text = TextConditioner(list(text.encoders), text.tokenizers, **text_kwargs)
    mean, std = latent_stats_for(vae, latent_stats)
    info = {'name': path.name, 'source': str(path), 'format': 'diffusers' if path.is_dir() else 'single_file',
            'prediction_type': 'v', 'zero_terminal_snr': ztsnr, 'dtype': str(dtype).removeprefix('torch.'),
            'vae_dtype': str(vae.dtype).removeprefix('torch.'), 'detected': detected}
    pipe = sdxl_pipeline(unet.to(device), vae.to(device), text.to(device), alphas_cumprod_for(ztsnr, sched),
                         mean, std, info)
    pipe.force_zeros_for_empty_prompt = force_zeros_for_empty_prompt(path if path.is_dir() else None,
                                                                     force_zeros)
    return pipe


def force_zeros_for_empty_prompt(folder: Optional[Path], override: Optional[bool] = None) -> bool:
    """diffusers' convention: an empty negative prompt is all-zero embeddings when ``model_index.json`` says
    ``force_zeros_for_empty_prompt`` (StableDiffusionXLPipeline's default True; single files: True)."""
    if override is not None:
        return override
    index = None if folder is None else folder / 'model_index.json'
    if index is None or not index.is_file():
        return True
    return bool(json.loads(index.read_text()).get('force_zeros_for_empty_prompt', True))


def inspect_model(path: PathLike) -> dict:
    """What a model file or folder says about itself, without loading weights (``kdiff-ztsnr inspect --model``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f'model not found: {path}')
    if path.is_dir():
        sched_file = path / 'scheduler' / 'scheduler_config.json'
        sched = json.loads(sched_file.read_text()) if sched_file.is_file() else {}
        pred = sched.get('prediction_type')
        found_pred = {'v_prediction': 'v'}.get(pred, pred)
        found_ztsnr = bool(sched['rescale_betas_zero_snr']) if 'rescale_betas_zero_snr' in sched else None
        out = {'format': 'diffusers', 'scheduler': sched or None}
        where = 'scheduler_config.json'
    else:
        f = SingleFile(path)
        found_pred, found_ztsnr = markers(f.keys)
        out = {'format': 'single_file', 'keys': len(f.keys),
               'components': {c: sum(k.startswith(p) for k in f.keys) for c, p in SGM_PREFIXES.items()},
               'marker_keys': [k for k in ('v_pred', 'ztsnr') if k in f.keys]}
        where = 'marker keys'
    return {'model': str(path), **out, 'prediction_type': found_pred, 'zero_terminal_snr': found_ztsnr,
            'detected': describe(found_pred, found_ztsnr, None, None, where)}
