"""Adapters that bring the exact first step from σ = ∞ (report appendix A.1, eq. 9-18) into other hosts.

- :mod:`kdiff_ztsnr.integrations.diffusers`: ``ZTSNRScheduler``, a diffusers scheduler (needs diffusers).
- :mod:`kdiff_ztsnr.integrations.comfyui`: a ComfyUI custom-node pack (imports ``comfy`` lazily).

Both depend only on the package core (schedules, schedule_policy, denoisers, sampling, guidance, img2img): the
schedules are the package's own (`schedule_policy`, as `generate` uses them).
"""

from typing import Optional

from torch import Tensor, nn

from .. import schedule_policy
from ..denoisers import DiscreteVDenoiser

SCHEDULES = (*schedule_policy.SCHEDULE_NAMES, 'recommended')
STEP_SAMPLERS = ('euler', 'euler_ancestral', 'dpmpp_2m')   # what a one-step-at-a-time host can run


def table_denoiser(alphas_cumprod: Tensor) -> DiscreteVDenoiser:
    """A network-less DiscreteVDenoiser: only its σ ↔ t maps and table (σ = ∞ on top when ᾱ[-1] = 0)."""
    return DiscreteVDenoiser(nn.Identity(), alphas_cumprod)


def schedule_sigmas(model: DiscreteVDenoiser, kind: str, steps: int, sampler: Optional[str] = None,
                    side: Optional[float] = None, base_side: Optional[float] = None) -> Tensor:
    """`steps` model calls from the model's top σ (∞ for a ZTSNR table), then 0: the package's schedules
    (`schedule_policy`; 'recommended' resolves for `sampler`, steps and the canvas side in pixels against the
    model's base side, as `generate` does; without them, the model's own canvas)."""
    return schedule_policy.sigmas_from_inf(model, kind, steps, sampler=sampler, side=side, base_side=base_side)
