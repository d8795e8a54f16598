"""Inner v networks ``(x_in, t, **cond) -> v`` and the ᾱ table they are trained on (report §2.2).

``build_model(config)`` builds the network of a k-diffusion-style config's ``model`` section: ``type`` names a
family of the closed registry MODEL_TYPES. ``type: 'module'`` (a user's own ``'pkg.mod:Factory'``) is imported
only with ``trust_code=True``, which only a config the user passes in person may set (``train --config FILE
--trust-code``, or Python); a checkpoint, folder or image never does. ``build_denoiser(config)`` wraps it in
``DiscreteVDenoiser``; ``alphas_cumprod_for`` is the one place that decides a model's ᾱ table. ``models.sdxl`` holds the SDXL architecture, ``models.checkpoint`` the
trained-model file format.
"""

import pkgutil
from typing import Callable, Optional

from torch import Tensor, nn

from .. import schedules
from ..denoisers import DiscreteVDenoiser


MAX_TRAIN_TIMESTEPS = 100_000


def check_scheduler_config(c, source: str = 'scheduler config') -> dict:
    """A diffusers scheduler config's schedule fields, bounded before any table is built: ValueError naming
    source and the valid range."""
    if not isinstance(c, dict):
        raise ValueError(f'{source}: must be a JSON object, got {type(c).__name__}')
    n = c.get('num_train_timesteps', schedules.NUM_TIMESTEPS)
    if isinstance(n, bool) or not isinstance(n, int) or not 2 <= n <= MAX_TRAIN_TIMESTEPS:
        raise ValueError(f'{source}: num_train_timesteps must be an integer in [2, {MAX_TRAIN_TIMESTEPS}], '
                         f'got {str(n)[:40]!r}')
    start, end = c.get('beta_start', schedules.SDXL_BETA_START), c.get('beta_end', schedules.SDXL_BETA_END)
    if not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 < b < 1 for b in (start, end)) \
            or start > end:
        raise ValueError(f'{source}: beta_start and beta_end must be numbers with 0 < beta_start <= beta_end < 1, '
                         f'got {str(start)[:40]!r}, {str(end)[:40]!r}')
    if c.get('beta_schedule', 'scaled_linear') != 'scaled_linear':
        raise ValueError(f'{source}: unsupported beta_schedule {str(c["beta_schedule"])[:40]!r} (SDXL uses '
                         f'scaled_linear)')
    for key in ('prediction_type', 'timestep_spacing'):
        if key in c and not isinstance(c[key], (str, type(None))):
            raise ValueError(f'{source}: {key} must be a string, got {str(c[key])[:40]!r}')
    return c


def alphas_cumprod_for(zero_terminal_snr: bool = True, scheduler_config: Optional[dict] = None) -> Tensor:
    """ᾱ table: SDXL's scaled-linear betas (or a diffusers scheduler config's), rescaled to zero terminal SNR
    (Lin et al.; report §2.2) if asked. float64."""
    c = check_scheduler_config(scheduler_config or {})
    betas = schedules.scaled_linear_betas(c.get('num_train_timesteps', schedules.NUM_TIMESTEPS),
                                          c.get('beta_start', schedules.SDXL_BETA_START),
                                          c.get('beta_end', schedules.SDXL_BETA_END))
    ac = schedules.alphas_cumprod(betas)
    return schedules.rescale_zero_terminal_snr(ac) if zero_terminal_snr else ac


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
    from .sdxl.train import build_sdxl_inner
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
        raise ValueError(f"unknown model type {kind!r}; expected one of {sorted(MODEL_TYPES)} (or 'module' with "
                         f"--trust-code)")
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
