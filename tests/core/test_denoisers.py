import math

import pytest
import torch
from k_diffusion import external

from kdiff_ztsnr import CompVisVDenoiser, DiscreteVDenoiser, VDenoiser, schedules, v_scalings
from tests.helpers import OracleDenoiser

INF = math.inf


class Recorder(torch.nn.Module):
    """A v network that records its inputs and returns a fixed function of them."""

    def __init__(self, dtype=torch.float32):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones([], dtype=dtype))
        self.seen = []

    def forward(self, x, t, **kwargs):
        self.seen.append((x.detach().clone(), t.detach().clone()))
        return (x * self.w * 0.5).to(self.w.dtype)


def test_scalings_limits_and_finite_values():
    c_skip, c_out, c_in = v_scalings(torch.tensor([INF, 0., 2.]), sigma_data=0.5)
    assert c_skip.tolist()[0] == 0 and c_out[0].item() == -0.5 and c_in[0].item() == 1.   # eq. 13-14, bypass
    assert c_skip[1].item() == 1 and c_out[1].item() == 0                               # σ = 0: identity
    s, sd = 2., 0.5
    assert c_skip[2].item() == pytest.approx(sd ** 2 / (s ** 2 + sd ** 2))
    assert c_out[2].item() == pytest.approx(-s * sd / (s ** 2 + sd ** 2) ** 0.5)
    assert c_in[2].item() == pytest.approx(1 / (s ** 2 + sd ** 2) ** 0.5)


def test_sigma_to_t_endpoints(ztsnr_ac):
    for quantize in (False, True):
        m = DiscreteVDenoiser(Recorder(), ztsnr_ac, quantize=quantize)
        assert m.sigma_to_t(torch.tensor([INF])).item() == 999
        assert m.sigma_to_t(m.sigmas[:1]).item() == 0
    m = DiscreteVDenoiser(Recorder(), ztsnr_ac)
    assert math.isinf(m.t_to_sigma(torch.tensor(999.)).item())
    assert m.t_to_sigma(torch.tensor(998.)).item() == pytest.approx(2254.24, abs=0.01)


def test_top_interval_strictly_monotone(ztsnr_ac):
    m = DiscreteVDenoiser(Recorder(), ztsnr_ac)
    sigma = torch.tensor([2260., 2500., 3000., 4518.76, 1e4, 1e5, 1e6, INF])
    t = m.sigma_to_t(sigma)
    assert (t[1:] > t[:-1]).all() and (t > 998).all() and t[-1] == 999
    torch.testing.assert_close(m.t_to_sigma(t[:-1]), sigma[:-1], rtol=2e-3, atol=0)   # round trip


def test_t_sigma_round_trip_below_top(ztsnr_ac):
    m = DiscreteVDenoiser(Recorder(), ztsnr_ac)
    t = torch.linspace(0, 998, 997)
    torch.testing.assert_close(m.sigma_to_t(m.t_to_sigma(t)), t, rtol=0, atol=2e-3)


def test_matches_k_diffusion_below_top(ztsnr_ac):
    ours = DiscreteVDenoiser(Recorder(), ztsnr_ac)
    sdxl = schedules.sdxl_alphas_cumprod()
    kd = external.DiscreteVDDPMDenoiser(Recorder(), sdxl.float(), quantize=False)
    ours_sdxl = DiscreteVDenoiser(Recorder(), sdxl)
    sigma = torch.tensor([0.03, 0.5, 1., 7., 14.])
    torch.testing.assert_close(ours_sdxl.sigma_to_t(sigma), kd.sigma_to_t(sigma), rtol=0, atol=1e-3)
    torch.testing.assert_close(ours.t_to_sigma(torch.tensor([3.5, 500.25])),
                               external.DiscreteVDDPMDenoiser(Recorder(), ztsnr_ac.float(), False)
                               .t_to_sigma(torch.tensor([3.5, 500.25])))


def test_native_schedule(ztsnr_ac):
    sigmas = DiscreteVDenoiser(Recorder(), ztsnr_ac).get_sigmas(28)
    assert len(sigmas) == 29 and math.isinf(sigmas[0]) and sigmas[-1] == 0
    assert sigmas[1].item() == pytest.approx(56.18, abs=0.01)
    assert sigmas[2].item() == pytest.approx(25.90, abs=0.01)
    assert sigmas[-2].item() == pytest.approx(0.029167, abs=1e-6)
    schedules.validate_sigmas(sigmas)


def test_clamped_table(ztsnr_ac):
    m = DiscreteVDenoiser(Recorder(), ztsnr_ac, sigma_max=20000.)
    assert m.sigmas[-1].item() == 20000. and m.sigma_max.item() == 20000.
    assert m.get_sigmas(28)[0].item() == 20000.
    assert m.sigma_to_t(torch.tensor([20000.])).item() == 999
    assert torch.isfinite(m.get_sigmas(28)).all()
    with pytest.raises(ValueError, match='largest finite'):
        DiscreteVDenoiser(Recorder(), ztsnr_ac, sigma_max=1000.)


def test_bypass_feeds_noise_and_t_max(ztsnr_ac):
    net = Recorder()
    m = DiscreteVDenoiser(net, ztsnr_ac, sigma_data=0.5)
    n = torch.randn(2, 3, 4, 4)
    d = m(n, torch.full([2], INF))
    x_in, t = net.seen[-1]
    assert torch.equal(x_in, n) and (t == 999).all()
    torch.testing.assert_close(d, -0.5 * (0.5 * n))   # c_out·F(n) with c_skip = 0


def test_forward_matches_k_diffusion_when_finite(ztsnr_ac):
    ac = schedules.sdxl_alphas_cumprod()
    ours = DiscreteVDenoiser(Recorder(), ac)
    kd = external.DiscreteVDDPMDenoiser(Recorder(), ac.float(), quantize=False)
    x, sigma = torch.randn(3, 4, 8, 8) * 5, torch.tensor([14.6, 1., 0.03])
    torch.testing.assert_close(ours(x, sigma), kd(x, sigma), rtol=1e-5, atol=1e-5)
    noise = torch.randn_like(x)
    torch.testing.assert_close(ours.loss(x, noise, sigma), kd.loss(x, noise, sigma), rtol=1e-4, atol=1e-5)


def test_loss_exact_at_infinity(ztsnr_ac):
    net = Recorder()
    m = DiscreteVDenoiser(net, ztsnr_ac, sigma_data=0.5)
    x0, n = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    loss = m.loss(x0, n, torch.full([2], INF))
    x_in, t = net.seen[-1]
    assert torch.equal(x_in, n) and (t == 999).all()
    target = -x0 / 0.5
    torch.testing.assert_close(loss, (0.5 * n - target).pow(2).flatten(1).mean(1))
    # the limit: the loss at huge finite σ converges to the σ = ∞ loss
    far = m.loss(x0, n, torch.full([2], 1e7))
    torch.testing.assert_close(far, loss, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_precision_networks_get_finite_inputs(ztsnr_ac, dtype):
    for sigma_max, sigma in ((None, INF), (20000., 20000.)):
        net = Recorder(dtype)
        m = DiscreteVDenoiser(net, ztsnr_ac, sigma_max=sigma_max)
        x = torch.randn(1, 4, 128, 128) * 4                # |n| > 3.275 somewhere: σ·n overflows fp16
        x = x if math.isinf(sigma) else x * sigma           # float32 state at σ = 20000
        d = m(x, torch.full([1], sigma))
        x_in, _ = net.seen[-1]
        assert x_in.dtype == dtype and torch.isfinite(x_in).all()
        assert d.dtype == torch.float32 and torch.isfinite(d).all()
        loss = m.loss(torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8), torch.full([1], sigma))
        assert torch.isfinite(loss).all()


def test_result_in_input_dtype(ztsnr_ac):
    m = DiscreteVDenoiser(Recorder(), ztsnr_ac)
    assert m(torch.randn(1, 2, 2, 2, dtype=torch.float16), torch.tensor([3.])).dtype == torch.float16


def test_sigma_conditioned_wrapper_finite_at_infinity():
    net = Recorder()
    m = VDenoiser(net, sigma_data=0.5)
    n = torch.randn(2, 3, 4, 4)
    d = m(n, torch.tensor([INF, INF]))
    x_in, t = net.seen[-1]
    assert torch.equal(x_in, n) and (t == 1).all() and torch.isfinite(d).all()
    assert m.sigma_to_t(torch.tensor([0.5])).item() == pytest.approx(0.5)   # atan(1)·2/π
    assert math.isinf(m.t_to_sigma(torch.tensor([1.])).item())


def test_oracle_through_wrapper_is_exact(exact, data):
    oracle = OracleDenoiser(data)
    n = torch.randn(3, *data.shape[1:])
    for s in (INF, 20000., 56.18, 1., 0.03):
        sigma = torch.full([3], s)
        x = n if math.isinf(s) else data[:3] + s * n
        torch.testing.assert_close(exact(x, sigma), oracle(x, sigma), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(exact(n, torch.full([3], INF)), data.mean(0).expand_as(n), rtol=1e-5, atol=1e-5)


def test_compvis_adaptor(ztsnr_ac):
    class CompVis(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer('alphas_cumprod', schedules.sdxl_alphas_cumprod().float())
            self.net = Recorder()

        def apply_model(self, x, t, cond):
            assert cond == 'c'
            return self.net(x, t)

    model = CompVis()
    m = CompVisVDenoiser(model, zero_terminal_snr=True)
    n = torch.randn(1, 4, 2, 2)
    d = m(n, torch.tensor([INF]), cond='c')
    assert torch.isfinite(d).all() and model.net.seen[-1][1].item() == 999
