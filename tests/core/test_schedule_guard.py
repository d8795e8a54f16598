"""Guard rails of the schedule builders: no schedule the package builds puts all low-σ work in its last step."""

import math

import pytest
import torch

from kdiff_ztsnr import schedule_policy as P
from kdiff_ztsnr import schedules as S
from kdiff_ztsnr.generation.params import SAMPLER_NAMES


def finite_log_steps(sigmas: torch.Tensor) -> torch.Tensor:
    f = sigmas[torch.isfinite(sigmas) & (sigmas > 0)].double().log()
    return f[:-1] - f[1:]


@pytest.mark.parametrize('kind', P.SCHEDULE_NAMES + ('recommended',))
def test_no_schedule_ends_in_one_wide_low_sigma_step(kind, exact):
    """Every name × sampler × steps 2…100 (× three canvases for 'recommended'): steps+1 strictly decreasing sigmas
    from ∞ to 0, and the final finite step spans no more log σ than all finite steps before it together."""
    sides = (8, 32, 128) if kind == 'recommended' else (None,)
    # only 'recommended' reads the sampler; the named schedules are built once (checked below that it is so)
    samplers = SAMPLER_NAMES if kind == 'recommended' else SAMPLER_NAMES[:1]
    for n in (3, 12) if kind != 'recommended' else ():
        assert torch.equal(P.sigmas(exact, kind, n, sampler='euler', side=32),
                           P.sigmas(exact, kind, n, sampler='dpmpp_2m_sde', side=32))
    seen = set()
    for sampler in samplers:
        for steps in range(2, 101):
            for side in sides:
                s = P.sigmas(exact, kind, steps, sampler=sampler, side=side)
                key = tuple(s.tolist())
                if key in seen:
                    continue
                seen.add(key)
                assert len(s) == steps + 1 and math.isinf(s[0]) and s[-1] == 0, (kind, steps)
                S.validate_sigmas(s)
                h = finite_log_steps(s)
                if len(h) >= 2:
                    assert h[-1] <= h[:-1].sum() * (1 + 1e-5), (kind, sampler, steps, side, s.tolist())


def test_guard_moves_only_the_start_of_a_wide_final_step():
    """The issue's shape [∞, 1000, …, 41.7, 11.0, 0.029, 0]: 11.0 moves to √(1000·0.029); a schedule that
    already passes is returned unchanged (the same tensor)."""
    bad = torch.tensor([math.inf, 1000., 500., 41.7, 11.0, 0.0292, 0.])
    fixed = S.guard_final_step(bad)
    assert fixed[4].item() == pytest.approx(math.sqrt(1000. * 0.0292), rel=1e-6)
    assert torch.equal(fixed[[0, 1, 2, 3, 5, 6]], bad[[0, 1, 2, 3, 5, 6]])
    assert S.final_step_share(bad) > 0.5 and S.final_step_share(fixed) == pytest.approx(0.5, abs=1e-6)
    good = S.get_sigmas_karras(28, 0.0292, 2254.24)
    assert S.guard_final_step(good) is good
    one_step = torch.tensor([math.inf, 2254., 0.0292, 0.])          # one finite step: nothing to spread it over
    assert S.guard_final_step(one_step) is one_step


def test_karras_rho7_from_the_table_is_unchanged_from_8_steps(exact):
    """The guard does not touch the common schedules at ordinary step counts (k-diffusion's Karras ρ=7)."""
    from k_diffusion.sampling import get_sigmas_karras
    for n in (8, 12, 28, 50):
        torch.testing.assert_close(S.get_sigmas_karras(n, 0.0292, 14.6, prepend_inf=False),
                                   get_sigmas_karras(n, 0.0292, 14.6), rtol=1e-6, atol=0)
