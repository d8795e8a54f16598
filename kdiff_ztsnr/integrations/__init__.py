"""Adapters that bring the exact first step from σ = ∞ (report appendix A.1, eq. 9-18) into other hosts.

- :mod:`kdiff_ztsnr.integrations.diffusers`: ``ZTSNRScheduler``, a diffusers scheduler (needs diffusers).
- :mod:`kdiff_ztsnr.integrations.comfyui`: a ComfyUI custom-node pack (imports ``comfy`` lazily).

Both depend only on the package core (schedules, schedule_policy, denoisers, sampling, guidance, img2img): the
schedules are the package's own (`schedule_policy.sigmas`, the one entry point `generate` uses too).
"""

from torch import Tensor, nn

from .. import schedule_policy
from ..denoisers import DiscreteVDenoiser

SCHEDULES = (*schedule_policy.SCHEDULE_NAMES, 'recommended')
STEP_SAMPLERS = ('euler', 'euler_ancestral', 'dpmpp_2m')   # what a one-step-at-a-time host can run


def table_denoiser(alphas_cumprod: Tensor) -> DiscreteVDenoiser:
    """A network-less DiscreteVDenoiser: only its σ ↔ t maps and table (σ = ∞ on top when ᾱ[-1] = 0)."""
    return DiscreteVDenoiser(nn.Identity(), alphas_cumprod)
