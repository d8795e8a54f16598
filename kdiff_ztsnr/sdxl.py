"""SDXL-architecture v-prediction ZTSNR models: loading, the UNet adaptor, VAE helpers and a pipeline.

Loads a local model from a diffusers folder (``unet/ vae/ text_encoder/ text_encoder_2/ tokenizer/ tokenizer_2/
scheduler/``) or from a single ``.safetensors`` file in the original SGM/LDM key layout (ComfyUI, A1111:
``model.diffusion_model.*``, ``first_stage_model.*``, ``conditioner.embedders.0.transformer.*``,
``conditioner.embedders.1.model.*``), built from the JSON configs shipped in ``kdiff_ztsnr/configs/`` or from
configs passed in. Nothing is downloaded. SGM → diffusers uses diffusers' own single-file converters;
diffusers → SGM (for saving) is the inverse written here and tested as a round trip.

Prediction type (DESIGN: this package samples v-prediction only):

- single files: ComfyUI's marker keys ``v_pred`` and ``ztsnr`` (empty tensors at the top level) say
  v-prediction and a zero-terminal-SNR schedule. A ``v_pred`` file without ``ztsnr`` is v-prediction on SDXL's
  ordinary schedule (σ_max ≈ 14.6), as ComfyUI reads it.
- diffusers folders: ``scheduler/scheduler_config.json``'s ``prediction_type`` and ``rescale_betas_zero_snr``.
- nothing found (an SDXL file without markers is almost always ε-prediction) or ε found: ``ValueError``; pass
  ``prediction_type='v'`` (and ``zero_terminal_snr=True``) to load a v-pred model saved without markers.
  ``zero_terminal_snr`` overrides the detected schedule either way.

Sizes: width and height must be multiples of the VAE factor (8); diffusers' UNet pads its own upsampling for
latent sizes its downsampling does not divide. Size conditioning defaults to original = target = the canvas.

Public API::

    load_sdxl(path, dtype=torch.float32, device='cpu', unet_config=None, vae_config=None,
              text_encoder_config=None, text_encoder_2_config=None, prediction_type=None,
              zero_terminal_snr=None, latent_stats=None) -> SDXLPipeline
    SDXLPipeline: .unet .vae .text .denoiser .encode_prompts(prompts) .encode(images) .decode(latents)
                  .sample(prompt, negative, steps, cfg, seed, width, height, sampler, sigma_regime)
                  .as_pipeline() .save_pretrained(dir) .save_single_file(path)
    SDXLUNetInner(unet)(x_in, t, context, pooled, add_time_ids=None, original_size=None, crop=(0, 0),
                        target_size=None) -> v
    vae_encode(vae, images, mean, std) / vae_decode(vae, latents, mean, std)
    sdxl_pipeline(path, device, **load_kwargs) -> Pipeline       # for kdiff_ztsnr.generate and the CLI
    sgm_state_dict(unet, vae, text_encoder, text_encoder_2) / diffusers_state_dicts(sd, configs)
    CheckpointError: keys/shapes that do not fit the config (named in SGM form), or not an SGM SDXL file
"""

import contextlib
import copy
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

try:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders import single_file_utils as sfu
except ImportError as e:  # pragma: no cover
    raise ImportError('kdiff_ztsnr.sdxl needs diffusers: pip install "kdiff-ztsnr[sdxl]"') from e

from . import schedules
from .data import denormalize, normalize
from .denoisers import DiscreteVDenoiser
from .text import TextConditioner, get_tokenizer

PathLike = Union[str, os.PathLike]
ConfigLike = Union[dict, PathLike, None]

CONFIG_DIR = Path(__file__).parent / 'configs'
COMPONENTS = ('unet', 'vae', 'text_encoder', 'text_encoder_2')
DEFAULT_CONFIGS = {'unet': 'sdxl_unet.json', 'vae': 'sdxl_vae.json', 'text_encoder': 'sdxl_clip_l.json',
                   'text_encoder_2': 'sdxl_clip_g.json'}
SGM_PREFIXES = {'unet': 'model.diffusion_model.', 'vae': 'first_stage_model.',
                'text_encoder': 'conditioner.embedders.0.transformer.',
                'text_encoder_2': 'conditioner.embedders.1.model.'}
BASE_SIDE = 1024  # the canvas side SDXL's schedule is meant for (report §2.3)


class CheckpointError(ValueError):
    """A checkpoint whose keys or shapes do not match the architecture it is loaded into."""


# ---------------------------------------------------------------------------------------------------------
# Configs


def load_config(config: ConfigLike, component: str) -> dict:
    """A component's config: a dict, a JSON file, or None for the shipped SDXL config."""
    if config is None:
        config = CONFIG_DIR / DEFAULT_CONFIGS[component]
    if isinstance(config, dict):
        return dict(config)
    with open(config) as f:
        return json.load(f)


def build_component(component: str, config: dict, empty: bool = False) -> nn.Module:
    """A randomly initialised (or, with empty=True, meta-device) model of one component from its config."""
    import accelerate
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
    with accelerate.init_empty_weights() if empty else contextlib.nullcontext():
        if component == 'unet':
            return UNet2DConditionModel.from_config(config)
        if component == 'vae':
            return AutoencoderKL.from_config(config)
        cls = CLIPTextModel if component == 'text_encoder' else CLIPTextModelWithProjection
        return cls(CLIPTextConfig(**{k: v for k, v in config.items() if not k.startswith('_')}))


# ---------------------------------------------------------------------------------------------------------
# diffusers → SGM key maps (the inverse of diffusers' single-file converters)


def _resnet_unet(rest: str) -> str:
    for new, old in [('norm1', 'in_layers.0'), ('conv1', 'in_layers.2'), ('norm2', 'out_layers.0'),
                     ('conv2', 'out_layers.3'), ('time_emb_proj', 'emb_layers.1'),
                     ('conv_shortcut', 'skip_connection')]:
        if rest.startswith(new + '.'):
            return old + rest[len(new):]
    return rest


def unet_prefix_map(config: dict) -> dict[str, str]:
    """diffusers prefix → SGM prefix for every block of a UNet2DConditionModel config (any depth)."""
    n, lpb = len(config['block_out_channels']), config['layers_per_block']
    m = {'time_embedding.linear_1.': 'time_embed.0.', 'time_embedding.linear_2.': 'time_embed.2.',
         'add_embedding.linear_1.': 'label_emb.0.0.', 'add_embedding.linear_2.': 'label_emb.0.2.',
         'conv_in.': 'input_blocks.0.0.', 'conv_norm_out.': 'out.0.', 'conv_out.': 'out.2.',
         'mid_block.resnets.0.': 'middle_block.0.', 'mid_block.attentions.0.': 'middle_block.1.',
         'mid_block.resnets.1.': 'middle_block.2.'}
    for b in range(n):
        for j in range(lpb):
            i = 1 + b * (lpb + 1) + j
            m[f'down_blocks.{b}.resnets.{j}.'] = f'input_blocks.{i}.0.'
            m[f'down_blocks.{b}.attentions.{j}.'] = f'input_blocks.{i}.1.'
        m[f'down_blocks.{b}.downsamplers.0.conv.'] = f'input_blocks.{(b + 1) * (lpb + 1)}.0.op.'
        for j in range(lpb + 1):
            i = b * (lpb + 1) + j
            m[f'up_blocks.{b}.resnets.{j}.'] = f'output_blocks.{i}.0.'
            m[f'up_blocks.{b}.attentions.{j}.'] = f'output_blocks.{i}.1.'
        has_attn = 'CrossAttn' in config['up_block_types'][b]
        m[f'up_blocks.{b}.upsamplers.0.'] = f'output_blocks.{b * (lpb + 1) + lpb}.{2 if has_attn else 1}.'
    return m


def vae_prefix_map(config: dict) -> dict[str, str]:
    """diffusers prefix → SGM prefix for an AutoencoderKL config."""
    n, lpb = len(config['block_out_channels']), config['layers_per_block']
    m = {}
    for c in ('encoder', 'decoder'):
        m[f'{c}.conv_norm_out.'] = f'{c}.norm_out.'
        m[f'{c}.mid_block.attentions.0.'] = f'{c}.mid.attn_1.'
        for j in range(2):
            m[f'{c}.mid_block.resnets.{j}.'] = f'{c}.mid.block_{j + 1}.'
    for i in range(n):
        for j in range(lpb):
            m[f'encoder.down_blocks.{i}.resnets.{j}.'] = f'encoder.down.{i}.block.{j}.'
        m[f'encoder.down_blocks.{i}.downsamplers.0.'] = f'encoder.down.{i}.downsample.'
        for j in range(lpb + 1):
            m[f'decoder.up_blocks.{i}.resnets.{j}.'] = f'decoder.up.{n - 1 - i}.block.{j}.'
        m[f'decoder.up_blocks.{i}.upsamplers.0.'] = f'decoder.up.{n - 1 - i}.upsample.'
    return m


_VAE_ATTN = [('group_norm.', 'norm.'), ('to_q.', 'q.'), ('to_k.', 'k.'), ('to_v.', 'v.'),
             ('to_out.0.', 'proj_out.')]


def _map_key(key: str, prefixes: dict[str, str], rename) -> str:
    """Replace the longest matching prefix (a block) and rename inside it; unprefixed keys pass through."""
    p = max((p for p in prefixes if key.startswith(p)), key=len, default=None)
    return key if p is None else prefixes[p] + rename(p, key[len(p):])


def _unet_rename(prefix: str, rest: str) -> str:
    return _resnet_unet(rest) if '.resnets.' in prefix else rest


def _vae_rename(prefix: str, rest: str) -> str:
    if 'attentions' in prefix:
        for new, old in _VAE_ATTN:
            if rest.startswith(new):
                return old + rest[len(new):]
    return rest.replace('conv_shortcut', 'nin_shortcut')


def clip_g_key_to_sgm(key: str) -> str:
    """HF CLIPTextModelWithProjection key → open_clip key (q/k/v all map to the fused in_proj)."""
    fixed = {'text_model.embeddings.token_embedding.weight': 'token_embedding.weight',
             'text_model.embeddings.position_embedding.weight': 'positional_embedding',
             'text_projection.weight': 'text_projection'}
    if key in fixed:
        return fixed[key]
    key = key.replace('text_model.final_layer_norm.', 'ln_final.')
    key = key.replace('text_model.encoder.layers.', 'transformer.resblocks.')
    for new, old in [('self_attn.q_proj.', 'attn.in_proj_'), ('self_attn.k_proj.', 'attn.in_proj_'),
                     ('self_attn.v_proj.', 'attn.in_proj_'), ('self_attn.', 'attn.'), ('layer_norm1', 'ln_1'),
                     ('layer_norm2', 'ln_2'), ('mlp.fc1', 'mlp.c_fc'), ('mlp.fc2', 'mlp.c_proj')]:
        key = key.replace(new, old)
    return key


def clip_l_key_to_sgm(key: str) -> str:
    """HF CLIPTextModel key (flattened in transformers ≥ 5.6 or not) → SGM key under ``transformer.``."""
    return key if key.startswith('text_model.') else 'text_model.' + key


def sgm_key_fn(component: str, config: dict):
    """key → full SGM single-file key, for one component's diffusers/transformers parameter names."""
    if component == 'unet':
        prefixes = unet_prefix_map(config)
        fn = lambda k: _map_key(k, prefixes, _unet_rename)  # noqa: E731
    elif component == 'vae':
        prefixes = vae_prefix_map(config)
        fn = lambda k: _map_key(k, prefixes, _vae_rename)  # noqa: E731
    else:
        fn = clip_l_key_to_sgm if component == 'text_encoder' else clip_g_key_to_sgm
    return lambda k: SGM_PREFIXES[component] + fn(k)


def component_to_sgm(component: str, state_dict: dict[str, Tensor], config: dict) -> dict[str, Tensor]:
    """One component's state dict in the SGM layout (prefixed): VAE attention as 1×1 convs, open_clip's fused
    in_proj and transposed text_projection."""
    to_sgm, out, qkv = sgm_key_fn(component, config), {}, {}
    for k, v in state_dict.items():
        if k.endswith('position_ids'):
            continue
        sk = to_sgm(k)
        if component == 'vae' and '.mid.attn_1.' in sk and v.ndim == 2:
            v = v[:, :, None, None]
        elif component == 'text_encoder_2' and sk.endswith('text_projection'):
            v = v.T
        elif component == 'text_encoder_2' and '.attn.in_proj_' in sk:
            qkv.setdefault(sk, {})['qkv'.index(k.split('self_attn.')[1][0])] = v
            continue
        out[sk] = v.contiguous()
    out.update({sk: torch.cat([parts[i] for i in range(3)]) for sk, parts in qkv.items()})
    return out


def sgm_state_dict(unet: nn.Module, vae: nn.Module, text_encoder: nn.Module,
                   text_encoder_2: nn.Module) -> dict[str, Tensor]:
    """The four components as one SGM single-file state dict (what ComfyUI/A1111 load)."""
    out = {}
    for name, model in zip(COMPONENTS, (unet, vae, text_encoder, text_encoder_2)):
        config = dict(model.config) if name in ('unet', 'vae') else {}
        out.update(component_to_sgm(name, model.state_dict(), config))
    return out


# ---------------------------------------------------------------------------------------------------------
# SGM → diffusers (diffusers' converters) and checked loading


def diffusers_state_dicts(sd: dict[str, Tensor], configs: dict[str, dict],
                          text_encoder_2: Optional[nn.Module] = None) -> dict[str, dict[str, Tensor]]:
    """An SGM single-file state dict split and converted per component with diffusers' converters."""
    te2 = text_encoder_2 or build_component('text_encoder_2', configs['text_encoder_2'], empty=True)
    out = {}
    try:
        out['unet'] = sfu.convert_ldm_unet_checkpoint(sd, configs['unet'])
        out['vae'] = sfu.convert_ldm_vae_checkpoint(sd, configs['vae'])
    except (KeyError, IndexError) as e:
        raise CheckpointError(f'the checkpoint does not fit the UNet/VAE config (conversion failed at {e}); '
                              f'pass the matching unet_config= / vae_config=') from e
    out['text_encoder'] = sfu.convert_ldm_clip_checkpoint(sd)
    out['text_encoder_2'] = sfu.convert_open_clip_checkpoint(te2, sd, prefix=SGM_PREFIXES['text_encoder_2'])
    return out


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
                          f'architecture pass {component}_config= (a dict or JSON file).')


def load_component(component: str, config: dict, sd: dict[str, Tensor], dtype: torch.dtype,
                   source: str = 'the checkpoint') -> nn.Module:
    """Build one component on the meta device and load a converted state dict into it, checked."""
    model = build_component(component, config, empty=True)
    sd = _fit_keys(model, sd)
    check_state_dict(model, sd, component, config, source)
    sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    model.load_state_dict(sd, strict=True, assign=True)
    return model.eval()


# ---------------------------------------------------------------------------------------------------------
# Prediction type and schedule


def resolve_prediction(found_pred: Optional[str], found_ztsnr: Optional[bool], prediction_type: Optional[str],
                       zero_terminal_snr: Optional[bool], source: str) -> bool:
    """Check the model is v-prediction (detected or overridden); return whether it is zero-terminal-SNR."""
    pred = prediction_type or found_pred
    if pred is None:
        raise ValueError(f'{source}: cannot tell the prediction type (no `v_pred` marker key, no scheduler '
                         f'prediction_type). SDXL checkpoints without one are normally epsilon-prediction, which '
                         f'kdiff_ztsnr does not sample. For a v-prediction model saved without markers pass '
                         f'prediction_type="v" (and zero_terminal_snr=True if it is ZTSNR).')
    if pred not in ('v', 'v_prediction'):
        raise ValueError(f'{source}: prediction type {pred!r}; kdiff_ztsnr samples v-prediction models only '
                         f'(pass prediction_type="v" only if the model is in fact v-prediction)')
    ztsnr = found_ztsnr if zero_terminal_snr is None else zero_terminal_snr
    if ztsnr is None:
        warnings.warn(f'{source}: no zero-terminal-SNR information; assuming SDXL\'s ordinary schedule '
                      f'(σ_max ≈ 14.6). Pass zero_terminal_snr=True for a ZTSNR model.')
    return bool(ztsnr)


def alphas_cumprod_for(zero_terminal_snr: bool, scheduler_config: Optional[dict] = None) -> Tensor:
    """ᾱ table: SDXL's scaled-linear betas (or a scheduler config's), rescaled to ZTSNR if asked (float64)."""
    c = scheduler_config or {}
    if c.get('beta_schedule', 'scaled_linear') != 'scaled_linear':
        raise ValueError(f'unsupported beta_schedule {c["beta_schedule"]!r} (SDXL uses scaled_linear)')
    betas = schedules.scaled_linear_betas(c.get('num_train_timesteps', schedules.NUM_TIMESTEPS),
                                          c.get('beta_start', schedules.SDXL_BETA_START),
                                          c.get('beta_end', schedules.SDXL_BETA_END))
    ac = schedules.alphas_cumprod(betas)
    return schedules.rescale_zero_terminal_snr(ac) if zero_terminal_snr else ac


def scheduler_config(zero_terminal_snr: bool) -> dict:
    """A diffusers scheduler config describing a v-prediction SDXL model (what save_pretrained writes)."""
    return {'_class_name': 'EulerDiscreteScheduler', 'beta_schedule': 'scaled_linear',
            'beta_start': schedules.SDXL_BETA_START, 'beta_end': schedules.SDXL_BETA_END,
            'num_train_timesteps': schedules.NUM_TIMESTEPS, 'prediction_type': 'v_prediction',
            'rescale_betas_zero_snr': zero_terminal_snr, 'interpolation_type': 'linear', 'steps_offset': 1,
            'timestep_spacing': 'trailing' if zero_terminal_snr else 'leading', 'use_karras_sigmas': False}


# ---------------------------------------------------------------------------------------------------------
# UNet adaptor and VAE helpers


def time_ids(original_size, crop, target_size, batch: int, device=None) -> Tensor:
    """SDXL's added time ids [B, 6]: original (h, w), crop (top, left), target (h, w); tuples or [B, 2]."""
    parts = [torch.as_tensor(v, dtype=torch.float32, device=device).reshape(-1, 2).expand(batch, 2)
             for v in (original_size, crop, target_size)]
    return torch.cat(parts, 1)


class SDXLUNetInner(nn.Module):
    """SDXL's UNet2DConditionModel as an inner v network ``(x_in, t, context, pooled, …) -> v``.

    ``add_time_ids`` [B, 6] is used as given; otherwise it is built from original_size / crop / target_size
    ((h, w) in pixels), which default to the canvas size (latent size × vae_factor) and (0, 0).
    """

    def __init__(self, unet: nn.Module, vae_factor: int = 8):
        super().__init__()
        self.unet, self.vae_factor = unet, vae_factor

    def forward(self, x_in: Tensor, t: Tensor, context: Tensor, pooled: Tensor,
                add_time_ids: Optional[Tensor] = None, original_size=None, crop=(0, 0),
                target_size=None) -> Tensor:
        b, dtype = x_in.shape[0], self.unet.dtype
        if add_time_ids is None:
            size = (x_in.shape[-2] * self.vae_factor, x_in.shape[-1] * self.vae_factor)
            add_time_ids = time_ids(original_size or size, crop, target_size or size, b, x_in.device)
        t = torch.as_tensor(t, device=x_in.device).float().expand(b)
        cond = {'text_embeds': pooled.to(x_in.device, dtype), 'time_ids': add_time_ids.to(x_in.device, dtype)}
        return self.unet(x_in.to(dtype), t, encoder_hidden_states=context.to(x_in.device, dtype),
                         added_cond_kwargs=cond).sample


def vae_factor(vae: nn.Module) -> int:
    """Image pixels per latent pixel (8 for SDXL's VAE)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def check_size(width: int, height: int, multiple: int, what: str = 'width and height') -> None:
    if width <= 0 or height <= 0 or width % multiple or height % multiple:
        raise ValueError(f'{what} must be positive multiples of {multiple} (the VAE factor), got {width}x{height}')


def latent_stats_for(vae: nn.Module, stats=None) -> tuple[Tensor, Tensor]:
    """Per-channel (μ, σ) with latents = (z − μ)/σ: None → (shift_factor or 0, 1/scaling_factor) — SDXL's
    ×0.13025; 'nai_anime' → the report's appendix-B SDXL-VAE numbers; or a (mean, std) pair."""
    c = vae.config.latent_channels
    if stats is None:
        mean, std = getattr(vae.config, 'shift_factor', None) or 0., 1 / vae.config.scaling_factor
    elif isinstance(stats, str):
        if stats != 'nai_anime':
            raise ValueError(f'unknown latent stats {stats!r}; use None, "nai_anime" or (mean, std)')
        from .data import NAI_ANIME_SDXL_MEAN as mean, NAI_ANIME_SDXL_STD as std
    else:
        mean, std = stats
    mean, std = [torch.as_tensor(v, dtype=torch.float32).flatten().expand(c).clone() for v in (mean, std)]
    return mean, std


def vae_encode(vae: nn.Module, images: Tensor, mean: Tensor, std: Tensor, sample: bool = False,
               generator: Optional[torch.Generator] = None) -> Tensor:
    """Images in [−1, 1] [B, 3, H, W] → normalised latents (z − μ)/σ [B, C, H/f, W/f], float32."""
    check_size(images.shape[-1], images.shape[-2], vae_factor(vae), 'image width and height')
    p = next(vae.parameters())
    dist = vae.encode(images.to(p.device, p.dtype)).latent_dist
    z = dist.sample(generator) if sample else dist.mode()
    return normalize(z.float(), mean, std)


def vae_decode(vae: nn.Module, latents: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """Normalised latents → images (about [−1, 1]) [B, 3, H·f, W·f], float32."""
    p = next(vae.parameters())
    z = denormalize(latents.float(), mean, std)
    return vae.decode(z.to(p.device, p.dtype)).sample.float()


# ---------------------------------------------------------------------------------------------------------
# Pipeline


@dataclass(eq=False)
class SDXLPipeline:
    """A loaded SDXL-architecture v-prediction model; ``denoiser`` is the exact (σ = ∞) DiscreteVDenoiser."""

    unet: nn.Module                     # diffusers UNet2DConditionModel
    vae: nn.Module                      # diffusers AutoencoderKL
    text: TextConditioner               # CLIP-L ⊕ bigG, chunked prompts, mean-pooled (report §4.2)
    alphas_cumprod: Tensor              # ᾱ table [T]; ᾱ[-1] = 0 for ZTSNR
    latent_mean: Tensor                 # [C]: latents = (z − μ)/σ (appendix B); SDXL: μ = 0
    latent_std: Tensor                  # [C]; SDXL: σ = 1/0.13025
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        self.inner_model = SDXLUNetInner(self.unet, self.vae_factor)
        self.denoiser = DiscreteVDenoiser(self.inner_model, self.alphas_cumprod).to(self.device)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def vae_factor(self) -> int:
        return vae_factor(self.vae)

    @property
    def zero_terminal_snr(self) -> bool:
        return bool(self.alphas_cumprod[-1] == 0)

    @torch.no_grad()
    def encode_prompts(self, prompts: Union[str, Sequence[str]]) -> dict[str, Tensor]:
        """Prompts → {'context': [B, 77k, 2048], 'pooled': [B, 1280]} (no grad; use .text to train)."""
        return self.text(prompts)

    def size_cond(self, width: int, height: int, batch: int) -> dict[str, Tensor]:
        """SDXL size conditioning for a width × height canvas: original = target = (h, w), crop (0, 0)."""
        return {'add_time_ids': time_ids((height, width), (0, 0), (height, width), batch, self.device)}

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """Images in [−1, 1] → normalised latents (the VAE's mode)."""
        return vae_encode(self.vae, images, self.latent_mean, self.latent_std)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Normalised latents → images (about [−1, 1])."""
        return vae_decode(self.vae, latents, self.latent_mean, self.latent_std)

    def as_pipeline(self):
        """This model as the package's generic `Pipeline` (for `generate` and the CLI)."""
        from .pipeline import Pipeline
        return Pipeline(inner_model=self.inner_model, alphas_cumprod=self.alphas_cumprod,
                        encode_prompts=self.encode_prompts, channels=self.unet.config.in_channels,
                        factor=self.vae_factor, encode=self.encode, decode=self.decode, base_side=BASE_SIDE,
                        size_multiple=self.vae_factor, max_chunks=self.text.chunk_kwargs['max_chunks'],
                        size_cond=self.size_cond, name=self.info.get('name', 'sdxl'), info=dict(self.info))

    def sample(self, prompt: Union[str, Sequence[str]], negative: str = '', steps: int = 28, cfg: float = 5.,
               seed: int = 0, width: int = BASE_SIDE, height: int = BASE_SIDE, sampler: str = 'euler',
               sigma_regime: Union[str, float] = 'exact', schedule: str = 'native', cfg_rescale: float = 0.,
               n_samples: int = 1, eta: Optional[float] = None, progress: bool = False) -> Tensor:
        """Text to image [n_samples, 3, H, W] in [−1, 1] with CFG, sample i seeded with seed + i.

        sigma_regime: 'exact' starts at σ = ∞ (report A.1), 'clamp' at σ = 20000 (A.2), a float starts at that
        finite σ. Runs `kdiff_ztsnr.generate.generate` (the package's samplers and guidance).
        """
        from .generate import GenerationParams, generate
        check_size(width, height, self.vae_factor)
        regime, sigma_max = (sigma_regime, None) if isinstance(sigma_regime, str) else ('sigma_max',
                                                                                         float(sigma_regime))
        p = GenerationParams(prompt=prompt, uc=negative, steps=steps, scale=cfg, cfg_rescale=cfg_rescale,
                             seed=seed, n_samples=n_samples, width=width, height=height, sampler=sampler,
                             noise_schedule=schedule, ztsnr=regime, sigma_max=sigma_max, resolution_aware=False,
                             eta=eta, model=self.info.get('name', 'sdxl'))
        return generate(self.as_pipeline(), p, progress=progress)

    def save_pretrained(self, path: PathLike) -> None:
        """Write a diffusers folder (unet/ vae/ text_encoder[_2]/ tokenizer[_2]/ scheduler/ model_index.json)."""
        path = Path(path)
        self.unet.save_pretrained(path / 'unet')
        self.vae.save_pretrained(path / 'vae')
        for sub, enc, tok in zip(('', '_2'), self.text.encoders, self.text.tokenizers):
            enc.save_pretrained(path / f'text_encoder{sub}')
            tok.save_pretrained(path / f'tokenizer{sub}')
        (path / 'scheduler').mkdir(parents=True, exist_ok=True)
        with open(path / 'scheduler' / 'scheduler_config.json', 'w') as f:
            json.dump(scheduler_config(self.zero_terminal_snr), f, indent=2)
        index = {'_class_name': 'StableDiffusionXLPipeline', 'force_zeros_for_empty_prompt': True,
                 'scheduler': ['diffusers', 'EulerDiscreteScheduler'],
                 'text_encoder': ['transformers', 'CLIPTextModel'],
                 'text_encoder_2': ['transformers', 'CLIPTextModelWithProjection'],
                 'tokenizer': ['transformers', 'CLIPTokenizer'], 'tokenizer_2': ['transformers', 'CLIPTokenizer'],
                 'unet': ['diffusers', 'UNet2DConditionModel'], 'vae': ['diffusers', 'AutoencoderKL']}
        with open(path / 'model_index.json', 'w') as f:
            json.dump(index, f, indent=2)

    def save_single_file(self, path: PathLike) -> None:
        """Write one SGM-layout .safetensors with ComfyUI's `v_pred` (and `ztsnr`) marker keys."""
        sd = sgm_state_dict(self.unet, self.vae, *self.text.encoders)
        sd['v_pred'] = torch.tensor([])
        if self.zero_terminal_snr:
            sd['ztsnr'] = torch.tensor([])
        save_file({k: v.detach().contiguous().cpu() for k, v in sd.items()}, str(path), metadata={'format': 'pt'})


# ---------------------------------------------------------------------------------------------------------
# Loading


def sdxl_tokenizers():
    """SDXL's two tokenizers, offline: CLIP-L pads with EOS, bigG with ``!`` (id 0), as open_clip does."""
    tok_g = copy.deepcopy(get_tokenizer())
    tok_g.pad_token = '!'
    return [get_tokenizer(), tok_g]


def read_checkpoint(path: PathLike) -> dict[str, Tensor]:
    """A single-file state dict (.safetensors; .ckpt/.pt through torch.load(weights_only=True))."""
    path = Path(path)
    if path.suffix == '.safetensors':
        return load_file(str(path))
    sd = torch.load(path, map_location='cpu', weights_only=True)
    return sd.get('state_dict', sd)


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
                 prediction_type, zero_terminal_snr) -> tuple[list, bool, dict]:
    sd = read_checkpoint(path)
    found_pred = 'v' if 'v_pred' in sd else None
    found_ztsnr = 'ztsnr' in sd if found_pred else ('ztsnr' in sd or None)
    ztsnr = resolve_prediction(found_pred, found_ztsnr, prediction_type, zero_terminal_snr, str(path))
    check_sgm_layout(sd, str(path))
    te2 = build_component('text_encoder_2', configs['text_encoder_2'], empty=True)
    converted = diffusers_state_dicts(sd, configs, te2)
    del sd
    dtypes = {c: dtype for c in COMPONENTS} | {'vae': vae_dtype or _vae_dtype(dtype, configs['vae'])}
    models = [load_component(c, configs[c], converted[c], dtypes[c], str(path)) for c in COMPONENTS]
    text = TextConditioner(models[2:], sdxl_tokenizers())
    return [models[0], models[1], text], ztsnr, {}


def _folder(path: Path, dtype: torch.dtype, vae_dtype: Optional[torch.dtype], prediction_type,
            zero_terminal_snr) -> tuple[list, bool, dict]:
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
    unet = UNet2DConditionModel.from_pretrained(path, subfolder='unet', torch_dtype=dtype, local_files_only=True)
    vae_dtype = vae_dtype or _vae_dtype(dtype, json.loads((path / 'vae' / 'config.json').read_text()))
    vae = AutoencoderKL.from_pretrained(path, subfolder='vae', torch_dtype=vae_dtype, local_files_only=True)
    text = TextConditioner.from_pretrained(path, torch_dtype=dtype)
    return [unet, vae, text], ztsnr, sched or {}


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
              text_kwargs: Optional[dict] = None) -> SDXLPipeline:  # TextConditioner options
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
        (unet, vae, text), ztsnr, sched = _folder(path, dtype, vae_dtype, prediction_type, zero_terminal_snr)
    else:
        configs = {c: load_config(cfg, c) for c, cfg in
                   zip(COMPONENTS, (unet_config, vae_config, text_encoder_config, text_encoder_2_config))}
        (unet, vae, text), ztsnr, sched = _single_file(path, dtype, vae_dtype, configs, prediction_type,
                                                       zero_terminal_snr)
    if len(text.encoders) != 2:
        raise CheckpointError(f'{path}: SDXL needs two text encoders, found {len(text.encoders)}')
    if text_kwargs:
        text = TextConditioner(list(text.encoders), text.tokenizers, **text_kwargs)
    mean, std = latent_stats_for(vae, latent_stats)
    info = {'name': path.name, 'source': str(path), 'format': 'diffusers' if path.is_dir() else 'single_file',
            'prediction_type': 'v', 'zero_terminal_snr': ztsnr}
    return SDXLPipeline(unet=unet.to(device), vae=vae.to(device), text=text.to(device),
                        alphas_cumprod=alphas_cumprod_for(ztsnr, sched), latent_mean=mean, latent_std=std,
                        info=info)


def sdxl_pipeline(path: PathLike, device: Union[str, torch.device] = 'cpu', **kwargs):
    """`load_sdxl(...).as_pipeline()`: the generic `Pipeline` that `generate` and the CLI use."""
    return load_sdxl(path, device=device, **kwargs).as_pipeline()
