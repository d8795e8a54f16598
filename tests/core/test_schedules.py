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


# ---------------------------------------------------------------------------------------------- UI schedules from ∞

@pytest.fixture(scope='module')
def ztsnr_table():
    return S.sigmas_from_alphas_cumprod(S.ztsnr_alphas_cumprod())       # [1000], ∞ last


def model_t(sigmas, table):
    """Timesteps of finite sigmas by the wrapper's own (independent) sigma_to_t."""
    from kdiff_ztsnr.denoisers import DiscreteVDenoiser
    model = DiscreteVDenoiser(torch.nn.Identity(), S.ztsnr_alphas_cumprod())
    return model.sigma_to_t(sigmas).double()


TABLE_BUILDERS = [S.get_sigmas_normal, S.get_sigmas_sgm_uniform, S.get_sigmas_simple, S.get_sigmas_trailing,
                  S.get_sigmas_beta]


@pytest.mark.parametrize('n', [2, 10, 28])
@pytest.mark.parametrize('builder', TABLE_BUILDERS + ['kl', 'loglinear'])
def test_new_builders_count_model_calls(builder, n, ztsnr_table):
    """k-diffusion's convention, as karras/exponential: n model calls = ∞, n − 1 finite sigmas, 0."""
    if builder == 'kl':
        s = S.get_sigmas_kl_optimal(n, 0.0292, 2254.24)
    elif builder == 'loglinear':
        s = S.get_sigmas_loglinear(n, [2254.24, 100., 3., 0.0292])
    else:
        s = builder(n, ztsnr_table)
    assert len(s) == n + 1 and math.isinf(s[0]) and s[-1] == 0
    S.validate_sigmas(s)
    assert len(builder(n, ztsnr_table, prepend_inf=False) if callable(builder) else s) == n + 1


def test_normal_is_k_diffusions_discrete_schedule():
    """Finite: exactly k-diffusion's DiscreteSchedule.get_sigmas (t uniform from T−1 to 0) on SDXL's table."""
    from k_diffusion.external import DiscreteSchedule
    sdxl = S.sigmas_from_alphas_cumprod(S.sdxl_alphas_cumprod())
    want = DiscreteSchedule(sdxl.float(), quantize=False).get_sigmas(12)
    torch.testing.assert_close(S.get_sigmas_normal(12, sdxl, prepend_inf=False), want, rtol=1e-5, atol=0)


@pytest.mark.parametrize('top', [None, 300.])
def test_normal_and_sgm_uniform_are_uniform_in_t(top, ztsnr_table):
    t_top = 998. if top is None else model_t(torch.tensor([top]), ztsnr_table).item()
    normal = model_t(S.get_sigmas_normal(11, ztsnr_table, top)[1:-1], ztsnr_table)
    torch.testing.assert_close(normal, torch.linspace(t_top, 0, 10, dtype=torch.float64), atol=2e-3, rtol=0)
    sgm = model_t(S.get_sigmas_sgm_uniform(11, ztsnr_table, top)[1:-1], ztsnr_table)
    torch.testing.assert_close(sgm, t_top * (1 - torch.arange(10, dtype=torch.float64) / 10), atol=2e-3, rtol=0)


def test_simple_strides_table_entries(ztsnr_table):
    s = S.get_sigmas_simple(28, ztsnr_table)[1:-1]
    t = model_t(s, ztsnr_table)
    assert t[0].item() == pytest.approx(998, abs=1e-3)
    assert torch.allclose(t, t.round(), atol=1e-3)                       # table entries exactly
    assert set((-t.round().diff()).tolist()) <= {36., 37.}                # ⌊999/27⌋, ⌈999/27⌉
    torch.testing.assert_close(s.double(), ztsnr_table[t.round().long()], rtol=1e-6, atol=0)


@pytest.mark.parametrize('n', [10, 28])
def test_trailing_from_inf_is_diffusers_trailing_with_zero_snr(n, ztsnr_table):
    from diffusers import EulerDiscreteScheduler
    sched = EulerDiscreteScheduler(beta_start=S.SDXL_BETA_START, beta_end=S.SDXL_BETA_END, beta_schedule='scaled_linear',
                                   timestep_spacing='trailing', rescale_betas_zero_snr=True)
    sched.set_timesteps(n)
    mine = S.get_sigmas_trailing(n, ztsnr_table)
    assert sched.timesteps[0].item() == 999                               # diffusers' step 0 is t = 999: σ = ∞
    torch.testing.assert_close(model_t(mine[1:-1], ztsnr_table), sched.timesteps[1:].double(), atol=1e-3, rtol=0)
    torch.testing.assert_close(mine[1:-1], sched.sigmas[1:-1].float(), rtol=1e-4, atol=0)


@pytest.mark.parametrize('ab', [(0.6, 0.6), (0.5, 0.7)])
def test_beta_timesteps_are_beta_quantiles(ab, ztsnr_table):
    """The Beta(α, β) CDF of t_i/t_top is the equal grid 1 − i/m (Lee et al. 2024)."""
    from scipy.stats import beta
    s = S.get_sigmas_beta(28, ztsnr_table, alpha=ab[0], beta=ab[1])[1:-1]
    u = beta.cdf(model_t(s, ztsnr_table).numpy() / 998, *ab)
    assert u == pytest.approx(1 - torch.arange(27).numpy() / 27, abs=2e-5)


def test_kl_optimal_is_uniform_in_arctan_sigma():
    s = S.get_sigmas_kl_optimal(28, 0.0292, 2254.24).double()[1:-1]
    a = torch.atan(s)
    assert s[0].item() == pytest.approx(2254.24, rel=1e-6) and s[-1].item() == pytest.approx(0.0292, rel=1e-6)
    torch.testing.assert_close(a.diff(), torch.full((26,), (a[-1] - a[0]).item() / 26, dtype=torch.float64),
                               rtol=0, atol=1e-6)


def test_loglinear_keeps_the_list_and_interpolates_geometrically():
    sig = [2254.24, 300., 20., 1.5, 0.0292]
    torch.testing.assert_close(S.get_sigmas_loglinear(6, sig)[1:-1], torch.tensor(sig))
    twice = S.get_sigmas_loglinear(10, sig).double()[1:-1]                   # 9 points: midpoints in between
    torch.testing.assert_close(twice[::2].float(), torch.tensor(sig))
    torch.testing.assert_close(twice[1::2], (torch.tensor(sig[:-1]) * torch.tensor(sig[1:])).double().sqrt(),
                               rtol=1e-5, atol=0)


def test_table_builders_refuse_a_top_off_the_table(ztsnr_table):
    with pytest.raises(ValueError, match='outside the table'):
        S.get_sigmas_normal(10, ztsnr_table, 20000.)
