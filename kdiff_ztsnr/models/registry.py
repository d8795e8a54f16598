"""The model families a config can name (``model.type`` ∈ MODEL_TYPES, a closed registry): the inner v network
``(x_in, t, **cond) -> v`` of a k-diffusion-style config, and its `DiscreteVDenoiser`. ``type: 'module'`` (a
user's own ``'pkg.mod:Factory'``) is imported only with ``trust_code=True``, which only a config the user passes in
person may set (``train --config FILE --trust-code``, or Python); a checkpoint, folder or image never does."""

import pkgutil
from typing import Callable, Optional

from torch import nn

from ..denoisers import DiscreteVDenoiser
from ..errors import ParamError, quote
from .alphas import alphas_cumprod_for


def build_trusted_module(model_config: dict) -> nn.Module:
    """A user's own network ``{'type': 'module', 'target': 'pkg.mod:Factory', 'kwargs': {...}}`` →
    Factory(**kwargs). Imports code: reached only through build_model(config, trust_code=True)."""
    target = model_config.get('target')
    if not isinstance(target, str) or ':' not in target:
        raise ValueError(f"model.target: expected 'module:attr', got {target!r}")
    return pkgutil.resolve_name(target)(**model_config.get('kwargs', {}))


def _image_v1(model_config: dict) -> nn.Module:
    from .image_v1 import build_image_v1
    return build_image_v1(model_config)


def _sdxl(model_config: dict) -> nn.Module:
    from .sdxl.parts import build_sdxl_inner
    return build_sdxl_inner(model_config)


MODEL_TYPES: dict[str, Callable[[dict], nn.Module]] = {       # the closed registry of model families
    'image_v1': _image_v1,
    'sdxl': _sdxl,                # SDXL-architecture UNet from model.path or model.components
}
CUSTOM_CODE_HINT = ("model.type 'module' imports and calls the code model.target names; it is allowed only for "
                    "a config you pass yourself: `kdiff-ztsnr train --config FILE --trust-code` (Python: "
                    "trust_code=True), never from a checkpoint, a folder or an image")


def build_model(config: dict, trust_code: bool = False) -> nn.Module:
    """The inner v network of a config (``config['model']['type']`` ∈ MODEL_TYPES, or 'module' when the caller
    trusts the config's code)."""
    model_config = config['model']
    kind = model_config.get('type')
    if kind == 'module':
        if not trust_code:
            raise ValueError(f'refused model.target {str(model_config.get("target"))[:120]!r}: {CUSTOM_CODE_HINT}')
        return build_trusted_module(model_config)
    if kind not in MODEL_TYPES:
        raise ParamError(f"unknown model type {quote(repr(kind))}; expected one of {sorted(MODEL_TYPES)} (or "
                         f"'module' with {{trust_code=True}})")
    return MODEL_TYPES[kind](model_config)


def build_denoiser(config: dict, inner_model: Optional[nn.Module] = None, trust_code: bool = False
                   ) -> DiscreteVDenoiser:
    """DiscreteVDenoiser around build_model(config) on SDXL's ᾱ, rescaled to zero terminal SNR unless
    ``model.zero_terminal_snr`` is false (report §2.2); ``model.sigma_max`` clamps it (report A.2)."""
    mc = config['model']
    ac = alphas_cumprod_for(mc.get('zero_terminal_snr', True))
    inner_model = build_model(config, trust_code) if inner_model is None else inner_model
    sigma_max = mc.get('sigma_max')
    return DiscreteVDenoiser(inner_model, ac, sigma_max=None if sigma_max is None else float(sigma_max),
                             sigma_data=mc.get('sigma_data', 1.))
