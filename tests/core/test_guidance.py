import math

import pytest
import torch

from kdiff_ztsnr import CFGDenoiser, DiscreteVDenoiser
from kdiff_ztsnr import guidance as G
from kdiff_ztsnr import sampling as S

INF = math.inf


class CondNet(torch.nn.Module):
    """v network whose output depends linearly on a per-sample condition vector; counts forwards."""

    def __init__(self):
        super().__init__()
        self.calls, self.batch = 0, []

    def forward(self, x, t, cond=None, **kwargs):
        self.calls += 1
        self.batch.append(x.shape[0])
        return 0.5 * x + cond.view(-1, 1, 1, 1)


@pytest.fixture
def wrapped(ztsnr_ac):
    net = CondNet()
    return net, DiscreteVDenoiser(net, ztsnr_ac)


@pytest.mark.parametrize('sigma', [INF, 20000., 3., 0.1])
def test_cfg_one_batched_forward_and_formula(wrapped, sigma):
    net, model = wrapped
    x, s = torch.randn(2, 3, 4, 4), torch.full([2], sigma)
    c, u = torch.tensor([1., 2.]), torch.tensor([0., -1.])
    cfg = CFGDenoiser(model, cond_scale=5.)
    out = cfg(x, s, cond=c, uncond=u)
    assert net.calls == 1 and net.batch == [4]
    d_c, d_u = model(x, s, cond=c), model(x, s, cond=u)
    torch.testing.assert_close(out, d_u + 5. * (d_c - d_u))
    assert torch.isfinite(out).all()


def test_v_round_trip_including_infinity():
    x, d = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    sigma = torch.tensor([INF, 20000., 0.7])
    v = G.v_from_denoised(x, d, sigma, sigma_data=0.5)
    torch.testing.assert_close(G.denoised_from_v(x, v, sigma, 0.5), d, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(v[0], -d[0] / 0.5)


def test_cfg_rescale(wrapped):
    net, model = wrapped
    x, c, u = torch.randn(2, 3, 8, 8), torch.tensor([3., 2.]), torch.tensor([0., 0.])
    for sigma in (INF, 20000., 2.):
        s = torch.full([2], sigma)
        full = CFGDenoiser(model, 7., rescale=1.)(x, s, cond=c, uncond=u)
        plain = CFGDenoiser(model, 7.)(x, s, cond=c, uncond=u)
        v_full, v_c = G.v_from_denoised(x, full, s), G.v_from_denoised(x, model(x, s, cond=c), s)
        # φ = 1: the guided v has exactly the conditional v's per-sample std (Lin et al. eq. 15)
        torch.testing.assert_close(v_full.flatten(1).std(1), v_c.flatten(1).std(1), rtol=1e-4, atol=1e-4)
        half = CFGDenoiser(model, 7., rescale=0.5)(x, s, cond=c, uncond=u)
        torch.testing.assert_close(G.v_from_denoised(x, half, s),
                                   0.5 * v_full + 0.5 * G.v_from_denoised(x, plain, s), rtol=1e-4, atol=1e-3)


def test_rescale_formula():
    v_cfg, v_cond = torch.randn(2, 10) * 3, torch.randn(2, 10)
    out = G.rescale_cfg(v_cfg, v_cond, 0.7)
    ratio = v_cond.std(1, keepdim=True) / v_cfg.std(1, keepdim=True)
    torch.testing.assert_close(out, 0.7 * v_cfg * ratio + 0.3 * v_cfg)


def test_sigma_range_skips_guidance(wrapped):
    net, model = wrapped
    cfg = CFGDenoiser(model, 5., sigma_range=(0., 100.))
    x, c, u = torch.randn(2, 3, 4, 4), torch.tensor([1., 2.]), torch.tensor([0., 0.])
    out = cfg(x, torch.full([2], INF), cond=c, uncond=u)
    assert net.batch == [2]                                   # conditional only, one half-size forward
    torch.testing.assert_close(out, model(x, torch.full([2], INF), cond=c))
    cfg(x, torch.full([2], 50.), cond=c, uncond=u)
    assert net.batch[-1] == 4


def test_dynamic_threshold():
    d = torch.tensor([[0.5, -3., 2., 0.1]]).view(1, 1, 2, 2)
    out = G.dynamic_threshold(d, percentile=1.0)
    torch.testing.assert_close(out, d / 3.)                   # s = max|x| = 3: scaled into [-1, 1]
    small = torch.tensor([[0.5, -0.2, 0.1, 0.]]).view(1, 1, 2, 2)
    torch.testing.assert_close(G.dynamic_threshold(small, 0.99), small)   # s clamps to 1: unchanged


def test_dict_conditioning_and_sampling_from_infinity(ztsnr_ac):
    class DictNet(torch.nn.Module):
        def forward(self, x, t, context=None, pooled=None):
            return 0.5 * x + context.mean((1, 2)).view(-1, 1, 1, 1) + pooled.mean(1).view(-1, 1, 1, 1)
    model = DiscreteVDenoiser(DictNet(), ztsnr_ac)
    cfg = CFGDenoiser(model, 4., rescale=0.7, cond_key=None, threshold=0.995)
    cond = {'context': torch.randn(2, 77, 8), 'pooled': torch.randn(2, 8)}
    uncond = {'context': torch.zeros(2, 77, 8), 'pooled': torch.zeros(2, 8)}
    out = S.sample_dpmpp_2m(cfg, torch.randn(2, 3, 4, 4), model.get_sigmas(8),
                            extra_args={'cond': cond, 'uncond': uncond}, disable=True)
    assert torch.isfinite(out).all()


def test_cat_cond_rejects_unknown():
    with pytest.raises(TypeError, match='cannot batch'):
        G.cat_cond('a', 'b')
