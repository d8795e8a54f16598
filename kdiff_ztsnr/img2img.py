"""img2img start: noise an init latent to σ_i and truncate the schedule (strength → start index)."""

import math

from torch import Tensor

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
    i = start_index(len(sigmas) - 1, strength)
    sigmas = sigmas[i:]
    sigma = sigmas[0]
    if math.isinf(sigma):
        return noise.float().clone(), sigmas
    return (x0.float() + noise.float() * sigma.float()), sigmas
