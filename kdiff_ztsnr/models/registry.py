"""The model families a config can name (``model.type`` ∈ MODEL_TYPES): the inner v network
``(x_in, t, **cond) -> v`` of a k-diffusion-style config, and its `DiscreteVDenoiser`."""

import pkgutil
from typing import Callable, Optional

from torch import nn

from ..denoisers import DiscreteVDenoiser
from .alphas import alphas_cumprod_for


def build_module(model_config: dict) -> nn.Module:
    """Any network following the inner-model contract: ``{'type': 'module', 'target': 'pkg.mod:Factory',
    'kwargs': {...}}`` → Factory(**kwargs)."""
    target = model_config['target']
    if ':' not in target:
        raise ValueError(f"model.target: expected 'module:attr', got {target!r}")
    return pkgutil.resolve_name(target)(**model_config.get('kwargs', {}))


def _image_v1(model_config: dict) -> nn.Module:
    from .image_v1 import build_image_v1
    return build_image_v1(model_config)


def _sdxl(model_config: dict) -> nn.Module:
    from .sdxl.parts import build_sdxl_inner
    return build_sdxl_inner(model_config)


MODEL_TYPES: dict[str, Callable[[dict], nn.Module]] = {
    'image_v1': _image_v1,
    'module': build_module,
    'sdxl': _sdxl,                # SDXL-architecture UNet from model.path or model.components
}


def build_model(config: dict) -> nn.Module:
    """The inner v network of a config (``config['model']['type']`` ∈ MODEL_TYPES)."""
    model_config = config['model']
    if model_config['type'] not in MODEL_TYPES:
        raise ValueError(f"unknown model type {model_config['type']!r}; expected one of {sorted(MODEL_TYPES)}")
    return MODEL_TYPES[model_config['type']](model_config)


def build_denoiser(config: dict, inner_model: Optional[nn.Module] = None) -> DiscreteVDenoiser:
    """DiscreteVDenoiser around build_model(config) on SDXL's ᾱ, rescaled to zero terminal SNR unless
    ``model.zero_terminal_snr`` is false (report §2.2); ``model.sigma_max`` clamps it (report A.2)."""
    mc = config['model']
    ac = alphas_cumprod_for(mc.get('zero_terminal_snr', True))
    inner_model = build_model(config) if inner_model is None else inner_model
    sigma_max = mc.get('sigma_max')
    return DiscreteVDenoiser(inner_model, ac, sigma_max=None if sigma_max is None else float(sigma_max),
                             sigma_data=mc.get('sigma_data', 1.))
