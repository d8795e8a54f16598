"""SDXL-architecture components for training (``model.type: "sdxl"``): read from a diffusers folder or an SGM
single file (``model.path``), or built from configs (``model.components``; the tests' and benchmarks' tiny ones are
in `benchmarks.subjects`).

An ε-prediction start (``model.source_prediction: "epsilon"``, the NoobAI-style ε → v conversion) is read
whatever its markers say: the trainer then teaches it v on the rescaled table (report §2.2). Without it, a
file must be v-prediction, as for sampling (`prediction`).
"""

from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ...text import TextConditioner
from .components import COMPONENTS, build_component, component_config
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
