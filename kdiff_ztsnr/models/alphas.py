"""The one place that decides a model's ᾱ table (report §2.2)."""

from typing import Optional

from torch import Tensor

from .. import schedules


def alphas_cumprod_for(zero_terminal_snr: bool = True, scheduler_config: Optional[dict] = None) -> Tensor:
    """ᾱ table: SDXL's scaled-linear betas (or a diffusers scheduler config's), rescaled to zero terminal SNR
    (Lin et al.; report §2.2) if asked. float64."""
    c = scheduler_config or {}
    if c.get('beta_schedule', 'scaled_linear') != 'scaled_linear':
        raise ValueError(f'unsupported beta_schedule {c["beta_schedule"]!r} (SDXL uses scaled_linear)')
    betas = schedules.scaled_linear_betas(c.get('num_train_timesteps', schedules.NUM_TIMESTEPS),
                                          c.get('beta_start', schedules.SDXL_BETA_START),
                                          c.get('beta_end', schedules.SDXL_BETA_END))
    ac = schedules.alphas_cumprod(betas)
    return schedules.rescale_zero_terminal_snr(ac) if zero_terminal_snr else ac
