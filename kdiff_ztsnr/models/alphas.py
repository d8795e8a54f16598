"""The one place that decides a model's ᾱ table (report §2.2)."""

from typing import Optional

from torch import Tensor

from .. import schedules


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
