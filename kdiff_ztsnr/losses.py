"""Training losses for v-prediction on the zero-terminal-SNR schedule (report §2.2, §4.3).

MinSNR-γ (Hang et al. 2303.09556) in its v form: the x₀-space weight min(SNR, γ) becomes

    w(SNR) = min(SNR, γ) / (SNR + 1)                        (v error = x₀ error · √(SNR + 1))

with SNR = σ_data²/σ² taken from the RESCALED (ZTSNR) table, so SNR = 0 at t = T−1 (σ = ∞). sd-scripts
computes it from the un-rescaled table (its issue #1263); here σ always comes from the denoiser's own
``t_to_sigma``.

The terminal step. The formula gives w(0) = 0, so the σ = ∞ step would teach nothing, yet it is the step
ZTSNR exists for: there the v target is −x₀/σ_data and the optimum is the data mean E[x₀] that the sampler's
first step uses (report eq. 9, 18). The weight of the nearest nonzero SNR does not help: SNR[998] ≈ 1.97e-7
on SDXL-ZTSNR, so w ≈ 2e-7 — zero in practice. We use ``terminal_weight = 1`` by default (the Min-SNR
reference code's value at SNR = 0): the terminal step is plain v-MSE, the same weight that training without
MinSNR gives every step, slightly above MinSNR's peak γ/(γ+1) (0.833 for γ = 5). Drawn uniformly it is one
step in T, so it neither dominates nor vanishes.
"""

from typing import Optional

import torch
from torch import Tensor

from . import schedules


def min_snr_weight(snr: Tensor, gamma: float = 5., terminal_weight: float = 1.) -> Tensor:
    """v-form MinSNR-γ weight min(SNR, γ)/(SNR + 1); ``terminal_weight`` where SNR = 0 (σ = ∞), 0 at SNR = ∞."""
    snr = snr.to(torch.promote_types(snr.dtype, torch.float32))
    w = torch.where(snr.isinf(), torch.zeros_like(snr), snr.clamp(max=gamma) / (snr + 1))
    return torch.where(snr == 0, torch.full_like(snr, terminal_weight), w)


def sample_timesteps(n: int, num_timesteps: int = schedules.NUM_TIMESTEPS,
                     generator: Optional[torch.Generator] = None, device='cpu') -> Tensor:
    """n integer timesteps uniform over {0, …, T−1}, T−1 (σ = ∞ on ZTSNR) included: int64 [n]."""
    return torch.randint(0, num_timesteps, (n,), generator=generator).to(device)


def v_loss(denoiser, x0: Tensor, noise: Tensor, t: Tensor, gamma: Optional[float] = 5.,
           terminal_weight: float = 1., weight: Optional[Tensor] = None, **extra) -> Tensor:
    """Per-sample weighted v-MSE [B] at integer timesteps t [B] (σ = denoiser.t_to_sigma(t), ∞ at T−1).

    denoiser: a DiscreteVDenoiser (or anything with ``t_to_sigma``, ``loss`` and ``sigma_data``).
    gamma: MinSNR-γ on the rescaled SNR (None: unweighted). weight [B]: extra per-sample weights, e.g. the
    §4.3 tag weights of ``tags.image_weights`` (mean 1 over the dataset). Finite at t = T−1.
    """
    sigma = denoiser.t_to_sigma(t.to(x0.device))
    loss = denoiser.loss(x0, noise, sigma, **extra)
    if gamma is not None:
        loss = loss * min_snr_weight(schedules.snr(sigma.double(), denoiser.sigma_data), gamma,
                                     terminal_weight).to(loss.dtype)
    if weight is not None:
        loss = loss * weight.to(loss)
    return loss
