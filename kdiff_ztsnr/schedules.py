"""Noise-schedule tables and sigma schedules for Zero Terminal SNR (report §2.2-2.3).

Pure functions. Tables are computed in float64; a zero-terminal-SNR table ends in σ = ∞. Schedule
builders return k-diffusion's layout: a descending 1-D tensor of sigmas with 0 appended.
"""

import math
from typing import Optional, Sequence

import torch
from torch import Tensor

SDXL_BETA_START = 0.00085
SDXL_BETA_END = 0.012
NUM_TIMESTEPS = 1000
SDXL_SIGMA_MAX = 14.614641229333639    # σ[999] of SDXL's ordinary table (§2.3: meant for a 1024² canvas)
ZTSNR_CLAMP = 20000.                   # the report's clamped top σ (appendix A.2)
COMFY_SIGMA_MAX = math.sqrt((1 - 4.8973451890853435e-08) / 4.8973451890853435e-08)   # ComfyUI/A1111: 4518.76
DIFFUSERS_SIGMA_MAX = math.sqrt((1 - 2 ** -24) / 2 ** -24)   # diffusers' rescale_betas_zero_snr clamp: 4096


def scaled_linear_betas(n: int = NUM_TIMESTEPS, beta_start: float = SDXL_BETA_START,
                        beta_end: float = SDXL_BETA_END) -> Tensor:
    """SD/SDXL's "scaled linear" betas: linspace(√β_start, √β_end, n)², float64 [n]."""
    return torch.linspace(beta_start ** 0.5, beta_end ** 0.5, n, dtype=torch.float64) ** 2


def alphas_cumprod(betas: Tensor) -> Tensor:
    """ᾱ_t = Π_{s≤t} (1 − β_s), float64 [n]."""
    return torch.cumprod(1 - betas.double(), dim=0)


def rescale_zero_terminal_snr(alphas_cumprod: Tensor) -> Tensor:
    """Lin et al. (2305.08891) Algorithm 1: shift and scale √ᾱ so the last is exactly 0, the first unchanged."""
    sqrt_ac = alphas_cumprod.double().sqrt()
    first, last = sqrt_ac[0].clone(), sqrt_ac[-1].clone()
    sqrt_ac = (sqrt_ac - last) * first / (first - last)
    sqrt_ac[-1] = 0.  # exact, not a rounding residue
    return sqrt_ac ** 2


def sigmas_from_alphas_cumprod(alphas_cumprod: Tensor) -> Tensor:
    """VE noise levels σ = √((1 − ᾱ)/ᾱ); ᾱ = 0 gives σ = ∞ (not NaN)."""
    ac = alphas_cumprod.double()
    return torch.where(ac > 0, ((1 - ac) / ac.clamp(min=torch.finfo(ac.dtype).tiny)).sqrt(),
                       torch.full_like(ac, math.inf))


def sdxl_alphas_cumprod() -> Tensor:
    """SDXL's ᾱ table (σ_min 0.029167, σ_max 14.6146)."""
    return alphas_cumprod(scaled_linear_betas())


def ztsnr_alphas_cumprod() -> Tensor:
    """SDXL's ᾱ table rescaled to zero terminal SNR (σ[998] ≈ 2254.24, σ[999] = ∞), as NAIv3 trains on."""
    return rescale_zero_terminal_snr(sdxl_alphas_cumprod())


def snr(sigma: Tensor, sigma_data: float = 1.) -> Tensor:
    """Signal-to-noise ratio σ_data²/σ²; 0 at σ = ∞, ∞ at σ = 0."""
    return sigma_data ** 2 / sigma ** 2


def check_finite_sigma_max(sigma_max: float, name: str = 'sigma_max') -> float:
    """Refuse σ_max = ∞ (or NaN, or ≤ 0) for builders that interpolate in σ."""
    sigma_max = float(sigma_max)
    if math.isnan(sigma_max) or math.isinf(sigma_max) or sigma_max <= 0:
        raise ValueError(f'{name} must be finite and positive, got {sigma_max}: these schedules interpolate '
                         f'between finite sigmas; pass the largest finite sigma (e.g. 2254.24 for ZTSNR) and '
                         f'prepend_inf=True to start at σ=∞')
    return sigma_max


def final_step_share(sigmas: Tensor) -> float:
    """The share of the finite part's log-σ range [σ_min, top] that its last step covers (0 if it has no step)."""
    f = sigmas[torch.isfinite(sigmas) & (sigmas > 0)].double().log()
    return 0. if len(f) < 2 else ((f[-2] - f[-1]) / (f[0] - f[-1])).item()


def guard_final_step(sigmas: Tensor) -> Tensor:
    """Keep the low-σ work out of one step: a final finite step wider in log σ than all finite steps before it
    together (e.g. […, 41.7, 11.0, 0.029, 0]) gets its start moved to the geometric mean of the top and σ_min."""
    finite = (torch.isfinite(sigmas) & (sigmas > 0)).nonzero().flatten()
    if len(finite) < 3 or final_step_share(sigmas) <= 0.5 + 1e-6:
        return sigmas
    top, low = sigmas[finite[0]].double(), sigmas[finite[-1]].double()
    out = sigmas.clone()
    out[finite[-2]] = (top * low).sqrt().to(sigmas.dtype)
    return out


def _finish(sigmas: Tensor, prepend_inf: bool, device) -> Tensor:
    parts = ([sigmas.new_full([1], math.inf)] if prepend_inf else []) + [sigmas, sigmas.new_zeros([1])]
    return guard_final_step(torch.cat(parts)).to(device)


def get_sigmas_karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7., prepend_inf: bool = True,
                      device='cpu') -> Tensor:
    """Karras et al. (2022) ramp over [σ_min, σ_max]; with prepend_inf, ∞ then n − 1 finite sigmas, then 0.

    n counts steps (model calls of an Euler sampler), as in k-diffusion; the result has n + 1 entries.
    """
    sigma_max = check_finite_sigma_max(sigma_max)
    m = n - 1 if prepend_inf else n
    ramp = torch.linspace(0, 1, m, dtype=torch.float64)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return _finish(sigmas.float(), prepend_inf, device)


def get_sigmas_exponential(n: int, sigma_min: float, sigma_max: float, prepend_inf: bool = True,
                           device='cpu') -> Tensor:
    """Sigmas uniform in log σ over [σ_min, σ_max]; with prepend_inf, ∞ first (n + 1 entries with the 0)."""
    sigma_max = check_finite_sigma_max(sigma_max)
    m = n - 1 if prepend_inf else n
    sigmas = torch.linspace(math.log(sigma_max), math.log(sigma_min), m, dtype=torch.float64).exp()
    return _finish(sigmas.float(), prepend_inf, device)


def get_sigmas_polyexponential(n: int, sigma_min: float, sigma_max: float, rho: float = 1.,
                               prepend_inf: bool = True, device='cpu') -> Tensor:
    """Polynomial in log σ over [σ_min, σ_max]; with prepend_inf, ∞ first (n + 1 entries with the 0)."""
    sigma_max = check_finite_sigma_max(sigma_max)
    m = n - 1 if prepend_inf else n
    ramp = torch.linspace(1, 0, m, dtype=torch.float64) ** rho
    sigmas = torch.exp(ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min))
    return _finish(sigmas.float(), prepend_inf, device)


def scale_sigma_for_resolution(sigma: float, side: float, base_side: float) -> float:
    """Report §2.3 rule of thumb: doubling the canvas side doubles σ_max (∞ stays ∞)."""
    return sigma * side / base_side


def validate_alphas_cumprod(alphas_cumprod: Tensor) -> None:
    """Clear errors for ᾱ tables no denoiser can use: low precision, NaN, outside [0, 1], increasing."""
    ac = torch.as_tensor(alphas_cumprod)
    if ac.dtype not in (torch.float32, torch.float64):
        raise ValueError(f'alphas_cumprod must be float32 or float64, got {ac.dtype} (float16 shifts σ by up to 7 %)')
    if ac.ndim != 1 or len(ac) < 2:
        raise ValueError(f'alphas_cumprod must be a 1-D table of at least 2 timesteps, got shape {tuple(ac.shape)}')
    if not torch.isfinite(ac).all() or (ac < 0).any() or (ac > 1).any() or not ac[0] > 0:
        raise ValueError('alphas_cumprod must be finite, in [0, 1] and positive at t = 0; got values in '
                         f'[{ac.min().item():.6g}, {ac.max().item():.6g}]' + (' with NaN' if ac.isnan().any() else ''))
    up = (ac[1:] > ac[:-1]).nonzero().flatten()
    if len(up):
        i = up[0].item()
        raise ValueError(f'alphas_cumprod must be non-increasing, but ᾱ[{i}]={ac[i].item():.6g} < '
                         f'ᾱ[{i + 1}]={ac[i + 1].item():.6g}')


def validate_sigmas(sigmas: Tensor) -> None:
    """Clear errors for schedules no sampler can follow: NaN, not 1-D, unsorted, ∞ not first, negative."""
    if sigmas.ndim != 1 or len(sigmas) < 1:
        raise ValueError(f'sigmas must be a non-empty 1-D tensor, got shape {tuple(sigmas.shape)}')
    if torch.isnan(sigmas).any():
        raise ValueError(f'sigmas contain NaN at positions {torch.isnan(sigmas).nonzero().flatten().tolist()}')
    inf_at = torch.isinf(sigmas).nonzero().flatten().tolist()
    if inf_at == [0] and len(sigmas) < 2:
        raise ValueError('a schedule starting at σ=∞ needs at least one more sigma to step to')
    if inf_at and inf_at != [0]:
        raise ValueError(f'σ=∞ may only be the first sigma (the zero-terminal-SNR step), found at positions {inf_at}')
    if (sigmas < 0).any():
        raise ValueError(f'sigmas must be non-negative, got {sigmas.min().item()}')
    finite = sigmas[1:] if inf_at else sigmas
    bad = (finite[1:] >= finite[:-1]).nonzero().flatten()
    if len(bad):
        i = bad[0].item() + (1 if inf_at else 0)
        raise ValueError(f'sigmas must be strictly decreasing, but sigmas[{i}]={sigmas[i].item():.6g} <= '
                         f'sigmas[{i + 1}]={sigmas[i + 1].item():.6g}')


# ---------------------------------------------------------------------------------------------- UI schedules
# The schedules of the UIs (ComfyUI/A1111/diffusers), all defined over a finite range. From ∞ they keep
# k-diffusion's convention: n model calls = ∞, then n − 1 finite sigmas whose top is `sigma_max`, then 0.
# Table-based ones take the model's σ table (ascending; a trailing ∞ is ignored) and read it at fractional
# timesteps t by log-linear interpolation, as DiscreteVDenoiser.t_to_sigma and k-diffusion do.

def _finite_count(n: int, prepend_inf: bool) -> int:
    m = n - 1 if prepend_inf else n
    if m < 1:
        raise ValueError(f'n={n} model calls leave no finite sigma; need n >= {2 if prepend_inf else 1}')
    return m


def _finite_table(sigma_table: Tensor) -> Tensor:
    table = torch.as_tensor(sigma_table, dtype=torch.float64)
    return table[table.isfinite()]


def table_t(sigma: float, sigma_table: Tensor) -> float:
    """The fractional timestep of a finite σ on the table (log-linear between entries); refuses σ off the table."""
    log_t = _finite_table(sigma_table).log()
    s = math.log(check_finite_sigma_max(sigma, 'sigma'))
    if not log_t[0] - 1e-5 <= s <= log_t[-1] + 1e-5:        # 1e-5: float32 round-off of a table σ
        raise ValueError(f'sigma={sigma:.6g} is outside the table [{log_t[0].exp():.6g}, {log_t[-1].exp():.6g}]')
    i = int(torch.searchsorted(log_t, torch.tensor(s, dtype=torch.float64)).clamp(1, len(log_t) - 1))
    return i - 1 + ((s - log_t[i - 1]) / (log_t[i] - log_t[i - 1])).clamp(0, 1).item()


def table_sigma(t: Tensor, sigma_table: Tensor) -> Tensor:
    """σ(t) on the finite table, log-linear between integer timesteps, float64."""
    log_t = _finite_table(sigma_table).log()
    t = torch.as_tensor(t, dtype=torch.float64).clamp(0, len(log_t) - 1)
    lo = t.floor().long().clamp(max=len(log_t) - 2)
    return torch.lerp(log_t[lo], log_t[lo + 1], t - lo).exp()


def _from_t(t: Tensor, sigma_table: Tensor, prepend_inf: bool, device) -> Tensor:
    return _finish(table_sigma(t, sigma_table).float(), prepend_inf, device)


def _t_top(sigma_table: Tensor, sigma_max: Optional[float]) -> float:
    return float(len(_finite_table(sigma_table)) - 1) if sigma_max is None else table_t(sigma_max, sigma_table)


def get_sigmas_normal(n: int, sigma_table: Tensor, sigma_max: Optional[float] = None, prepend_inf: bool = True,
                      device='cpu') -> Tensor:
    """'normal' (k-diffusion's DiscreteSchedule.get_sigmas): t uniform from t(σ_max) to 0, both included."""
    t = torch.linspace(_t_top(sigma_table, sigma_max), 0, _finite_count(n, prepend_inf), dtype=torch.float64)
    return _from_t(t, sigma_table, prepend_inf, device)


def get_sigmas_sgm_uniform(n: int, sigma_table: Tensor, sigma_max: Optional[float] = None,
                           prepend_inf: bool = True, device='cpu') -> Tensor:
    """'sgm_uniform' (SGM's discretisation): t uniform over [t(σ_max), 0] in m + 1 points, the last (t = 0) dropped."""
    m = _finite_count(n, prepend_inf)
    t = torch.linspace(_t_top(sigma_table, sigma_max), 0, m + 1, dtype=torch.float64)[:-1]
    return _from_t(t, sigma_table, prepend_inf, device)


def get_sigmas_simple(n: int, sigma_table: Tensor, sigma_max: Optional[float] = None, prepend_inf: bool = True,
                      device='cpu') -> Tensor:
    """'simple': table entries at integer t = t_top − ⌊i·(t_top + 1)/m⌋, i < m (a stride from the top; a
    fractional t_top, from a σ_max between entries, shifts every t by its fraction so σ_max stays first)."""
    m, t_top = _finite_count(n, prepend_inf), _t_top(sigma_table, sigma_max)
    top = math.floor(t_top + 1e-9)
    t = t_top - torch.floor(torch.arange(m, dtype=torch.float64) * (top + 1) / m)
    return _from_t(t, sigma_table, prepend_inf, device)


def get_sigmas_trailing(n: int, sigma_table: Tensor, sigma_max: Optional[float] = None, prepend_inf: bool = True,
                        device='cpu') -> Tensor:
    """diffusers' timestep_spacing='trailing': t_i = round(T − i·T/n) − 1 with T = t_top + 1 timesteps.

    With ∞ prepended the ∞ is timestep t_top + 1 (T = t_top + 2) and is the i = 0 step; for the ZTSNR
    table (t_top = 998) this is exactly diffusers' trailing schedule with rescale_betas_zero_snr. A fractional
    t_top shifts every t by its fraction (as 'simple')."""
    t_top = _t_top(sigma_table, sigma_max)
    top = math.floor(t_top + 1e-9)
    big_t = top + (2 if prepend_inf else 1)
    i = torch.arange(1 if prepend_inf else 0, n, dtype=torch.float64)
    t = torch.round(big_t - i * big_t / n) - 1 + (t_top - top)
    return _from_t(t, sigma_table, prepend_inf, device)


def get_sigmas_beta(n: int, sigma_table: Tensor, sigma_max: Optional[float] = None, alpha: float = 0.6,
                    beta: float = 0.6, prepend_inf: bool = True, device='cpu') -> Tensor:
    """Lee et al. 2024 ("Beta sampling is all you need"): t_i = t_top·F⁻¹(1 − i/m), i < m, F the Beta(α, β)
    CDF (α = β = 0.6 as ComfyUI's default; like ComfyUI the last finite t is F⁻¹(1/m)·t_top, then 0)."""
    from scipy.special import betaincinv
    m = _finite_count(n, prepend_inf)
    u = 1 - torch.arange(m, dtype=torch.float64) / m
    t = _t_top(sigma_table, sigma_max) * torch.from_numpy(betaincinv(alpha, beta, u.numpy()))
    return _from_t(t, sigma_table, prepend_inf, device)


def get_sigmas_kl_optimal(n: int, sigma_min: float, sigma_max: float, prepend_inf: bool = True,
                          device='cpu') -> Tensor:
    """Sabour et al. (2024) KL-optimal: σ_i = tan(linspace(arctan σ_max, arctan σ_min)), uniform in arctan σ."""
    sigma_max = check_finite_sigma_max(sigma_max)
    a = torch.linspace(math.atan(sigma_max), math.atan(sigma_min), _finite_count(n, prepend_inf), dtype=torch.float64)
    return _finish(a.tan().float(), prepend_inf, device)


def get_sigmas_loglinear(n: int, sigma_list: Sequence[float], prepend_inf: bool = True, device='cpu') -> Tensor:
    """Align-Your-Steps-style: a stored descending list of finite sigmas, interpolated linearly in log σ over
    an equal-spaced index to m points (AYS' loglinear_interp); m = len(sigma_list) returns the list."""
    ys = torch.as_tensor(list(sigma_list), dtype=torch.float64).log()
    m = _finite_count(n, prepend_inf)
    x = torch.linspace(0, len(ys) - 1, m, dtype=torch.float64)
    lo = x.floor().long().clamp(max=len(ys) - 2)
    return _finish(torch.lerp(ys[lo], ys[lo + 1], x - lo).exp().float(), prepend_inf, device)
