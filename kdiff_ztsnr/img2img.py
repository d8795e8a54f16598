"""img2img start: noise an init latent to σ_i and truncate the schedule (strength → start index)."""

import math

import torch
from torch import Tensor

from .sampling import check_state
from .schedules import validate_sigmas


def start_index(n_steps: int, strength: float) -> int:
    """Index of the first sigma for a given strength ∈ [0, 1]: strength 1 starts at sigmas[0], 0 at the end."""
    if not 0. <= strength <= 1.:
        raise ValueError(f'strength must lie in [0, 1], got {strength}')
    return n_steps - int(round(strength * n_steps))


def img2img_start(x0: Tensor, noise: Tensor, sigmas: Tensor, strength: float) -> tuple[Tensor, Tensor]:
    """Noise the init latent x0 to σ_i and return (x, sigmas[i:]) for any sampler of this package.

    noise: unit-variance, same shape as x0. At strength 1 on a schedule from ∞ the init is fully destroyed:
    x is the noise itself (the σ = ∞ state). At strength 0 the latent is returned with the schedule [0].
    """
    validate_sigmas(sigmas)
    check_state(x0)
    if not torch.is_tensor(noise) or not noise.is_floating_point() or noise.shape != x0.shape:
        got = f'{tuple(noise.shape)} {noise.dtype}' if torch.is_tensor(noise) else type(noise).__name__
        raise ValueError(f'noise must be a floating-point tensor of the shape of x0 ({tuple(x0.shape)}), got {got}')
    i = start_index(len(sigmas) - 1, strength)
    sigmas = sigmas[i:]
    sigma = sigmas[0]
    if math.isinf(sigma):
        return noise.float().clone(), sigmas
    return (x0.float() + noise.float() * sigma.float()), sigmas
