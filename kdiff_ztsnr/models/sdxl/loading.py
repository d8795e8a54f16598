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
import os
import warnings
from pathlib import Path
from typing import Optional, Union

import torch
from torch import Tensor, nn

from ...errors import quote
from ...files import SafetensorsReader
from ...text import TextConditioner, get_tokenizer
from ...untrusted import check_folder_files, read_json_object, regular_file, torch_load_weights
from ..alphas import alphas_cumprod_for, check_scheduler_config
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
                          f'architecture pass {component}_config= (a dict or JSON file; or {{config_dir}}, a '
                          f'diffusers folder of configs).')


def load_component(component: str, config: dict, sd: dict[str, Tensor], dtype: torch.dtype,
                   source: str = 'the checkpoint', model: Optional[nn.Module] = None) -> nn.Module:
    """Build one component on the meta device (or take the one given) and load a converted state dict into it,
    checked."""
    model = build_component(component, config, empty=True) if model is None else model
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
    path = regular_file(path, 'checkpoint file')
    if path.suffix == '.safetensors':
        return SafetensorsReader(path, 'checkpoint file').read_all()
    try:
        sd = torch_load_weights(path)
    except Exception as e:                       # pickle.UnpicklingError, RuntimeError, EOFError, …
        raise CheckpointError(f'{path}: not a readable checkpoint ({type(e).__name__}: {str(e)[:200]})') from None
    sd = sd.get('state_dict', sd) if isinstance(sd, dict) else sd
    if not isinstance(sd, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in sd.items()):
        raise CheckpointError(f'{path}: not a state dict of named tensors')
    return sd


def _cast(t: Tensor, dtype: torch.dtype, device) -> Tensor:
    return t.to(device, dtype) if t.is_floating_point() else t.to(device)


class SingleFile:
    """A single file read one component at a time, each tensor cast to its target dtype and device as it is
    read (safetensors' get_tensor, `SafetensorsReader`), so the host never holds the whole file nor an fp32
    copy. ``declared`` gives a component as meta tensors of the declared shapes, to check before reading."""

    def __init__(self, path: PathLike):
        self.path = Path(path)
        self.sd, self.reader, self.metadata = None, None, {}
        if self.path.suffix == '.safetensors':
            self.reader = SafetensorsReader(self.path, 'model file')
            self.keys, self.metadata = self.reader.keys, self.reader.metadata
        else:
            self.sd = read_checkpoint(self.path)
            self.keys = list(self.sd)

    def _names(self, prefix: str) -> list[str]:
        return [k for k in self.keys if k.startswith(prefix)]

    def declared(self, prefix: str) -> dict[str, Tensor]:
        if self.sd is not None:
            return {k: torch.empty_like(self.sd[k], device='meta') for k in self._names(prefix)}
        return self.reader.meta_tensors(self._names(prefix))

    def component(self, prefix: str, dtype: torch.dtype, device) -> dict[str, Tensor]:
        names = self._names(prefix)
        if self.sd is not None:
            return {k: _cast(self.sd.pop(k), dtype, device) for k in names}
        return self.reader.read(names, dtype, device)


def check_sgm_layout(sd: dict[str, Tensor], source: str, metadata: Optional[dict] = None) -> None:
    """Raise CheckpointError unless all four SGM component prefixes are present (saying what the file is)."""
    missing = [p for p in SGM_PREFIXES.values() if not any(k.startswith(p) for k in sd)]
    if not missing:
        return
    if 'config' in (metadata or {}):
        raise CheckpointError(f'{source}: a kdiff-ztsnr trainer weights file (its metadata holds the training '
                              f'config), not an SDXL model: pass its checkpoint folder as '
                              f'{{model={quote(Path(source).parent)}}}')
    hint = (' It looks like an SD1/SD2 checkpoint (cond_stage_model.*).' if any(k.startswith('cond_stage_model.')
                                                                                for k in sd) else
            ' It looks like a LoRA: pass it in {loras}.' if any(k.startswith(('lora_unet_', 'lora_te'))
                                                                 or '.lora_' in k for k in sd) else '')
    found = sorted({k.split('.')[0] for k in sd})
    raise CheckpointError(f'{quote(source)}: not an SDXL checkpoint in the SGM layout: no keys under '
                          f'{", ".join(missing)} (top-level names found: {quote(_examples(found, 6))}).{hint}')


def _vae_dtype(dtype: torch.dtype, vae_config: dict) -> torch.dtype:
    """float32 for a float16 model whose VAE config asks for force_upcast (SDXL's VAE overflows in fp16)."""
    return torch.float32 if dtype == torch.float16 and vae_config.get('force_upcast', False) else dtype


def _single_file(path: Path, dtype: torch.dtype, vae_dtype: Optional[torch.dtype], configs: dict[str, dict],
                 prediction_type, zero_terminal_snr, device) -> tuple[list, bool, dict, str]:
    f = SingleFile(path)
    check_sgm_layout(dict.fromkeys(f.keys), str(path), f.metadata)
    found_pred, found_ztsnr = markers(f.keys)
    ztsnr = resolve_prediction(found_pred, found_ztsnr, prediction_type, zero_terminal_snr, str(path))
    detected = describe(found_pred, found_ztsnr, prediction_type, zero_terminal_snr, 'marker keys')
    dtypes = {c: dtype for c in COMPONENTS} | {'vae': vae_dtype or _vae_dtype(dtype, configs['vae'])}
    te2 = build_component('text_encoder_2', configs['text_encoder_2'], empty=True)
    empty = {}
    for c in COMPONENTS:                     # every declared shape checked against the configs before any read
        empty[c] = build_component(c, configs[c], empty=True)
        check_state_dict(empty[c], _fit_keys(empty[c], convert_component(c, f.declared(SGM_PREFIXES[c]), configs,
                                                                          te2, str(path))), c, configs[c], str(path))
    models = []
    for c in COMPONENTS:                     # one component in memory at a time, already in its dtype/device
        sd = convert_component(c, f.component(SGM_PREFIXES[c], dtypes[c], device), configs, te2)
        models.append(load_component(c, configs[c], sd, dtypes[c], str(path), empty.pop(c)))
        del sd
    text = TextConditioner(models[2:], sdxl_tokenizers())
    return [models[0], models[1], text], ztsnr, {}, detected


def _folder(path: Path, dtype: torch.dtype, vae_dtype: Optional[torch.dtype], prediction_type,
            zero_terminal_snr, device) -> tuple[list, bool, dict, str]:
    missing = [c for c in COMPONENTS if not (path / c).is_dir()]
    if missing:
        raise FileNotFoundError(f'{path}: not a complete SDXL diffusers folder: missing '
                                f'{", ".join(m + "/" for m in missing)}')
    check_folder_files(path)
    for c in COMPONENTS:                     # the libraries read these; a malformed one is named here first
        if os.path.lexists(path / c / 'config.json'):
            read_json_object(path / c / 'config.json', f'{c} config')
    sched = read_scheduler_config(path)
    found_pred = {'v_prediction': 'v', 'epsilon': 'epsilon', None: None}.get(
        (sched or {}).get('prediction_type'), (sched or {}).get('prediction_type'))
    found_ztsnr = None if sched is None else bool(sched.get('rescale_betas_zero_snr', False))
    ztsnr = resolve_prediction(found_pred, found_ztsnr, prediction_type, zero_terminal_snr, str(path))
    detected = describe(found_pred, found_ztsnr, prediction_type, zero_terminal_snr, 'scheduler_config.json')
    from diffusers import AutoencoderKL, UNet2DConditionModel
    unet = UNet2DConditionModel.from_pretrained(path, subfolder='unet', torch_dtype=dtype, local_files_only=True)
    vae_dtype = vae_dtype or _vae_dtype(dtype, read_json_object(path / 'vae' / 'config.json', 'VAE config'))
    vae = AutoencoderKL.from_pretrained(path, subfolder='vae', torch_dtype=vae_dtype, local_files_only=True)
    text = TextConditioner.from_pretrained(path, torch_dtype=dtype)
    return [unet.to(device), vae.to(device), text.to(device)], ztsnr, sched or {}, detected


def read_scheduler_config(folder: Path) -> Optional[dict]:
    """A diffusers folder's scheduler/scheduler_config.json (None if absent), its schedule fields bounded."""
    sched_file = folder / 'scheduler' / 'scheduler_config.json'
    if not os.path.lexists(sched_file):
        return None
    return check_scheduler_config(read_json_object(sched_file, 'scheduler config'), str(sched_file))


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
    return bool(read_json_object(index, 'model index').get('force_zeros_for_empty_prompt', True))


def inspect_model(path: PathLike) -> dict:
    """What a model file or folder says about itself, without loading weights (``kdiff-ztsnr inspect --model``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f'model not found: {path}')
    if path.is_dir():
        check_folder_files(path)
        sched = read_scheduler_config(path) or {}
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
