import math

import pytest
import torch

from kdiff_ztsnr import schedules as S


def test_sdxl_constants():
    sigmas = S.sigmas_from_alphas_cumprod(S.sdxl_alphas_cumprod())
    assert sigmas[0].item() == pytest.approx(0.029167, abs=1e-6)
    assert sigmas[-1].item() == pytest.approx(14.6146, abs=1e-4)


def test_zero_terminal_snr_rescale():
    ac = S.sdxl_alphas_cumprod()
    z = S.rescale_zero_terminal_snr(ac)
    assert z.dtype == torch.float64
    assert z[-1].item() == 0.
    assert z[0].item() == pytest.approx(ac[0].item(), rel=1e-12)
    assert (z[1:] < z[:-1]).all()
    sigmas = S.sigmas_from_alphas_cumprod(z)
    assert sigmas[-2].item() == pytest.approx(2254.24, abs=0.01)
    assert math.isinf(sigmas[-1].item()) and not torch.isnan(sigmas).any()


def test_rescale_is_affine_in_sqrt_alpha():
    # Lin et al.: √ᾱ' = (√ᾱ − √ᾱ_T)·√ᾱ_0/(√ᾱ_0 − √ᾱ_T): an affine map, so second differences scale exactly.
    ac = S.sdxl_alphas_cumprod()
    a, z = ac.sqrt(), S.rescale_zero_terminal_snr(ac).sqrt()
    scale = a[0] / (a[0] - a[-1])
    torch.testing.assert_close(z[:-1], (a[:-1] - a[-1]) * scale, rtol=1e-12, atol=1e-15)


def test_betas_endpoints():
    b = S.scaled_linear_betas()
    assert len(b) == 1000
    assert b[0].item() == pytest.approx(0.00085) and b[-1].item() == pytest.approx(0.012)


@pytest.mark.parametrize('builder', [S.get_sigmas_karras, S.get_sigmas_exponential, S.get_sigmas_polyexponential])
def test_builders_prepend_inf(builder):
    sigmas = builder(10, 0.0292, 2254.24)
    assert len(sigmas) == 11 and math.isinf(sigmas[0]) and sigmas[-1] == 0
    assert sigmas[1].item() == pytest.approx(2254.24, rel=1e-5)
    assert sigmas[-2].item() == pytest.approx(0.0292, rel=1e-5)
    S.validate_sigmas(sigmas)
    finite = builder(10, 0.0292, 14.6, prepend_inf=False)
    assert len(finite) == 11 and finite[0].item() == pytest.approx(14.6, rel=1e-5)


@pytest.mark.parametrize('builder', [S.get_sigmas_karras, S.get_sigmas_exponential, S.get_sigmas_polyexponential])
def test_builders_refuse_infinite_sigma_max(builder):
    with pytest.raises(ValueError, match='finite'):
        builder(10, 0.0292, math.inf)


def test_karras_matches_k_diffusion_when_finite():
    from k_diffusion.sampling import get_sigmas_karras
    torch.testing.assert_close(S.get_sigmas_karras(12, 0.03, 14.6, prepend_inf=False),
                               get_sigmas_karras(12, 0.03, 14.6), rtol=1e-6, atol=0)


@pytest.mark.parametrize('sigmas, match', [
    ([1., 2., 0.], 'strictly decreasing'),
    ([10., math.inf, 0.], 'only be the first'),
    ([math.inf, 5., math.inf, 0.], 'only be the first'),
    ([10., float('nan'), 0.], 'NaN'),
    ([10., 5., -1.], 'non-negative'),
    ([math.inf], 'at least one more'),
])
def test_validate_sigmas(sigmas, match):
    with pytest.raises(ValueError, match=match):
        S.validate_sigmas(torch.tensor(sigmas))


def test_resolution_rule():
    assert S.scale_sigma_for_resolution(14.6, 256, 128) == pytest.approx(29.2)
    assert math.isinf(S.scale_sigma_for_resolution(math.inf, 256, 128))
