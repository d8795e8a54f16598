import inspect
import math
import signal

import pytest
import torch
from k_diffusion import sampling as K

from kdiff_ztsnr import sampling as S
from kdiff_ztsnr.oracle import exact_model, mean_brightness
from kdiff_ztsnr.schedules import SDXL_SIGMA_MAX

INF = math.inf
SCHEDULE_SAMPLERS = [n for n in S.SAMPLERS if n not in ('dpm_fast', 'dpm_adaptive')]


@pytest.fixture(autouse=True)
def no_hang():
    """k-diffusion's Brownian tree hangs at σ=∞; fail instead of hanging."""
    signal.signal(signal.SIGALRM, lambda *_: pytest.fail('sampler hung'))
    signal.alarm(120)
    yield
    signal.alarm(0)


class Counter:
    def __init__(self, model):
        self.model, self.calls = model, 0

    def __call__(self, x, sigma, **kwargs):
        self.calls += 1
        return self.model(x, sigma, **kwargs)


def test_every_k_diffusion_sampler_is_wrapped_with_its_signature():
    names = [n for n in dir(K) if n.startswith('sample_')]
    assert names and all(hasattr(S, n) for n in names)
    for n in names:
        assert inspect.signature(getattr(S, n)) == inspect.signature(getattr(K, n))


@pytest.mark.parametrize('name', SCHEDULE_SAMPLERS)
def test_sampler_from_infinity(exact, name):
    torch.manual_seed(0)
    sigmas = exact.get_sigmas(10)
    n = torch.randn(4, *exact.inner_model.data.shape[1:])
    model = Counter(exact)
    out = getattr(S, 'sample_' + name)(model, n, sigmas, disable=True)
    assert torch.isfinite(out).all()
    # exactly one model call for the first step, then k-diffusion's own count on the finite tail
    tail = Counter(exact)
    torch.manual_seed(0)
    getattr(K, 'sample_' + name)(tail, n * sigmas[1], sigmas[1:], disable=True)
    assert model.calls == tail.calls + 1


@pytest.mark.parametrize('name', SCHEDULE_SAMPLERS)
def test_finite_schedule_is_bit_identical_pass_through(exact, name):
    sigmas = exact.get_sigmas(8)[1:]
    x = torch.randn(2, *exact.inner_model.data.shape[1:]) * sigmas[0]
    torch.manual_seed(1)
    ours = getattr(S, 'sample_' + name)(exact, x.clone(), sigmas, disable=True)
    torch.manual_seed(1)
    theirs = getattr(K, 'sample_' + name)(exact, x.clone(), sigmas, disable=True)
    assert torch.equal(ours, theirs)


def test_first_step_is_limit_of_euler_step(exact):
    n = torch.randn(2, *exact.inner_model.data.shape[1:], dtype=torch.float64)
    sigma_1 = torch.tensor(56.18, dtype=torch.float64)
    x1 = S.infinite_step(exact, n, sigma_1)
    torch.testing.assert_close(x1, sigma_1 * n + exact.inner_model.data.double().mean(0))   # eq. 9 with D = ȳ
    errors = []
    for sigma_0 in (1e3, 1e4, 1e5, 1e6):
        sigmas = torch.tensor([sigma_0, sigma_1], dtype=torch.float64)
        euler = K.sample_euler(exact, n * sigma_0, sigmas, disable=True)   # an ordinary Euler step (eq. 2)
        errors.append((euler - x1).abs().max().item())
    assert all(b < a for a, b in zip(errors, errors[1:]))                  # converges as σ₀ → ∞ ...
    assert errors[-1] < 1e-3 and errors[-1] < errors[0] / 100              # ... like 1/σ₀


def test_clamped_variant_agrees_with_exact(exact, clamped):
    torch.manual_seed(0)
    n = torch.randn(16, *exact.inner_model.data.shape[1:])
    a = S.sample_euler(exact, n, exact.get_sigmas(28), disable=True)
    b = K.sample_euler(clamped, n * 20000., clamped.get_sigmas(28), disable=True)   # unmodified k-diffusion
    first_a = S.infinite_step(exact, n, exact.get_sigmas(28)[1])
    first_b = K.sample_euler(clamped, n * 20000., clamped.get_sigmas(28)[:2], disable=True)
    # the clamped first step is off by O(σ₁/20000) of the state: 56.18/20000 ≈ 0.28 %
    rel = ((first_a - first_b).norm() / first_a.norm()).item()
    assert rel < 56.18 / 20000
    assert (a - b).abs().max().item() < 0.05
    assert (mean_brightness(a) - mean_brightness(b)).abs().max().item() < 0.01


@pytest.mark.parametrize('name', ['sample_euler', 'sample_lms', 'sample_dpmpp_2m_sde',
                                  'sample_dpmpp_3m_sde', 'sample_dpmpp_sde', 'sample_heun'])
def test_unmodified_k_diffusion_samplers_run_on_clamped_table(clamped, name):
    torch.manual_seed(0)
    sigmas = clamped.get_sigmas(10)
    out = getattr(K, name)(clamped, torch.randn(2, 4, 16, 16) * sigmas[0], sigmas, disable=True)
    assert torch.isfinite(out).all()


def test_ancestral_first_step(exact):
    n = torch.randn(2, 4, 16, 16)
    z = torch.randn_like(n)
    ybar = exact.inner_model.data.mean(0)
    sigmas = torch.tensor([INF, 7., 0.])
    calls = []
    ns = lambda s, s_next: (calls.append((s, s_next)), z)[1]   # noqa: E731
    x1 = S.sample_euler_ancestral(exact, n, sigmas[:2], noise_sampler=ns, disable=True)
    torch.testing.assert_close(x1, ybar + 7. * z)                 # σ_down = 0, σ_up = σ₁
    assert math.isinf(calls[0][0]) and calls[0][1] == 7.
    x1 = S.sample_euler_ancestral(exact, n, sigmas[:2], noise_sampler=ns, s_noise=0.5, disable=True)
    torch.testing.assert_close(x1, ybar + 3.5 * z)
    x1 = S.sample_euler_ancestral(exact, n, sigmas[:2], eta=0., disable=True)
    torch.testing.assert_close(x1, ybar + 7. * n)                 # η = 0: the ODE step
    x1 = S.sample_euler_ancestral(exact, n, sigmas[:2], eta=0.6, noise_sampler=ns, disable=True)
    torch.testing.assert_close(x1, ybar + 7. * 0.8 * n + 7. * 0.6 * z)
    x1 = S.sample_dpmpp_2m_sde(exact, n, sigmas[:2], eta=0.5, noise_sampler=ns, disable=True)
    torch.testing.assert_close(x1, ybar + 7. * z)                 # exp-SDE limit: all of σ₁ is noise


def test_brownian_noise_sampler_reaching_infinity():
    x = torch.zeros(2, 3)
    ns = S.BrownianTreeNoiseSampler(x, 0.03, 50., seed=3)
    a, b = ns(INF, 50.), S.BrownianTreeNoiseSampler(x, 0.03, 50., seed=3)(INF, 50.)
    assert torch.equal(a, b) and torch.isfinite(ns(50., 10.)).all()
    with pytest.raises(ValueError, match='finite'):
        S.BrownianTreeNoiseSampler(x, 0.03, INF)


def test_callback_numbering(exact):
    seen = []
    S.sample_euler(exact, torch.randn(1, 4, 16, 16), exact.get_sigmas(5), callback=lambda d: seen.append(
        (d['i'], d['sigma'].item())), disable=True)
    assert [i for i, _ in seen] == [0, 1, 2, 3, 4] and math.isinf(seen[0][1])


def test_figure_2_brightness_spread(data, ztsnr_ac):
    # Sampling from ∞ reproduces the data's spread of per-image mean brightness; pure noise at SDXL's
    # σ_max = 14.6146 pulls every sample toward medium brightness (report §2.2, Figure 2).
    data = torch.nn.functional.interpolate(data, size=(32, 32))    # 4096 dims: strong mean leakage at 14.6
    model = exact_model(data, ztsnr_ac)
    torch.manual_seed(0)
    n = torch.randn(64, *data.shape[1:])
    sigmas = model.get_sigmas(28)
    exact = mean_brightness(S.sample_euler_ancestral(model, n, sigmas, disable=True))
    finite = torch.cat([torch.tensor([SDXL_SIGMA_MAX]), sigmas[sigmas < SDXL_SIGMA_MAX]])
    sdxl = mean_brightness(S.sample_euler_ancestral(model, n * SDXL_SIGMA_MAX, finite, disable=True))
    target = mean_brightness(data)
    q = (torch.arange(64) + 0.5) / 64
    w1 = lambda b: (b.sort().values - torch.quantile(target, q)).abs().mean().item()   # noqa: E731
    assert w1(exact) < 0.5 * w1(sdxl)
    assert abs(exact.std() - target.std()) < 0.5 * abs(sdxl.std() - target.std())


def test_errors(exact):
    n = torch.randn(1, 4, 16, 16)
    with pytest.raises(ValueError, match='strictly decreasing'):
        S.sample_euler(exact, n, torch.tensor([1., 5., 0.]))
    with pytest.raises(ValueError, match='only be the first'):
        S.sample_dpmpp_2m(exact, n, torch.tensor([10., INF, 0.]))
    with pytest.raises(ValueError, match='NaN'):
        S.sample_heun(exact, n, torch.tensor([10., float('nan'), 0.]))
    with pytest.raises(ValueError, match='cannot start at sigma_max=inf'):
        S.sample_dpm_fast(exact, n, 0.03, INF, 5)
    with pytest.raises(ValueError, match='cannot start at sigma_max=inf'):
        S.sample_dpm_adaptive(exact, n, 0.03, INF)
    bad = lambda x, sigma: torch.where(sigma.view(-1, 1, 1, 1) < 1, x * float('nan'), x)   # noqa: E731
    with pytest.raises(FloatingPointError, match='NaN or inf at sigma=0.'):
        S.sample_euler(bad, n, exact.get_sigmas(5))
    with pytest.raises(FloatingPointError, match='sigma=inf'):
        S.sample_euler(lambda x, s: x * float('nan'), n, exact.get_sigmas(5))


def test_dpm_fast_after_exact_first_step(exact):
    n = torch.randn(2, 4, 16, 16)
    x1 = S.infinite_step(exact, n, torch.tensor(56.18))
    out = S.sample_dpm_fast(exact, x1, 0.0292, 56.18, 10, disable=True)
    assert torch.isfinite(out).all()


def test_ztsnr_decorator_on_third_party_sampler(exact):
    def sample_mine(model, x, sigmas, extra_args=None, callback=None, disable=None):
        for i in range(len(sigmas) - 1):
            x = x + K.to_d(x, sigmas[i], model(x, sigmas[i] * x.new_ones([x.shape[0]]))) * (sigmas[i + 1] - sigmas[i])
        return x
    n = torch.randn(2, 4, 16, 16)
    sigmas = exact.get_sigmas(6)
    torch.testing.assert_close(S.ztsnr(sample_mine)(exact, n, sigmas), S.sample_euler(exact, n, sigmas, disable=True))
    assert torch.isnan(sample_mine(exact, n, sigmas)).any()      # the undecorated one breaks at ∞
