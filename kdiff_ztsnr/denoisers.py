"""v-prediction Karras preconditioners that stay exact at σ = ∞ (report appendix A.1, eq. 1, 10-18).

Convention: at σ = ∞ the sampler state is the unit-variance noise n itself (x₀ = σ₀·n with σ₀ → ∞ factored
out, eq. 3-9). The wrappers then bypass c_in (the network sees n, eq. 17-18), use c_skip = 0 and
c_out = −σ_data (eq. 13-14), and condition the network on the terminal timestep.

All noise scaling (c_in·x, σ·n) runs in float32 whatever the network's dtype (report A.2), so fp16/bf16
networks receive finite inputs at σ = 20000 and σ = ∞; results come back in the input's dtype.
"""

import math
import numbers
from typing import Optional

import torch
from k_diffusion import external, utils
from torch import Tensor, nn

from . import schedules


def v_scalings(sigma: Tensor, sigma_data: float = 1.) -> tuple[Tensor, Tensor, Tensor]:
    """c_skip, c_out, c_in of eq. 10-12 in float32, with their σ → ∞ limits (eq. 13-14, c_in := 1: bypass)."""
    sigma = sigma.to(torch.promote_types(sigma.dtype, torch.float32))    # float32 at least, float64 kept
    s2 = sigma ** 2 + sigma_data ** 2
    c_skip = sigma_data ** 2 / s2                                          # Equation 10 (→ 0)
    c_out = -sigma_data / (1 + (sigma_data / sigma) ** 2).sqrt()          # Equation 11 (→ −σ_data)
    c_in = torch.where(sigma.isinf(), 1., s2.rsqrt())                      # Equation 12; ∞: the bypass, n itself
    return c_skip, c_out, c_in


SIGMA_DATA_MIN = torch.finfo(torch.float32).tiny ** 0.5   # σ_data² must stay a normal float32
SIGMA_DATA_MAX = torch.finfo(torch.float32).max ** 0.5


def check_sigma_data(sigma_data: float) -> float:
    """σ_data of eq. 10-12 must be a positive number whose square is a normal float32 (else c_skip = 0/0)."""
    ok = isinstance(sigma_data, numbers.Real) and not isinstance(sigma_data, bool) and \
        SIGMA_DATA_MIN <= sigma_data <= SIGMA_DATA_MAX
    if not ok:
        raise ValueError(f'sigma_data must be a positive finite number in [{SIGMA_DATA_MIN:.3g}, '
                         f'{SIGMA_DATA_MAX:.3g}] (its square a normal float32), got {sigma_data!r}')
    return float(sigma_data)


def check_sigma_range(sigma: Tensor) -> None:
    """σ must lie in [0, ∞]: a negative or NaN noise level has no timestep (a host sync: not per step)."""
    bad = sigma.isnan() | (sigma < 0)
    if bad.any():
        raise ValueError(f'sigma must be in [0, inf], got {sigma[bad].flatten()[0].item()}')


def module_dtype(module: nn.Module, default: torch.dtype = torch.float32) -> torch.dtype:
    """The dtype of a module's first floating-point parameter (what its inputs should be cast to)."""
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return default


def _bracket(log_table: Tensor, log_sigma: Tensor) -> Tensor:
    """The index i of the ascending log-σ table with table[i] ≤ log σ < table[i + 1], clamped to [0, T−2]."""
    low = torch.searchsorted(log_table, log_sigma.reshape(-1), right=True) - 1
    return low.clamp(0, len(log_table) - 2).view(log_sigma.shape)


def interpolated_index(log_table: Tensor, log_sigma: Tensor) -> Tensor:
    """The fractional index of log σ in an ascending log-σ table, linear between entries, clamped to its ends."""
    low = _bracket(log_table, log_sigma)
    w = ((log_sigma - log_table[low]) / (log_table[low + 1] - log_table[low])).clamp(0, 1)
    return low + w


def nearest_index(log_table: Tensor, log_sigma: Tensor) -> Tensor:
    """The nearest entry in log σ (the lower one on a tie), as k-diffusion's DiscreteSchedule quantize."""
    low = _bracket(log_table, log_sigma)
    lo, hi = log_table[low], log_table[low + 1]
    up = ((hi - log_sigma).abs() < (log_sigma - lo).abs()) | (log_sigma > hi)
    return low + up.long()


class VPreconditioner(nn.Module):
    """Shared v-prediction preconditioning (eq. 1); subclasses define timestep (σ → t) and get_v.

    sigma_to_t is timestep with σ checked to lie in [0, ∞]; the sampling path calls timestep unchecked
    (the samplers validate the whole schedule once)."""

    def __init__(self, inner_model: nn.Module, sigma_data: float = 1.):
        nn.Module.__init__(self)  # not super(): DiscreteSchedule's __init__ builds a log table that breaks at ∞
        self.inner_model = inner_model
        self.sigma_data = check_sigma_data(sigma_data)

    def get_scalings(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return v_scalings(sigma, self.sigma_data)

    def get_v(self, *args, **kwargs) -> Tensor:
        return self.inner_model(*args, **kwargs)

    def _call(self, x_in: Tensor, sigma: Tensor, **kwargs) -> Tensor:
        x_in = x_in.to(module_dtype(self.inner_model))
        v = self.get_v(x_in, self.timestep(sigma), **kwargs)
        if not torch.is_tensor(v) or v.shape != x_in.shape:             # metadata only: no broadcasting below
            raise ValueError(f'the network must return v of the shape of its input {tuple(x_in.shape)}, got '
                             f'{tuple(v.shape) if torch.is_tensor(v) else type(v).__name__}')
        return v

    def loss(self, input: Tensor, noise: Tensor, sigma: Tensor, **kwargs) -> Tensor:
        """Per-sample v-prediction MSE [B]; exact at σ = ∞ (network input n, target −x/σ_data)."""
        dtype = torch.promote_types(input.dtype, torch.float32)
        sigma, sd = sigma.to(dtype), self.sigma_data
        a = utils.append_dims((sigma ** 2 + sd ** 2).rsqrt(), input.ndim)          # VP signal scale / σ_d: → 0
        b = utils.append_dims((1 + (sd / sigma) ** 2).rsqrt(), input.ndim)         # σ·a, VP noise scale: → 1
        x0, n = input.to(dtype), noise.to(dtype)
        model_output = self._call(a * x0 + b * n, sigma, **kwargs)                 # c_in·(x + σn)
        target = sd * a * n - b / sd * x0                                          # (x − c_skip·x_σ)/c_out
        return (model_output.to(dtype) - target).pow(2).flatten(1).mean(1)

    def forward(self, input: Tensor, sigma: Tensor, **kwargs) -> Tensor:
        c_skip, c_out, c_in = [utils.append_dims(c, input.ndim) for c in self.get_scalings(sigma)]
        x = input.to(torch.promote_types(input.dtype, torch.float32))          # noise scaling in ≥ float32
        v = self._call(x * c_in, sigma, **kwargs).to(x.dtype)
        return (v * c_out + x * c_skip).to(input.dtype)


class DiscreteVDenoiser(VPreconditioner, external.DiscreteSchedule):
    """k-diffusion's DiscreteVDDPMDenoiser for timestep-conditioned v networks, exact at σ = ∞.

    inner_model(x_in, t, **extra) -> v, t a float in [0, T−1]. With a zero-terminal-SNR ᾱ table, σ(T−1) = ∞;
    sigma_max=20000. clamps the table's last sigma to that value (report A.2), so every unmodified
    k-diffusion sampler works. Above the last finite table sigma, t is interpolated linearly in √ᾱ, so
    σ ∈ (σ[T−2], ∞] maps strictly monotonically onto (T−2, T−1].

    quantize=True feeds the network integer timesteps as ComfyUI and A1111 do: the nearest table index in
    log σ (k-diffusion's DiscreteSchedule quantize, ComfyUI's model_sampling.timestep), with ∞ on top
    standing for the hosts' clamp COMFY_SIGMA_MAX (4518.76), so σ = ∞ is still t = T−1 exactly.
    """

    def __init__(self,
                 inner_model: nn.Module,          # v network: (x_in, t, **extra) -> v
                 alphas_cumprod: Tensor,          # ᾱ table [T]; ᾱ[-1] = 0 for zero terminal SNR
                 quantize: bool = False,          # integer t: the nearest table index, as ComfyUI / A1111
                 sigma_max: Optional[float] = None,  # clamp the table's top sigma (e.g. 20000., report A.2)
                 sigma_data: float = 1.):
        schedules.validate_alphas_cumprod(alphas_cumprod)
        sigmas = schedules.sigmas_from_alphas_cumprod(torch.as_tensor(alphas_cumprod))
        self_ztsnr = bool(sigmas[-1].isinf())
        if sigma_max is not None:
            if not sigma_max > sigmas[-2]:
                raise ValueError(f'sigma_max={sigma_max} must exceed the largest finite table sigma '
                                 f'{sigmas[-2].item():.6g}; clamping lower would merge timesteps')
            sigmas = sigmas.clamp(max=sigma_max)
        VPreconditioner.__init__(self, inner_model, sigma_data)
        self.register_buffer('sigmas', sigmas.float())
        self.register_buffer('log_sigmas', sigmas.log().float())
        self.quantize, self.zero_terminal_snr = quantize, self_ztsnr
        finite = sigmas.isfinite()
        self.n_finite = int(finite.sum())                                  # T − 1 with ∞ on top, else T
        self.register_buffer('log_finite', sigmas[finite].log().float(), persistent=False)
        host = sigmas.nan_to_num(posinf=schedules.COMFY_SIGMA_MAX)          # the hosts' table: ∞ → 4518.76
        self.register_buffer('log_host', host.log().float(), persistent=False)
        self.sigma_top = float(sigmas[self.n_finite - 1])                  # the largest finite table sigma
        self.sqrt_ac_top = (1 + self.sigma_top ** 2) ** -0.5                # √ᾱ there

    @property
    def sigma_max_finite(self) -> Tensor:
        """The largest finite sigma of the table (σ[T−2] ≈ 2254.24 for SDXL-ZTSNR; 20000 when clamped)."""
        return self.sigmas[self.n_finite - 1]

    def sigma_to_t(self, sigma: Tensor, quantize: Optional[bool] = None) -> Tensor:
        """t(σ) for σ in [0, ∞]; a negative or NaN σ raises."""
        sigma = torch.as_tensor(sigma, device=self.sigmas.device).float()
        check_sigma_range(sigma)
        return self.timestep(sigma, quantize)

    def timestep(self, sigma: Tensor, quantize: Optional[bool] = None) -> Tensor:
        """sigma_to_t without the range check (the per-step path)."""
        quantize = self.quantize if quantize is None else quantize
        sigma = torch.as_tensor(sigma, device=self.sigmas.device).float()
        if not self.zero_terminal_snr and sigma.isinf().any():
            raise ValueError(f'σ=∞ needs a zero-terminal-SNR ᾱ table (ᾱ[-1] = 0); this one ends at '
                             f'σ={self.sigmas[-1].item():.6g}: the model was never trained at σ=∞, start from '
                             f'its get_sigmas() instead')
        if quantize:
            return nearest_index(self.log_host, sigma.log())
        t = interpolated_index(self.log_finite, sigma.log())
        if self.n_finite < len(self.sigmas):                                     # ∞ on top: the √ᾱ ramp
            t_top = (self.n_finite - 1) + (1 - (1 + sigma ** 2).rsqrt() / self.sqrt_ac_top)
            t = torch.where(sigma > self.sigma_top, t_top, t)                    # branchless: no host read
        return t

    def t_to_sigma(self, t: Tensor) -> Tensor:
        t = torch.as_tensor(t, device=self.sigmas.device).float()
        n_f = self.n_finite
        low = t.floor().long().clamp(0, n_f - 1)
        high = t.ceil().long().clamp(0, n_f - 1)
        w = t.frac()
        sigma = ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()
        sigma = torch.where(w == 0, self.sigmas[low], sigma)                      # table values exactly
        if n_f < len(self.sigmas):
            sqrt_ac = (n_f - t).clamp(0, 1) * self.sqrt_ac_top
            sigma = torch.where(t > n_f - 1, (1 - sqrt_ac ** 2).sqrt() / sqrt_ac, sigma)
        return sigma

    def get_sigmas(self, n: Optional[int] = None) -> Tensor:
        """The report's "native" schedule: t = linspace(T−1, 0, n), σ(t), then 0 (for n=28: ∞, 56.18, …, 0)."""
        if n is None:
            return torch.cat([self.sigmas.flip(0), self.sigmas.new_zeros([1])])
        t = torch.linspace(len(self.sigmas) - 1, 0, n, device=self.sigmas.device)
        return torch.cat([self.t_to_sigma(t), self.sigmas.new_zeros([1])])


class VDenoiser(VPreconditioner):
    """v wrapper for σ-conditioned networks (k-diffusion's own models, v-diffusion).

    The network's noise conditioning is t = atan(σ/σ_data)·2/π ∈ [0, 1], finite at σ = ∞ (t = 1).
    """

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        """t(σ) for σ in [0, ∞]; a negative or NaN σ raises."""
        check_sigma_range(torch.as_tensor(sigma))
        return self.timestep(sigma)

    def timestep(self, sigma: Tensor) -> Tensor:
        return (torch.as_tensor(sigma).float() / self.sigma_data).atan() * (2 / math.pi)

    def t_to_sigma(self, t: Tensor) -> Tensor:
        return torch.where(t >= 1, torch.full_like(t, math.inf), (t * math.pi / 2).tan() * self.sigma_data)


class CompVisVDenoiser(DiscreteVDenoiser):
    """Adaptor for CompVis/SGM-style models exposing apply_model(x, t, cond) and alphas_cumprod.

    Pass zero_terminal_snr=True when the checkpoint was trained on the rescaled schedule but carries
    SDXL's original ᾱ buffer.
    """

    def __init__(self, model: nn.Module, quantize: bool = False, sigma_max: Optional[float] = None,
                 zero_terminal_snr: bool = False, sigma_data: float = 1.):
        ac = model.alphas_cumprod.detach().double().cpu()
        if zero_terminal_snr:
            ac = schedules.rescale_zero_terminal_snr(ac)
        super().__init__(model, ac, quantize=quantize, sigma_max=sigma_max, sigma_data=sigma_data)

    def get_v(self, x: Tensor, t: Tensor, cond=None, **kwargs) -> Tensor:
        return self.inner_model.apply_model(x, t, cond, **kwargs)
