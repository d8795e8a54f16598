import math

import pytest
import torch

from kdiff_ztsnr import schedule_policy as P
from kdiff_ztsnr import schedules as S


@pytest.mark.parametrize('kind', P.SCHEDULE_NAMES + ('recommended',))
def test_every_schedule_from_inf_has_n_model_calls(kind, exact, clamped):
    s = P.sigmas(exact, kind, 28, sampler='euler_ancestral')
    assert len(s) == 29 and math.isinf(s[0]) and s[-1] == 0
    S.validate_sigmas(s)
    finite = P.sigmas(exact, kind, 28, sigma_start=136.)           # regime='sigma_max'
    assert len(finite) == 29 and finite[0].item() == pytest.approx(136., rel=1e-4)
    S.validate_sigmas(finite)
    S.validate_sigmas(P.sigmas(clamped, kind, 28))                  # a table without ∞: its own top


def test_recommended_is_native_on_the_models_canvas_and_scales_its_first_sigma_with_the_side(exact):
    """Report §2.3: below KARRAS_FROM_STEPS (and always for NATIVE_ALWAYS) the default on the model's own canvas
    (or none given) is the native schedule bit for bit; on a canvas ×k wider its first finite σ is ×k, the rest
    t-uniform from there, never beyond the table's top. From KARRAS_FROM_STEPS: Karras ρ=7 from the table's top."""
    for sampler in ('euler', 'euler_ancestral', 'dpmpp_2m', 'dpmpp_2m_sde', 'dpmpp_sde', 'dpmpp_3m_sde', 'heun',
                    'dpm_2_ancestral'):
        for steps in (8, 12, 27, 28, 50):
            native = P.sigmas(exact, 'native', steps)
            got = P.sigmas(exact, 'recommended', steps, sampler=sampler)
            if steps >= P.KARRAS_FROM_STEPS and sampler not in P.NATIVE_ALWAYS:
                assert torch.equal(got, P.sigmas(exact, 'karras', steps))
                continue
            assert torch.equal(got, native)
            assert torch.equal(P.sigmas(exact, 'recommended', steps, sampler=sampler, side=512,
                                        base_side=1024), native)        # smaller canvas: native
            wide = P.sigmas(exact, 'recommended', steps, sampler=sampler, side=2048, base_side=1024)
            assert math.isinf(wide[0]) and wide[1].item() == pytest.approx(2 * native[1].item(), rel=1e-5)
            torch.testing.assert_close(wide, S.get_sigmas_normal(steps, exact.sigmas, wide[1].item()))
    huge = P.sigmas(exact, 'recommended', 12, side=1024 * 1000, base_side=1024)
    assert huge[1].item() == pytest.approx(exact.sigma_max_finite.item(), rel=1e-5)
    with pytest.raises(ValueError, match='positive'):
        P.recommended('euler', 28, side=0, base_side=1024)


def test_generate_resolves_recommended_for_its_canvas():
    """`generate` passes √(w·h) and the pipeline's base side: the embedded model (32) at 64×64 doubles σ₁."""
    from kdiff_ztsnr.generation.lookup import load_pipeline
    m = load_pipeline('embedded').denoiser()
    native = P.sigmas(m, 'native', 12)
    assert torch.equal(P.sigmas(m, 'recommended', 12, sampler='heun', side=32, base_side=32), native)
    assert P.sigmas(m, 'recommended', 12, side=64, base_side=32)[1].item() == pytest.approx(
        2 * native[1].item(), rel=1e-5)


def test_clamp_replaces_only_the_start(exact):
    s = P.sigmas(exact, 'karras', 28)
    c = P.replace_start(s, S.ZTSNR_CLAMP)
    assert c[0].item() == S.ZTSNR_CLAMP and torch.equal(c[1:], s[1:]) and math.isinf(s[0])
    with pytest.raises(ValueError, match='exceed'):
        P.replace_start(s, 100.)


def test_unknown_schedule_is_refused(exact):
    with pytest.raises(ValueError, match='unknown schedule'):
        P.sigmas(exact, 'karras2', 10)
