"""Core modules refuse user-caused NaN up front instead of blaming the model: CFG settings, η, x at σ=∞,
ᾱ tables, conditioning keys, prompt emphasis."""

import math

import pytest
import torch

from kdiff_ztsnr import DiscreteVDenoiser, CFGDenoiser, schedules
from kdiff_ztsnr.sampling import sample_euler, sample_euler_ancestral
from kdiff_ztsnr.text.tokens import parse_emphasis


class Net(torch.nn.Module):
    def forward(self, x, t, **kw):
        return torch.zeros_like(x)


@pytest.fixture
def model(ztsnr_ac):
    return DiscreteVDenoiser(Net(), ztsnr_ac)


@pytest.mark.parametrize('kwargs, match', [
    ({'cond_scale': math.nan}, 'cond_scale must be a finite number'),
    ({'cond_scale': math.inf}, 'cond_scale must be a finite number'),
    ({'rescale': math.nan}, r'rescale must be in \[0, 1\]'),
    ({'rescale': 1.5}, r'rescale must be in \[0, 1\]'),
    ({'sigma_range': (10., 1.)}, 'sigma_range must be'),
    ({'threshold': 2.}, 'threshold must be'),
])
def test_cfg_settings(model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        CFGDenoiser(model, **kwargs)


def test_cfg_uncond_keys(model):
    g = CFGDenoiser(model, cond_key=None)
    x = torch.randn(1, 4, 8, 8)
    with pytest.raises(ValueError, match=r"same keys, got \['a', 'cond'\] and \['a'\]"):
        g(x, torch.ones(1), cond={'a': torch.ones(1), 'cond': torch.ones(1)}, uncond={'a': torch.ones(1)})


def test_eta_and_unit_noise(model):
    sigmas = model.get_sigmas(4)
    x = torch.randn(1, 4, 8, 8)
    with pytest.raises(ValueError, match='eta must be a finite number >= 0, got -3'):
        sample_euler_ancestral(model, x, sigmas, eta=-3., disable=True)
    with pytest.raises(ValueError, match='eta must be a finite number >= 0, got nan'):
        sample_euler_ancestral(model, x, sigmas, eta=math.nan, disable=True)
    for scaled in (x * sigmas[0], x * 20000.):
        with pytest.raises(ValueError, match='at σ=∞ x must be unit-variance noise, not noise·σ₀'):
            sample_euler(model, scaled, sigmas, disable=True)
    assert torch.isfinite(sample_euler(model, x, sigmas, disable=True)).all()


def test_alphas_cumprod_tables(ztsnr_ac):
    for table, match in [(ztsnr_ac.half(), 'float32 or float64'),
                         (schedules.sdxl_alphas_cumprod().flip(0), 'non-increasing'),
                         (torch.where(torch.arange(1000) == 5, math.nan, ztsnr_ac), 'NaN'),
                         (ztsnr_ac * 1.5, r'in \[0, 1\]')]:
        with pytest.raises(ValueError, match=match):
            DiscreteVDenoiser(Net(), table)


def test_infinity_needs_a_ztsnr_table():
    m = DiscreteVDenoiser(Net(), schedules.sdxl_alphas_cumprod())
    with pytest.raises(ValueError, match='σ=∞ needs a zero-terminal-SNR'):
        sample_euler(m, torch.randn(1, 4, 8, 8), torch.tensor([math.inf, 10., 1., 0.]), disable=True)
    assert torch.isfinite(sample_euler(m, torch.randn(1, 4, 8, 8) * 14.6, m.get_sigmas(3), disable=True)).all()


def test_emphasis_weights_bounded():
    with pytest.raises(ValueError, match='weights must be finite and at most 100'):
        parse_emphasis('(' * 5000 + 'cat')
    with pytest.raises(ValueError, match="'cat' the weight 1e\\+03"):
        parse_emphasis('(cat:1000)')
    assert parse_emphasis('((cat))') == [('cat', pytest.approx(1.21))]


class WrongBatch(torch.nn.Module):
    def forward(self, x, t, **kw):
        return torch.zeros_like(x[:1])


class WrongDtype(torch.nn.Module):
    def forward(self, x, t, **kw):
        return torch.zeros_like(x).double()


@pytest.mark.parametrize('sampler', [sample_euler, sample_euler_ancestral])
@pytest.mark.parametrize('start', [math.inf, 14.6])
def test_denoiser_output_shape_and_dtype_checked(ztsnr_ac, sampler, start):
    """A denoiser returning one item for a batch of 2 (broadcast silently by x + d·dt) or another dtype."""
    sigmas = torch.tensor([start, 10., 1., 0.])
    for net, match in [(WrongBatch(), r'\(2, 4, 8, 8\) torch.float32\), got \(1, 4, 8, 8\)'),
                       (WrongDtype(), 'got .* torch.float64')]:
        model = DiscreteVDenoiser(net, ztsnr_ac)
        model.forward = lambda x, s, net=net, **kw: net(x, s)            # the raw network output, unscaled
        with pytest.raises(ValueError, match=match):
            sampler(model, torch.randn(2, 4, 8, 8), sigmas, disable=True)
    with pytest.raises(ValueError, match=r'v of the shape of its input \(2, 4, 8, 8\), got \(1, 4, 8, 8\)'):
        sampler(DiscreteVDenoiser(WrongBatch(), ztsnr_ac), torch.randn(2, 4, 8, 8), sigmas, disable=True)


@pytest.mark.parametrize('x, match', [
    (torch.zeros(0, 4, 8, 8), r'empty batch \(shape \(0, 4, 8, 8\)\)'),
    (torch.zeros(2, 4, 0, 8), 'empty batch'),
    (torch.randint(0, 3, (1, 4, 8, 8)), 'floating-point tensor, got torch.int64'),
    (torch.ones(1, 4, 8, 8, dtype=torch.bool), 'floating-point tensor, got torch.bool'),
])
def test_sampler_state_checked(model, x, match):
    for sigmas in (torch.tensor([math.inf, 10., 0.]), torch.tensor([10., 1., 0.])):
        with pytest.raises(ValueError, match=match):
            sample_euler(model, x, sigmas, disable=True)


def test_img2img_noise_checked():
    from kdiff_ztsnr.img2img import img2img_start
    x0, sigmas = torch.zeros(1, 4, 8, 8), torch.tensor([math.inf, 10., 1., 0.])
    with pytest.raises(ValueError, match='noise must be a floating-point tensor'):
        img2img_start(x0, torch.ones(1, 4, 8, 8, dtype=torch.int32), sigmas, 0.5)
    with pytest.raises(ValueError, match=r'shape of x0 \(\(1, 4, 8, 8\)\), got \(2, 4, 8, 8\)'):
        img2img_start(x0, torch.ones(2, 4, 8, 8), sigmas, 0.5)
    x, s = img2img_start(x0, torch.ones(1, 4, 8, 8), sigmas, 2 / 3)
    assert s[0] == 10. and torch.equal(x, torch.full_like(x0, 10.))


@pytest.mark.parametrize('sigma', [-1., math.nan, -math.inf, -1e-30])
def test_sigma_to_t_outside_the_range_raises(model, sigma):
    from kdiff_ztsnr.denoisers import VDenoiser
    for m in (model, VDenoiser(Net())):
        with pytest.raises(ValueError, match=r'sigma must be in \[0, inf\]'):
            m.sigma_to_t(torch.tensor([1., sigma]))


def test_sigma_to_t_range_ends(model):
    """[0, ∞] inclusive: σ = 0 is t = 0 (clamped to the table), σ = ∞ is the terminal t = T − 1."""
    from kdiff_ztsnr.denoisers import VDenoiser
    assert model.sigma_to_t(torch.tensor([0., math.inf])).tolist() == [0., 999.]
    assert VDenoiser(Net()).sigma_to_t(torch.tensor([0., math.inf])).tolist() == [0., 1.]


@pytest.mark.parametrize('sigma_data', [0., -1., math.nan, math.inf, 1e-300, 1e30, True, '1'])
def test_sigma_data_must_be_positive(ztsnr_ac, sigma_data):
    from kdiff_ztsnr.denoisers import VDenoiser
    for build in (lambda: DiscreteVDenoiser(Net(), ztsnr_ac, sigma_data=sigma_data),
                  lambda: VDenoiser(Net(), sigma_data=sigma_data)):
        with pytest.raises(ValueError, match='sigma_data must be a positive finite number'):
            build()
    assert DiscreteVDenoiser(Net(), ztsnr_ac, sigma_data=1e-18).sigma_data == 1e-18
