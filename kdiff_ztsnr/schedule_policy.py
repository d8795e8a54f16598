"""Which schedule `recommended` means, per sampler, and building any named schedule for a model (issue #11).

Every schedule from σ = ∞ is ∞ followed by a finite part whose top σ is a parameter (`Spec.top`; None:
the table's largest finite σ, 2254.24 for SDXL-ZTSNR), with k-diffusion's count: `steps` model calls of
an Euler sampler. A finite start (ztsnr='sigma_max', or a model whose table has no ∞) builds the same family
from that σ instead. The choice of `RECOMMENDED` is measured in benchmarks/schedule_study.py
(benchmarks/results/schedules_study.md).
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

    @property
    def label(self) -> str:
        shape = f' ρ={self.rho:g}' if self.family == 'karras' else ''
        return f'{self.family}{shape} top={"table" if self.top is None else f"{self.top:g}"}'


# The package default per sampler (`noise_schedule='recommended'`), chosen on the train subjects of
# benchmarks/schedule_study.py at 28 steps (worst statistic / perfect-sampler p90, mean over 2 noises; held-out
# subjects reported, not used): a low-ρ Karras ramp from 1000 for the ODE samplers and euler_ancestral
# (euler 1.39 vs 1.82 for the former default Karras ρ=7 from 2254.24; euler_ancestral 1.76 vs 3.13, still
# above the floor: no schedule searched reaches it), and Karras ρ=7 from 500 for the SDE samplers (0.61–0.84).
RECOMMENDED_DEFAULT = Spec('karras', 1000., 2.)
RECOMMENDED: dict = {name: Spec('karras', 500., 7.) for name in ('dpmpp_sde', 'dpmpp_2m_sde', 'dpmpp_3m_sde')}


def recommended(sampler: Optional[str] = None) -> Spec:
    return RECOMMENDED.get(sampler, RECOMMENDED_DEFAULT)


def build(model: DiscreteVDenoiser, spec: Spec, steps: int, sigma_start: Optional[float] = None) -> Tensor:
    """`steps` model calls of `spec` from the model's ∞ (or its finite top, or from a finite sigma_start)."""
    if spec.family == 'native':
        if sigma_start is None:
            return model.get_sigmas(steps)
        t = torch.linspace(model.sigma_to_t(torch.tensor(sigma_start)).item(), 0, steps, device=model.sigmas.device)
        return torch.cat([model.t_to_sigma(t), t.new_zeros([1])])
    from_inf = sigma_start is None and math.isinf(model.sigmas[-1])
    top = sigma_start if sigma_start is not None else spec.top if from_inf and spec.top is not None else \
        model.sigma_max_finite.item()
    kw = {'rho': spec.rho} if spec.family == 'karras' else {}
    if spec.family in TABLE_BUILDERS:
        return TABLE_BUILDERS[spec.family](steps, model.sigmas, top, prepend_inf=from_inf, **kw)
    return SIGMA_BUILDERS[spec.family](steps, model.sigmas[0].item(), top, prepend_inf=from_inf, **kw)


def sigmas_from_inf(model: DiscreteVDenoiser, kind: str, steps: int, sigma_start: Optional[float] = None,
                    sampler: Optional[str] = None) -> Tensor:
    """The named schedule ('recommended' resolves per sampler) for `steps` model calls."""
    spec = recommended(sampler) if kind == 'recommended' else Spec(kind)
    if kind not in SCHEDULE_NAMES + ('recommended',):
        raise ValueError(f'unknown schedule {kind!r}; choose from {", ".join(SCHEDULE_NAMES)}, recommended')
    return build(model, spec, steps, sigma_start)


def replace_start(sigmas: Tensor, sigma_0: float) -> Tensor:
    """The same finite part from another start: the clamp regime replaces only the first σ (∞ → 20000)."""
    if not sigma_0 > sigmas[1]:
        raise ValueError(f'start {sigma_0} must exceed the first finite sigma {sigmas[1].item():.6g}')
    out = sigmas.clone()
    out[0] = sigma_0
    return out
