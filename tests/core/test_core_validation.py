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
