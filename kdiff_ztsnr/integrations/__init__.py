"""Adapters that bring the exact first step from σ = ∞ (report appendix A.1, eq. 9-18) into other hosts.

- :mod:`kdiff_ztsnr.integrations.diffusers`: ``ZTSNRScheduler``, a diffusers scheduler (needs diffusers).
- :mod:`kdiff_ztsnr.integrations.comfyui`: a ComfyUI custom-node pack (imports ``comfy`` lazily).

Both depend only on the package core (schedules, denoisers, sampling, guidance, img2img). The schedules here are
the package's own (``kdiff_ztsnr.generation.generate.make_sigmas`` with σ = ∞ on top), rebuilt from the core so that the
adapters stay independent of the product layer; the tests check that both agree.
"""

import math

import torch
from torch import Tensor, nn

from .. import schedules
from ..denoisers import DiscreteVDenoiser

SCHEDULES = ('native', 'karras', 'exponential', 'polyexponential', 'recommended')
RECOMMENDED = 'karras'          # the package default (benchmarks/README.md)
STEP_SAMPLERS = ('euler', 'euler_ancestral', 'dpmpp_2m')   # what a one-step-at-a-time host can run


def table_denoiser(alphas_cumprod: Tensor) -> DiscreteVDenoiser:
    """A network-less DiscreteVDenoiser: only its σ ↔ t maps and table (σ = ∞ on top when ᾱ[-1] = 0)."""
    return DiscreteVDenoiser(nn.Identity(), alphas_cumprod)


def schedule_sigmas(model: DiscreteVDenoiser, kind: str, steps: int, rho: float = 7.) -> Tensor:
    """`steps` model calls from the model's top σ (∞ for a ZTSNR table), then 0: the package's schedules.

    native: t = linspace(T−1, 0, steps) through the table (the report's); karras/exponential/polyexponential:
    ∞, then steps − 1 sigmas over [σ_min, σ[T−2]]; recommended = karras.
    """
    kind = RECOMMENDED if kind == 'recommended' else kind
    if kind not in SCHEDULES:
        raise ValueError(f'unknown schedule {kind!r}; choose from {", ".join(SCHEDULES)}')
    if kind == 'native':
        return model.get_sigmas(steps)
    sigma_min = model.sigmas[0].item()
    top_inf = math.isinf(model.sigmas[-1])
    sigma_max = (model.sigma_max_finite if top_inf else model.sigmas[-1]).item()
    if kind == 'karras':
        return schedules.get_sigmas_karras(steps, sigma_min, sigma_max, rho, prepend_inf=top_inf)
    build = {'exponential': schedules.get_sigmas_exponential,
             'polyexponential': schedules.get_sigmas_polyexponential}[kind]
    return build(steps, sigma_min, sigma_max, prepend_inf=top_inf)
