"""SDXL component configs and builders: the shipped JSON configs (full-size SDXL) or any given ones.

Components are built from configs alone (no download): randomly initialised, or on the meta device
(``empty=True``) to be filled from a state dict without a host copy.
"""

import contextlib
import os
from pathlib import Path
from typing import Union

from torch import nn

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


def component_config(config: ConfigLike, component: str) -> dict:
    """A component's config: a dict, a JSON file, or None for the shipped SDXL config."""
    if config is None:
        config = CONFIG_DIR / DEFAULT_CONFIGS[component]
    if isinstance(config, dict):
        return dict(config)
    from ...untrusted import read_json_object
    return read_json_object(config, f'{component} config')


def build_component(component: str, config: dict, empty: bool = False) -> nn.Module:
    """A randomly initialised (or, with empty=True, meta-device) model of one component from its config."""
    import accelerate
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
    with accelerate.init_empty_weights() if empty else contextlib.nullcontext():
        if component == 'unet':
            return UNet2DConditionModel.from_config(config)
        if component == 'vae':
            return AutoencoderKL.from_config(config)
        cls = CLIPTextModel if component == 'text_encoder' else CLIPTextModelWithProjection
        return cls(CLIPTextConfig(**{k: v for k, v in config.items() if not k.startswith('_')}))
