"""A closed-form oracle: the exact optimal denoiser of a finite dataset, defined at every σ including ∞.

For data {y_k} with equal weights, E[y | x_σ = x] = Σ_k softmax_k(−|x − y_k|²/2σ²) y_k. At σ = ∞ the state
is the unit-variance noise n (the package's convention) and every weight is equal: D(n; ∞) = mean_k y_k.
Used by the tests and benchmarks to drive the wrappers and samplers with an exactly known model.
"""

import math

import torch
from torch import Tensor, nn

from .denoisers import v_scalings


def optimal_denoiser(data: Tensor, x: Tensor, sigma: Tensor) -> Tensor:
    """E[y | y + σ·n = x] for y uniform over data [K, ...]; x [B, ...], sigma [B]; σ = ∞ → the data mean."""
    y = data.flatten(1).double()
    xf, s = x.flatten(1).double(), sigma.double().view(-1, 1)
    logits = -(torch.cdist(xf, y) ** 2) / (2 * s ** 2)             # [B, K]
    logits = torch.where(s.isinf(), torch.zeros_like(logits), logits)
    d = logits.softmax(dim=1) @ y
    return d.view_as(x).to(x.dtype) if x.is_floating_point() else d.view_as(x)


class OracleDenoiser(nn.Module):
    """The optimal denoiser as a k-diffusion denoiser: model(x, sigma[B]) -> denoised."""

    def __init__(self, data: Tensor, sigma_data: float = 1.):
        super().__init__()
        self.register_buffer('data', data)
        self.sigma_data = sigma_data

    def forward(self, x: Tensor, sigma: Tensor, **kwargs) -> Tensor:
        return optimal_denoiser(self.data, x.float(), sigma.float()).to(x.dtype)


class OracleVNetwork(nn.Module):
    """The optimal denoiser re-expressed as a timestep-conditioned v network F(c_in·x, t) for a wrapper.

    t_to_sigma: the wrapper's own map (e.g. DiscreteVDenoiser.t_to_sigma), so that wrapping this network
    reproduces the oracle: D = c_skip·x + c_out·F exactly, the σ = ∞ bypass included (F(n; t_max) = −ȳ/σ_d).
    """

    def __init__(self, data: Tensor, t_to_sigma, sigma_data: float = 1.):
        super().__init__()
        self.register_buffer('data', data)
        self.t_to_sigma, self.sigma_data = t_to_sigma, sigma_data
        self.calls = 0

    def forward(self, x_in: Tensor, t: Tensor, **kwargs) -> Tensor:
        self.calls += 1
        sigma = self.t_to_sigma(t).float().expand(x_in.shape[0])
        c_skip, c_out, c_in = [c.view(-1, *[1] * (x_in.ndim - 1)).double() for c in v_scalings(sigma, self.sigma_data)]
        x = x_in.double() / c_in                                        # the bypass: c_in = 1 at ∞, x = n
        d = optimal_denoiser(self.data, x, sigma)
        x = torch.where(c_skip == 0, torch.zeros_like(x), x)           # c_skip·x = 0 at ∞
        return ((d - c_skip * x) / c_out).to(x_in.dtype)


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


SDXL_SIGMA_MAX = 14.614641229333639
ZTSNR_CLAMP = 20000.
COMFY_SIGMA_MAX = math.sqrt((1 - 4.8973451890853435e-08) / 4.8973451890853435e-08)
DIFFUSERS_SIGMA_MAX = math.sqrt((1 - 2 ** -24) / 2 ** -24)
