import math

import pytest
import torch

from kdiff_ztsnr import schedule_policy as P
from kdiff_ztsnr import schedules as S


@pytest.mark.parametrize('kind', P.SCHEDULE_NAMES + ('recommended',))
def test_every_schedule_from_inf_has_n_model_calls(kind, exact, clamped):
    s = P.sigmas_from_inf(exact, kind, 28, sampler='euler_ancestral')
    assert len(s) == 29 and math.isinf(s[0]) and s[-1] == 0
    S.validate_sigmas(s)
    finite = P.sigmas_from_inf(exact, kind, 28, sigma_start=136.)           # ztsnr='sigma_max'
    assert len(finite) == 29 and finite[0].item() == pytest.approx(136., rel=1e-4)
    S.validate_sigmas(finite)
    S.validate_sigmas(P.sigmas_from_inf(clamped, kind, 28))                  # a table without ∞: its own top


def test_recommended_resolves_per_sampler(exact):
    for sampler in ('euler', 'euler_ancestral', 'dpmpp_2m', 'dpmpp_2m_sde', 'dpmpp_sde', 'dpmpp_3m_sde', 'heun'):
        spec = P.recommended(sampler)
        torch.testing.assert_close(P.sigmas_from_inf(exact, 'recommended', 20, sampler=sampler),
                                   P.build(exact, spec, 20))
        if spec.top is not None and spec.family != 'native':
            assert P.build(exact, spec, 20)[1].item() == pytest.approx(spec.top, rel=1e-4)


def test_clamp_replaces_only_the_start(exact):
    s = P.sigmas_from_inf(exact, 'karras', 28)
    c = P.replace_start(s, S.ZTSNR_CLAMP)
    assert c[0].item() == S.ZTSNR_CLAMP and torch.equal(c[1:], s[1:]) and math.isinf(s[0])
    with pytest.raises(ValueError, match='exceed'):
        P.replace_start(s, 100.)


def test_unknown_schedule_is_refused(exact):
    with pytest.raises(ValueError, match='unknown schedule'):
        P.sigmas_from_inf(exact, 'karras2', 10)
