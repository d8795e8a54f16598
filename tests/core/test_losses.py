"""Tests for kdiff_ztsnr.losses: MinSNR-γ (v form) on the rescaled schedule, t = T−1 included (report §2.2)."""

import math

import pytest
import torch

from kdiff_ztsnr import DiscreteVDenoiser, schedules
from kdiff_ztsnr.losses import min_snr_weight, sample_timesteps, v_loss


class TinyV(torch.nn.Module):
    """A v network (x_in, t) -> v with every parameter used at every t."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
        self.emb = torch.nn.Linear(1, 3)

    def forward(self, x, t):
        return self.conv(x) + self.emb(t.float()[:, None] / 999)[:, :, None, None]


@pytest.fixture(scope='module')
def model(ztsnr_ac):
    torch.manual_seed(0)
    return DiscreteVDenoiser(TinyV(), ztsnr_ac)


@pytest.mark.parametrize('snr,gamma,expected', [
    (1., 5., 0.5),                 # min(1, 5)/2
    (5., 5., 5 / 6),               # the peak γ/(γ+1)
    (10., 5., 5 / 11),             # clipped: γ/(SNR+1)
    (0.25, 5., 0.2),               # 0.25/1.25
    (4., 1., 0.2),                 # γ = 1: 1/5
    (math.inf, 5., 0.),            # σ = 0
])
def test_min_snr_weight_analytic(snr, gamma, expected):
    w = min_snr_weight(torch.tensor([snr], dtype=torch.float64), gamma)
    assert w.item() == pytest.approx(expected, rel=1e-12)


def test_terminal_weight_rule():
    snr = torch.tensor([0., 0., 1e-7])
    assert min_snr_weight(snr).tolist()[:2] == [1., 1.]                   # default: the Min-SNR code's 1
    assert min_snr_weight(snr, terminal_weight=0.5)[0].item() == 0.5
    assert min_snr_weight(snr, terminal_weight=0.)[0].item() == 0.        # the plain formula
    assert min_snr_weight(snr)[2].item() == pytest.approx(1e-7 / (1 + 1e-7), rel=1e-6)  # continuous elsewhere


def test_weight_uses_rescaled_snr(model, ztsnr_ac):
    """At t=999 the ZTSNR SNR is 0 (terminal weight); t=998 is ≈2e-7; un-rescaled SDXL would give ≈4.7e-3."""
    sigma = model.t_to_sigma(torch.tensor([999, 998]))
    assert math.isinf(sigma[0]) and sigma[1].item() == pytest.approx(2254.24, rel=1e-4)
    w = min_snr_weight(schedules.snr(sigma.double()))
    assert w[0].item() == 1.
    assert w[1].item() == pytest.approx(1 / 2254.24 ** 2, rel=1e-3)
    sdxl = schedules.sigmas_from_alphas_cumprod(schedules.sdxl_alphas_cumprod())[999]
    w_sdxl = min_snr_weight(schedules.snr(sdxl.reshape(1)))
    assert w_sdxl.item() == pytest.approx((1 / 14.6146 ** 2) / (1 + 1 / 14.6146 ** 2), rel=1e-4)


def test_sample_timesteps_covers_all_including_terminal():
    g = torch.Generator().manual_seed(0)
    t = sample_timesteps(200_000, generator=g)
    assert t.dtype == torch.int64 and t.min() == 0 and t.max() == 999
    counts = torch.bincount(t, minlength=1000).double()
    chi2 = ((counts - 200.) ** 2 / 200.).sum().item()              # 999 dof: mean 999, sd ≈ 44.7
    assert 999 - 6 * 44.7 < chi2 < 999 + 6 * 44.7
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(sample_timesteps(8, generator=g1), sample_timesteps(8, generator=g2))


def test_terminal_loss_finite_and_equals_wrapper(model):
    torch.manual_seed(1)
    x0, noise = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    t = torch.tensor([999, 0, 500, 999])
    loss = v_loss(model, x0, noise, t)
    assert torch.isfinite(loss).all()
    inf = torch.full([4], math.inf)
    plain = model.loss(x0, noise, inf)
    assert torch.isfinite(plain).all()
    assert torch.allclose(loss[[0, 3]], plain[[0, 3]], rtol=0, atol=0)   # terminal weight 1
    # at σ=∞ the network sees the noise at t=999 and the target is −x0 (σ_data = 1)
    v = model.inner_model(noise, torch.full([4], 999.))
    assert torch.allclose(plain, (v + x0).pow(2).flatten(1).mean(1), atol=1e-6)


def test_v_loss_weights_combine(model):
    torch.manual_seed(2)
    x0, noise = torch.randn(3, 3, 8, 8), torch.randn(3, 3, 8, 8)
    t = torch.tensor([100, 600, 999])
    sigma = model.t_to_sigma(t)
    raw = model.loss(x0, noise, sigma)
    w_snr = min_snr_weight(schedules.snr(sigma.double()), 5.)
    tag_w = torch.tensor([0.5, 2., 1.5])
    got = v_loss(model, x0, noise, t, gamma=5., weight=tag_w)
    assert torch.allclose(got, raw * w_snr.float() * tag_w, rtol=1e-6)
    assert torch.allclose(v_loss(model, x0, noise, t, gamma=None), raw)
    assert got[2].item() == pytest.approx(raw[2].item() * 1.5, rel=1e-6)


def test_terminal_gradients_finite(model):
    x0, noise = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    model.zero_grad()
    v_loss(model, x0, noise, torch.tensor([999, 999])).sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
