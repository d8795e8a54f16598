"""Generation parameters and their validation, without importing torch (the command line builds on this).

Parameters use the NovelAI metadata keys (prompt, uc, steps, scale, cfg_rescale, seed, sampler,
noise_schedule, …) so that a PNG's metadata is a complete, re-runnable description of the image.
"""

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Optional

SCHEDULES = ('native', 'karras', 'exponential', 'polyexponential', 'recommended')
REGIMES = ('exact', 'clamp', 'sigma_max')
# k-diffusion's samplers that take a schedule (a test checks this list against kdiff_ztsnr.sampling.SAMPLERS);
# dpm_fast / dpm_adaptive take (σ_min, σ_max) instead and refuse σ_max = ∞.
SAMPLER_NAMES = ('dpm_2', 'dpm_2_ancestral', 'dpmpp_2m', 'dpmpp_2m_sde', 'dpmpp_2s_ancestral', 'dpmpp_3m_sde',
                 'dpmpp_sde', 'euler', 'euler_ancestral', 'heun', 'lms')


@dataclass
class GenerationParams:
    prompt: str = ''
    uc: str = ''                       # negative prompt
    steps: int = 28
    scale: float = 5.                  # CFG scale
    cfg_rescale: float = 0.            # CFG rescale φ
    seed: int = 0                      # sample i uses seed + i
    n_samples: int = 1
    width: int = 32
    height: int = 32
    sampler: str = 'euler_ancestral'
    noise_schedule: str = 'recommended'
    ztsnr: str = 'exact'               # 'exact' from ∞ | 'clamp' at 20000 | 'sigma_max' (finite start)
    sigma_max: Optional[float] = None  # the finite start for ztsnr='sigma_max', before resolution scaling
    resolution_aware: bool = True      # scale a finite σ_max ×2 per ×2 canvas side (report §2.3)
    strength: float = 1.               # img2img strength (1: text-to-image)
    eta: Optional[float] = None        # ancestral/SDE η (None: the sampler's default)
    model: str = 'embedded'
    loras: list = field(default_factory=list)  # [[file, weight], …]: LoRAs applied to the model when it is loaded

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> 'GenerationParams':
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def check_params(p: GenerationParams, size_multiple: int = 1, name: str = 'the model') -> None:
    """One clear error per bad parameter."""
    m = size_multiple
    if p.width % m or p.height % m or p.width <= 0 or p.height <= 0:
        raise ValueError(f'width and height must be positive multiples of {m} for {name}, '
                         f'got {p.width}x{p.height}')
    if p.sampler not in SAMPLER_NAMES:
        raise ValueError(f'unknown sampler {p.sampler!r}; choose from {", ".join(SAMPLER_NAMES)}')
    if p.noise_schedule not in SCHEDULES:
        raise ValueError(f'unknown noise schedule {p.noise_schedule!r}; choose from {", ".join(SCHEDULES)}')
    if p.ztsnr not in REGIMES:
        raise ValueError(f'unknown ZTSNR regime {p.ztsnr!r}; choose from {", ".join(REGIMES)}')
    if p.ztsnr == 'sigma_max' and not (p.sigma_max and p.sigma_max > 0 and math.isfinite(p.sigma_max)):
        raise ValueError(f'ztsnr="sigma_max" needs a finite positive sigma_max, got {p.sigma_max}')
    if p.steps < 1 or p.n_samples < 1:
        raise ValueError('steps and n_samples must be at least 1')
