"""Closed-form oracles: exact optimal denoisers of known distributions, defined at every σ including ∞.

For data {y_k} with equal weights, E[y | x_σ = x] = Σ_k softmax_k(−|x − y_k|²/2σ²) y_k. At σ = ∞ the state
is the unit-variance noise n (the package's convention) and every weight is equal: D(n; ∞) = mean_k y_k.
A Gaussian mixture around the y_k (component variance s²) adds the shrinkage s²/(σ² + s²)·(x − D₀).

`exact_model` wraps any such denoiser as the timestep-conditioned v network F(c_in·x, t) inside a
`DiscreteVDenoiser`, so it goes through the wrapper and the samplers exactly as a trained network would. The
tests, benchmarks and examples all use it (their own instruments built on it live with them: the conditional
mixture and the subjects in benchmarks/subjects.py, the bare optimal denoiser in tests/helpers.py).
"""

from typing import Callable, Optional, Union

import torch
from torch import Tensor, nn

from . import schedules
from .denoisers import DiscreteVDenoiser, v_scalings

Denoise = Callable[[Tensor, Tensor, Optional[Tensor]], Tensor]   # (x, σ [B], cond) -> E[y | x]


def mixture_denoiser(mu: Tensor, x: Tensor, sigma: Tensor, s: float = 0.) -> Tensor:
    """E[y | y + σn = x] for y ~ (1/K) Σ_k N(μ_k, s²I), mu [K, ...], x [B, ...], sigma [B]; σ = ∞ → mean μ.

    −|x − μ_k|²/2v = (x·μ_k − |μ_k|²/2)/v − |x|²/2v with v = σ² + s²; the last term cancels in the softmax.
    """
    m = mu.flatten(1).double()
    xf, sg = x.flatten(1).double(), sigma.double().view(-1, 1)
    var = sg ** 2 + s ** 2
    logits = (xf @ m.T - 0.5 * (m * m).sum(1)) / var
    logits = torch.where(sg.isinf(), torch.zeros_like(logits), logits)
    d = logits.softmax(1) @ m
    if s:
        shrink = torch.where(sg.isinf(), torch.zeros_like(sg), s ** 2 / var)   # Σ(Σ + σ²I)⁻¹ for Σ = s²I
        d = d + shrink * (xf - d)
    return d.view_as(x).to(x.dtype) if x.is_floating_point() else d.view_as(x)


def optimal_denoiser(data: Tensor, x: Tensor, sigma: Tensor) -> Tensor:
    """E[y | y + σ·n = x] for y uniform over data [K, ...]; x [B, ...], sigma [B]; σ = ∞ → the data mean."""
    return mixture_denoiser(data, x, sigma)


class OracleVNetwork(nn.Module):
    """An exact denoiser re-expressed as the v network F(c_in·x, t) a wrapper expects (the inverse of eq. 1).

    denoise: a data tensor [K, ...] (its optimal denoiser) or any (x, σ, cond) -> E[y | x]. t_to_sigma: the
    wrapper's own map, so D = c_skip·x + c_out·F exactly, the σ = ∞ bypass included (F(n; t_max) = −ȳ/σ_d).
    cond: a LongTensor [B] selecting a data subset per item (a "prompt"), or None. Counts its calls.
    """

    def __init__(self, denoise: Union[Tensor, Denoise], t_to_sigma: Callable, sigma_data: float = 1.):
        super().__init__()
        if isinstance(denoise, Tensor):
            self.register_buffer('data', denoise)
            denoise = lambda x, sigma, cond: optimal_denoiser(self.data, x, sigma)  # noqa: E731
        self.denoise, self.t_to_sigma, self.sigma_data = denoise, t_to_sigma, sigma_data
        self.calls = 0

    def forward(self, x_in: Tensor, t: Tensor, cond: Optional[Tensor] = None, **kwargs) -> Tensor:
        self.calls += 1
        sigma = self.t_to_sigma(t).float().expand(x_in.shape[0])
        c_skip, c_out, c_in = [c.view(-1, *[1] * (x_in.ndim - 1)).double() for c in v_scalings(sigma, self.sigma_data)]
        x = x_in.double() / c_in                                        # the bypass: c_in = 1 at ∞, x = n
        d = self.denoise(x, sigma, cond)
        x = torch.where(c_skip == 0, torch.zeros_like(x), x)           # c_skip·x = 0 at ∞
        return ((d - c_skip * x) / c_out).to(x_in.dtype)


def exact_model(denoise: Union[Tensor, Denoise], alphas_cumprod: Optional[Tensor] = None,
                sigma_max: Optional[float] = None, sigma_data: float = 1.) -> DiscreteVDenoiser:
    """A DiscreteVDenoiser (default: the ZTSNR table; sigma_max clamps its top, report A.2) around the exact
    v network of `denoise` (a data tensor or a denoiser function, as OracleVNetwork)."""
    ac = schedules.ztsnr_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod
    model = DiscreteVDenoiser(nn.Identity(), ac, sigma_max=sigma_max, sigma_data=sigma_data)
    model.inner_model = OracleVNetwork(denoise, model.t_to_sigma, sigma_data)
    return model


def brightness_dataset(k: int = 16, shape: tuple = (4, 16, 16), spread: float = 1., texture: float = 0.3,
                       seed: int = 0) -> Tensor:
    """K images whose per-image mean brightness spans [−spread, spread], plus zero-mean texture."""
    g = torch.Generator().manual_seed(seed)
    levels = torch.linspace(-spread, spread, k).view(k, *[1] * len(shape))
    tex = torch.randn((k, *shape), generator=g)
    tex = tex - tex.mean(dim=tuple(range(1, tex.ndim)), keepdim=True)
    return levels + texture * tex


def mean_brightness(x: Tensor) -> Tensor:
    """Per-sample mean over all non-batch dimensions [B]."""
    return x.flatten(1).mean(1)
