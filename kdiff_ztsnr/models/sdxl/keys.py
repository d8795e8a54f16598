"""SGM (ComfyUI/A1111 single file) ↔ diffusers key layouts of the four SDXL components.

SGM → diffusers uses diffusers' own single-file converters; diffusers → SGM (for saving single files) is
their inverse, written here for any UNet/VAE depth and tested as a round trip.
"""

from typing import Optional

import torch
from torch import Tensor, nn

from ...errors import ParamError, quote
from .components import COMPONENTS, SGM_PREFIXES, build_component


class CheckpointError(ParamError):
    """A checkpoint whose keys or shapes do not match the architecture it is loaded into (a ValueError that may
    name the parameters to pass instead, `errors`)."""


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


def convert_component(component: str, sd: dict[str, Tensor], configs: dict[str, dict],
                      text_encoder_2: Optional[nn.Module] = None, source: str = 'the checkpoint') -> dict[str, Tensor]:
    """One component's SGM keys (prefixed; other keys may be present) → diffusers names, by diffusers' own
    single-file converters. Tensors keep their dtype and device."""
    from diffusers.loaders import single_file_utils as sfu
    try:
        if component == 'unet':
            return sfu.convert_ldm_unet_checkpoint(sd, configs['unet'])
        if component == 'vae':
            return sfu.convert_ldm_vae_checkpoint(sd, configs['vae'])
    except (KeyError, IndexError) as e:
        raise CheckpointError(f'{quote(source)} does not fit the {component} config (conversion failed at '
                              f'{quote(e)}); pass the matching {component}_config= (or {{config_dir}}, a diffusers '
                              f'folder of configs)') from e
    if component == 'text_encoder':
        return sfu.convert_ldm_clip_checkpoint(sd)
    te2 = text_encoder_2 or build_component('text_encoder_2', configs['text_encoder_2'], empty=True)
    return sfu.convert_open_clip_checkpoint(te2, sd, prefix=SGM_PREFIXES['text_encoder_2'])


def diffusers_state_dicts(sd: dict[str, Tensor], configs: dict[str, dict],
                          text_encoder_2: Optional[nn.Module] = None) -> dict[str, dict[str, Tensor]]:
    """An SGM single-file state dict split and converted per component with diffusers' converters."""
    te2 = text_encoder_2 or build_component('text_encoder_2', configs['text_encoder_2'], empty=True)
    return {c: convert_component(c, sd, configs, te2) for c in COMPONENTS}
