"""SDXL-architecture components for training (``model.type: "sdxl"``): read from a diffusers folder or an SGM
single file (``model.path``), or built from configs (``model.components``; tiny ones in the tests).

An ε-prediction start (``model.source_prediction: "epsilon"``, the NoobAI-style ε → v conversion) is read
whatever its markers say: the trainer then teaches it v on the rescaled table (report §2.2). Without it, a
file must be v-prediction, as for sampling (`prediction`).
"""

from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ...text import TextConditioner
from .config import COMPONENTS, build_component, component_config
from .loading import load_sdxl, sdxl_tokenizers
from .unet import SDXLUNetInner
from .vae import vae_factor

SOURCE_PREDICTIONS = (None, 'v', 'epsilon')


def _component_configs(model_config: dict) -> dict:
    given = model_config.get('components') or {}
    unknown = set(given) - set(COMPONENTS)
    if unknown:
        raise ValueError(f'model.components: unknown {sorted(unknown)}; expected {list(COMPONENTS)}')
    return {c: component_config(given.get(c), c) for c in COMPONENTS}


def load_parts(model_config: dict) -> tuple[nn.Module, nn.Module, TextConditioner, dict]:
    """(unet, vae, text conditioner, info) of an ``sdxl`` model section, all float32 on the CPU.

    ``path``: a diffusers folder or SGM single file (``components`` give a single file's configs; None = the
    shipped SDXL ones); no path: randomly initialised from ``components`` (seeded by the caller's RNG).
    """
    src = model_config.get('source_prediction')
    if src not in SOURCE_PREDICTIONS:
        raise ValueError(f'model.source_prediction: {src!r}; expected one of {SOURCE_PREDICTIONS}')
    configs = _component_configs(model_config)
    path = model_config.get('path')
    if path is None:
        m = {c: build_component(c, configs[c]) for c in COMPONENTS}
        text = TextConditioner([m['text_encoder'], m['text_encoder_2']], sdxl_tokenizers())
        return m['unet'], m['vae'], text, {'source': None, 'source_prediction': src}
    single_file = {f'{c}_config': configs[c] for c in COMPONENTS} if not Path(path).is_dir() else {}
    pipe = load_sdxl(path, torch.float32, vae_dtype=torch.float32, **single_file,
                     prediction_type='v' if src == 'epsilon' else None,
                     zero_terminal_snr=bool(model_config.get('zero_terminal_snr', True)))
    c = pipe.components
    return c['unet'], c['vae'], c['text'], {'source': str(path), 'source_prediction': src}


def build_sdxl_inner(model_config: dict) -> SDXLUNetInner:
    """``models.build_model`` for type 'sdxl': the UNet as an inner v network (VAE factor from its config)."""
    unet, vae, _, _ = load_parts(model_config)
    return SDXLUNetInner(unet, vae_factor(vae))


def tiny_component_configs() -> dict:
    """SDXL-shaped component configs small enough for CPU tests and benchmarks (64² images → 8² latents;
    CLIP-L 32 ⊕ bigG 48 context, pooled 40)."""
    l_dim, g_dim, g_proj, time_dim = 32, 48, 40, 8
    c = {k: component_config(None, k) for k in COMPONENTS}
    return {
        'unet': dict(c['unet'], block_out_channels=[16, 32, 32], attention_head_dim=[1, 2, 2],
                     transformer_layers_per_block=[1, 1, 2], norm_num_groups=8, cross_attention_dim=l_dim + g_dim,
                     addition_time_embed_dim=time_dim, projection_class_embeddings_input_dim=g_proj + 6 * time_dim,
                     sample_size=8),
        'vae': dict(c['vae'], block_out_channels=[8, 8, 16, 16], layers_per_block=1, norm_num_groups=4,
                    sample_size=64),
        'text_encoder': dict(c['text_encoder'], hidden_size=l_dim, intermediate_size=37, num_attention_heads=4,
                             num_hidden_layers=3, projection_dim=l_dim),
        'text_encoder_2': dict(c['text_encoder_2'], hidden_size=g_dim, intermediate_size=64, num_attention_heads=4,
                               num_hidden_layers=3, projection_dim=g_proj),
    }


def text_options(text_config: Optional[dict]) -> dict:
    """TextConditioner options of a ``text`` section (§4.2: up to 3 × 75 tokens, penultimate layer)."""
    tc = text_config or {}
    return {k: tc[k] for k in ('max_chunks', 'layer', 'final_norm') if k in tc}


def sdxl_checkpoint_pipeline(ckpt: Path, config: dict, device='cpu', name: str = 'model'):
    """The Pipeline of a trainer checkpoint of type 'sdxl': its ``sdxl.safetensors`` (EMA weights, markers) or
    ``diffusers/`` folder, read with the components' configs from the training config (so tiny models work)."""
    ckpt = Path(ckpt)
    mc = config['model']
    kwargs = {'device': device, 'text_kwargs': {'truncate': True, **text_options(config.get('text'))},
              'latent_stats': mc.get('latent_stats') if mc.get('latent_stats') != 'cache' else None}
    if (ckpt / 'sdxl.safetensors').is_file():
        configs = _component_configs(mc)
        pipe = load_sdxl(ckpt / 'sdxl.safetensors', **{f'{c}_config': configs[c] for c in COMPONENTS}, **kwargs)
    elif (ckpt / 'diffusers').is_dir():
        pipe = load_sdxl(ckpt / 'diffusers', **kwargs)
    else:
        raise FileNotFoundError(f'{ckpt}: no sdxl.safetensors or diffusers/ (a LoRA run writes lora.safetensors: '
                                f'load it on its base model, or set model.lora.save_merged)')
    pipe.name = name
    return pipe
