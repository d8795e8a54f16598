"""Which schedule `recommended` means, per sampler, and `sigmas`: the one entry point that builds any named
schedule for a model.

Every schedule from σ = ∞ is ∞ followed by a finite part whose top σ is a parameter (`Spec.top`; None:
the table's largest finite σ, 2254.24 for SDXL-ZTSNR), with k-diffusion's count: `steps` model calls of
an Euler sampler. A finite start (`sigma_start`: generation's regime='sigma_max', or a model whose table has
no ∞) builds the same family from that σ instead. `recommended` is measured on trained witnesses in
benchmarks/defaults.py (benchmarks/results/defaults_study.md).
"""

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from . import schedules as S
from .denoisers import DiscreteVDenoiser

SIGMA_BUILDERS = {'karras': S.get_sigmas_karras, 'exponential': S.get_sigmas_exponential,
                  'polyexponential': S.get_sigmas_polyexponential, 'kl_optimal': S.get_sigmas_kl_optimal}
TABLE_BUILDERS = {'normal': S.get_sigmas_normal, 'simple': S.get_sigmas_simple,
                  'sgm_uniform': S.get_sigmas_sgm_uniform, 'beta': S.get_sigmas_beta,
                  'trailing': S.get_sigmas_trailing}
SCHEDULE_NAMES = ('native', *SIGMA_BUILDERS, *TABLE_BUILDERS)


@dataclass(frozen=True)
class Spec:
    """A schedule family with its finite part's top σ (None: the table's largest finite) and Karras ρ."""
    family: str
    top: Optional[float] = None
    rho: float = 7.
    scale: float = 1.              # native only: its first finite σ × scale, then t uniform from there to 0

    @property
    def label(self) -> str:
        if self.family == 'native':
            return 'native' if self.scale == 1 else f'native σ₁×{self.scale:g}'
        shape = f' ρ={self.rho:g}' if self.family == 'karras' else ''
        return f'{self.family}{shape} top={"table" if self.top is None else f"{self.top:g}"}'


# The package default (`noise_schedule='recommended'`), chosen on trained witnesses in benchmarks/defaults.py
# (benchmarks/results/defaults_study.md). Below KARRAS_FROM_STEPS: the native ramp (t uniform from the table's
# top; many small low-σ steps, which trained networks need); on a canvas wider than the model's its first finite
# σ is raised ×side/base_side (report §2.3: the σ that decides composition doubles per doubled side), the
# t-uniform ramp running from there. From KARRAS_FROM_STEPS on, Karras ρ=7 from the table's top (more steps at
# high σ: more unconditional spread at equal solid-prompt accuracy), except for the samplers that measured no
# better or worse with it (NATIVE_ALWAYS; the rows that decided it: benchmarks/README.md §3c).
KARRAS_FROM_STEPS = 28
NATIVE_ALWAYS = frozenset({'dpm_2_ancestral', 'dpmpp_sde', 'dpmpp_2m_sde', 'dpmpp_2s_ancestral'})


def recommended(sampler: Optional[str] = None, steps: int = 28, side: Optional[float] = None,
                base_side: Optional[float] = None) -> Spec:
    """The default schedule for `sampler` at `steps` on a side² canvas (pixels, √(w·h)) of a model meant for
    base_side² (None for either: the model's own canvas)."""
    scale = 1.
    if side is not None and base_side is not None:
        if not (side > 0 and base_side > 0):
            raise ValueError(f'side and base_side must be positive canvas sides in pixels, got {side}, {base_side}')
        scale = max(1., float(side) / float(base_side))
    if steps >= KARRAS_FROM_STEPS and sampler not in NATIVE_ALWAYS:
        return Spec('karras')
    return Spec('native', scale=scale)


def build(model: DiscreteVDenoiser, spec: Spec, steps: int, sigma_start: Optional[float] = None) -> Tensor:
    """`steps` model calls of `spec` from the model's ∞ (or its finite top, or from a finite sigma_start)."""
    if spec.family == 'native':
        if sigma_start is None and spec.scale != 1 and math.isinf(model.sigmas[-1]):
            top = model.get_sigmas(steps)[1].item() * spec.scale
            top = None if top >= model.sigma_max_finite.item() else top          # None: the table's top entry
            return S.get_sigmas_normal(steps, model.sigmas, top, device=model.sigmas.device)
        if sigma_start is None:
            return S.guard_final_step(model.get_sigmas(steps))
        t = torch.linspace(model.sigma_to_t(torch.tensor(sigma_start)).item(), 0, steps, device=model.sigmas.device)
        return S.guard_final_step(torch.cat([model.t_to_sigma(t), t.new_zeros([1])]))
    from_inf = sigma_start is None and math.isinf(model.sigmas[-1])
    top = model.sigma_max_finite.item()
    if sigma_start is not None:
        top = sigma_start
    elif from_inf and spec.top is not None:
        top = min(spec.top, top)                   # a canvas-scaled top beyond the table: the table's top
    kw = {'rho': spec.rho} if spec.family == 'karras' else {}
    if spec.family in TABLE_BUILDERS:
        return TABLE_BUILDERS[spec.family](steps, model.sigmas, top, prepend_inf=from_inf, **kw)
    return SIGMA_BUILDERS[spec.family](steps, model.sigmas[0].item(), top, prepend_inf=from_inf, **kw)


def sigmas(model: DiscreteVDenoiser, name: str, steps: int, *, sigma_start: Optional[float] = None,
           sampler: Optional[str] = None, side: Optional[float] = None, base_side: Optional[float] = None) -> Tensor:
    """The one schedule entry point: the named schedule of `steps` model calls from the model's top (∞ for a
    ZTSNR table, else its largest finite σ) or from a finite `sigma_start`, then 0. 'recommended' resolves for
    `sampler`, `steps` and the canvas side in pixels (√(w·h)) against the model's `base_side` (report §2.3;
    None for either: the model's own canvas). Used by `generate`, the integrations and the benchmarks."""
    if name not in SCHEDULE_NAMES + ('recommended',):
        raise ValueError(f'unknown schedule {name!r}; choose from {", ".join(SCHEDULE_NAMES)}, recommended')
    spec = recommended(sampler, steps, side, base_side) if name == 'recommended' else Spec(name)
    return build(model, spec, steps, sigma_start)


def replace_start(sigmas: Tensor, sigma_0: float) -> Tensor:
    """The same finite part from another start: the clamp regime replaces only the first σ (∞ → 20000)."""
    if not sigma_0 > sigmas[1]:
        raise ValueError(f'start {sigma_0} must exceed the first finite sigma {sigmas[1].item():.6g}')
    out = sigmas.clone()
    out[0] = sigma_0
    return out
