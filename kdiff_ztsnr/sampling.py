"""Drop-in k-diffusion samplers that can start at σ = ∞ (report appendix A.1, eq. 9-18).

Every public ``sample_*`` of ``k_diffusion.sampling`` is here with the same name and signature. When
``sigmas[0]`` is ∞, ``x`` is the unit-variance noise n; the first step is the report's special-cased Euler
step x₁ = σ₁·n + D(n; ∞) (eq. 9), one model call, and the k-diffusion sampler then continues on
``sigmas[1:]`` like img2img. When ``sigmas[0]`` is finite the k-diffusion sampler runs unchanged.

Ancestral and SDE samplers take the ancestral form of the first step: x₁ = σ_down·n + D + σ_up·s_noise·z,
the σ₀ → ∞ limit of their own step (σ_down = 0, σ_up = σ₁ at eta = 1). Their Brownian trees are built by
k-diffusion from the finite part ``sigmas[1:]``, so they neither hang nor recurse.

The wrappers read nothing from the device per step: the schedule is copied to the host once (every branch
of the ∞ step is decided there) and the model's outputs are checked for NaN/inf on the device, read once
after the loop (:class:`CheckedModel`). What k-diffusion's own loops read per step is theirs.

``sample_dpm_fast`` and ``sample_dpm_adaptive`` take (sigma_min, sigma_max) rather than a schedule; they
refuse sigma_max = ∞ with an error: run :func:`infinite_step` first, then call them with sigma_max = σ₁.
"""

import functools
import inspect
import math
from typing import Callable, Optional

import torch
from k_diffusion import sampling as k_sampling
from torch import Tensor

from .schedules import validate_sigmas

# Samplers whose noise injection is exp(−η·h)-based: their σ₀ → ∞ limit adds all of σ₁ as noise for any η > 0.
_EXPONENTIAL_SDE = {'sample_dpmpp_2m_sde', 'sample_dpmpp_3m_sde'}
# k-diffusion's samplers branch on σ every step (`if sigmas[i + 1] == 0`), a host read. These use σ only as a
# scalar (0-d tensors: h, exp(−h)), so they run on a host schedule and never read the device; the others
# broadcast σ against x (to_d) and get the schedule on x's device.
_HOST_SCHEDULE = {'sample_dpmpp_2m', 'sample_dpmpp_2m_sde', 'sample_dpmpp_3m_sde'}


def check_output(denoised, x: Tensor) -> None:
    """The denoiser's output must be a tensor of x's shape and dtype (metadata only: no broadcasting)."""
    if not torch.is_tensor(denoised) or denoised.shape != x.shape or denoised.dtype != x.dtype:
        got = (f'{tuple(denoised.shape)} {denoised.dtype}' if torch.is_tensor(denoised)
               else type(denoised).__name__)
        raise ValueError(f'the denoiser must return a tensor of the shape and dtype of x '
                         f'({tuple(x.shape)} {x.dtype}), got {got}')


def check_state(x: Tensor) -> None:
    """x: a non-empty floating-point batch (integer noise or an empty batch cannot be sampled)."""
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise ValueError(f'x must be a floating-point tensor, got '
                         f'{x.dtype if torch.is_tensor(x) else type(x).__name__}')
    if x.ndim < 1 or x.shape[0] == 0 or x.numel() == 0:
        raise ValueError(f'x is an empty batch (shape {tuple(x.shape)}): nothing to sample')


class CheckedModel:
    """A denoiser whose non-finite outputs are caught without a host read per call.

    Each call folds the count of non-finite elements into device tensors, keeping the σ of the first bad call;
    :meth:`check` reads them once, after the sampler, and raises naming that σ. eager=True checks every call
    (for samplers whose own control flow a NaN would derail, e.g. an adaptive step size).
    """

    def __init__(self, model: Callable, eager: bool = False):
        self.model, self.eager = model, eager
        self.n_bad: Optional[Tensor] = None          # non-finite elements of the first bad call (0: none yet)
        self.sigma: Optional[Tensor] = None          # that call's σ

    def __call__(self, x: Tensor, sigma: Tensor, **kwargs) -> Tensor:
        denoised = self.model(x, sigma, **kwargs)
        check_output(denoised, x)
        n_bad = denoised.isfinite().logical_not().sum()
        s = torch.as_tensor(sigma, device=n_bad.device).flatten()[0]
        if self.n_bad is None:
            self.n_bad, self.sigma = n_bad, s
        else:
            first = self.n_bad == 0
            self.n_bad, self.sigma = torch.where(first, n_bad, self.n_bad), torch.where(first, s, self.sigma)
        if self.eager:
            self.check()
        return denoised

    def check(self) -> None:
        """Raise FloatingPointError if any call returned NaN or inf (one host read)."""
        if self.n_bad is not None and self.n_bad.item():
            raise FloatingPointError(f'the model returned NaN or inf at sigma={self.sigma.item():.6g} '
                                     f'({self.n_bad.item()} elements)')


def checked_model(model: Callable) -> CheckedModel:
    """Wrap a denoiser so a non-finite output raises at once, naming the noise level, instead of spreading."""
    return CheckedModel(model, eager=True)


def infinite_sigmas_up(sigma_1: Tensor, eta: float = 1., exponential_sde: bool = False) -> tuple[Tensor, Tensor]:
    """(σ_down, σ_up) of an ancestral step from σ₀ = ∞ to σ₁: the limit of k-diffusion's get_ancestral_step."""
    if exponential_sde:
        sigma_up = sigma_1 if eta else sigma_1 * 0
    else:
        sigma_up = torch.minimum(sigma_1, eta * sigma_1)
    return (sigma_1 ** 2 - sigma_up ** 2).sqrt(), sigma_up


def infinite_step(model: Callable, n: Tensor, sigma_1: Tensor, extra_args: Optional[dict] = None,
                  sigma_up: Optional[Tensor] = None, s_noise: float = 1., noise: Optional[Tensor] = None,
                  callback: Optional[Callable] = None) -> Tensor:
    """The first step from σ₀ = ∞ (eq. 9): x₁ = σ_down·n + D(n; ∞) + σ_up·s_noise·z, one model call.

    n [B, ...]: unit-variance noise (the σ = ∞ state). With sigma_up = None (or 0) this is the
    deterministic Euler step x₁ = σ₁·n + D(n; ∞) = σ₁·n − σ_data·F(n; t_max) (eq. 18).
    """
    check_state(n)
    if sigma_up is not None and not sigma_up > 0:
        sigma_up = None
    checked = model if isinstance(model, CheckedModel) else CheckedModel(model)
    x = _infinite_step(checked, n, sigma_1, {} if extra_args is None else extra_args, sigma_up, s_noise, noise,
                       callback)
    checked.check()
    return x


def _infinite_step(model: Callable, n: Tensor, sigma_1: Tensor, extra_args: dict, sigma_up: Optional[Tensor],
                   s_noise: float, noise: Optional[Tensor], callback: Optional[Callable]) -> Tensor:
    """Eq. 9 with the noise decided by the caller (sigma_up None: none), so nothing is read from the device."""
    sigma_1 = torch.as_tensor(sigma_1, dtype=torch.float32, device=n.device)
    noisy = sigma_up is not None
    sigma_up = sigma_1 * 0 if sigma_up is None else torch.as_tensor(sigma_up, device=n.device)
    sigma_down = (sigma_1 ** 2 - sigma_up ** 2).clamp(min=0).sqrt()
    s_in = n.new_ones([n.shape[0]])
    denoised = model(n, math.inf * s_in, **extra_args)
    if callback is not None:
        inf = sigma_1.new_full((), math.inf)
        callback({'x': n, 'i': 0, 'sigma': inf, 'sigma_hat': inf, 'denoised': denoised})
    x = sigma_down * n + denoised
    if noisy:
        z = torch.randn_like(n) if noise is None else noise
        if z.shape != n.shape or not z.is_floating_point():
            raise ValueError(f'noise must be a floating-point tensor of the shape of x ({tuple(n.shape)}), '
                             f'got {tuple(z.shape)} {z.dtype}')
        x = x + z * s_noise * sigma_up
    return x


def _shift_callback(callback: Optional[Callable]) -> Optional[Callable]:
    """Renumber the continuing sampler's steps so the first step keeps i = 0."""
    if callback is None:
        return None
    return lambda info: callback({**info, 'i': info['i'] + 1})


def check_sampler_args(a: dict) -> None:
    """eta and s_noise must be finite and non-negative (a NaN here would be blamed on the model)."""
    for name in ('eta', 's_noise'):
        v = a.get(name)
        if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            raise ValueError(f'{name} must be a finite number >= 0, got {v}')


def check_unit_noise(x: Tensor) -> None:
    """At σ = ∞ the state is the unit noise itself; catch the usual `x = randn * sigmas[0]`."""
    rms = x.detach().float().pow(2).mean().sqrt().item()
    if not math.isfinite(rms) or rms > 20:
        raise ValueError(f'at σ=∞ x must be unit-variance noise, not noise·σ₀ (x has RMS {rms:.3g}); '
                         f'pass x = torch.randn(shape) unscaled when sigmas[0] is inf')


def ztsnr(sampler: Callable, ancestral: Optional[bool] = None) -> Callable:
    """Give a k-diffusion-signature sampler (model, x, sigmas, ...) the exact first step from σ = ∞.

    ancestral: whether the first step injects noise (default: the sampler takes ``eta``).
    """
    sig = inspect.signature(sampler)
    ancestral = 'eta' in sig.parameters if ancestral is None else ancestral
    exponential_sde = sampler.__name__ in _EXPONENTIAL_SDE
    on_host = sampler.__name__ in _HOST_SCHEDULE

    @functools.wraps(sampler)
    def sample(*args, **kwargs):
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        a = bound.arguments
        check_state(a['x'])
        host = a['sigmas'].detach().cpu()               # the schedule on the host: one read, before the loop
        validate_sigmas(host)
        check_sampler_args(a)
        a['sigmas'] = host if on_host else a['sigmas'].to(a['x'].device)
        a['model'] = checked = CheckedModel(a['model'])
        if math.isinf(host[0]):
            x = _from_inf(sampler, bound, host, ancestral, exponential_sde)
        else:
            x = sampler(*bound.args, **bound.kwargs)
        checked.check()
        return x
    return sample


def _from_inf(sampler: Callable, bound: inspect.BoundArguments, host: Tensor, ancestral: bool,
              exponential_sde: bool) -> Tensor:
    """The exact first step (eq. 9), then `sampler` on sigmas[1:]; every branch is decided on the host copy."""
    a, sigmas = bound.arguments, bound.arguments['sigmas']
    check_unit_noise(a['x'])
    sigma_up, z = None, None
    eta = a.get('eta', 1.)
    if ancestral and infinite_sigmas_up(host[1], eta, exponential_sde)[1] > 0:
        sigma_up = infinite_sigmas_up(sigmas[1], eta, exponential_sde)[1]
        if a.get('noise_sampler') is not None:
            z = a['noise_sampler'](sigmas[0], sigmas[1])
    x = _infinite_step(a['model'], a['x'], sigmas[1], a['extra_args'] or {}, sigma_up, a.get('s_noise', 1.), z,
                       a['callback'])
    if len(sigmas) == 2 or host[1] == 0:
        return x
    a['x'], a['sigmas'], a['callback'] = x, sigmas[1:], _shift_callback(a['callback'])
    return sampler(*bound.args, **bound.kwargs)


def _finite_sigma_max(sampler: Callable) -> Callable:
    """For (sigma_min, sigma_max) samplers: refuse σ_max = ∞ clearly, else run k-diffusion's unchanged."""
    sig = inspect.signature(sampler)

    @functools.wraps(sampler)
    def sample(*args, **kwargs):
        bound = sig.bind(*args, **kwargs)
        check_state(bound.arguments['x'])
        sigma_max = float(bound.arguments['sigma_max'])
        if math.isinf(sigma_max) or math.isnan(sigma_max):
            raise ValueError(f'{sampler.__name__} cannot start at sigma_max={sigma_max}: it integrates in log σ '
                             f'between finite bounds. Take the exact first step with '
                             f'kdiff_ztsnr.sampling.infinite_step(model, x, sigma_1) and call it with '
                             f'sigma_max=sigma_1, or use a schedule-based sampler.')
        bound.arguments['model'] = CheckedModel(bound.arguments['model'], eager=True)   # adaptive: NaN would stall
        return sampler(*bound.args, **bound.kwargs)
    return sample


def _second_draw(shape: tuple, seed: int) -> Tensor:
    """The normal draw after the first one (the initial noise) of a CPU generator seeded with `seed`."""
    g = torch.Generator().manual_seed(int(seed))
    torch.randn(shape, generator=g)
    return torch.randn(shape, generator=g)


class BrownianTreeNoiseSampler(k_sampling.BrownianTreeNoiseSampler):
    """k-diffusion's Brownian-tree noise sampler over the finite range, extended to intervals reaching ∞.

    The normalised increment over [σ₁, ∞) is independent of every finite interval, so it is a standard
    normal drawn once from ``seed``: the second draw of ``torch.Generator().manual_seed(seed)``, whose first
    draw is the initial noise in `generate` and in ComfyUI, so that it is independent of the initial noise.
    Build the tree with sigma_max = the largest finite sigma. The tree is a host structure (torchsde takes σ
    as Python floats), so σ on a device is copied to the host once per call.
    """

    def __init__(self, x: Tensor, sigma_min: float, sigma_max: float, seed: Optional[int] = None,
                 transform: Callable = lambda x: x):
        if math.isinf(float(sigma_max)):
            raise ValueError('build the Brownian tree over the finite part: sigma_max must be the largest finite '
                             'sigma (e.g. sigmas[1] of a schedule starting at ∞)')
        super().__init__(x, sigma_min, sigma_max, seed, transform)
        seed = int(torch.randint(0, 2 ** 62, []).item()) if seed is None else seed
        if isinstance(seed, (list, tuple)):      # one tree per batch item, as k-diffusion: one draw per item
            self.infinite_noise = torch.stack([_second_draw(x.shape[1:], s) for s in seed]).to(x)
        else:
            self.infinite_noise = _second_draw(x.shape, seed).to(x)

    def __call__(self, sigma, sigma_next):
        sigma, sigma_next = (torch.as_tensor(s).detach().cpu() for s in (sigma, sigma_next))   # read once, here
        if sigma.isinf() or sigma_next.isinf():
            return self.infinite_noise
        return super().__call__(sigma, sigma_next)


sample_euler = ztsnr(k_sampling.sample_euler)
sample_euler_ancestral = ztsnr(k_sampling.sample_euler_ancestral)
sample_heun = ztsnr(k_sampling.sample_heun)
sample_dpm_2 = ztsnr(k_sampling.sample_dpm_2)
sample_dpm_2_ancestral = ztsnr(k_sampling.sample_dpm_2_ancestral)
sample_lms = ztsnr(k_sampling.sample_lms)
sample_dpm_fast = _finite_sigma_max(k_sampling.sample_dpm_fast)
sample_dpm_adaptive = _finite_sigma_max(k_sampling.sample_dpm_adaptive)
sample_dpmpp_2s_ancestral = ztsnr(k_sampling.sample_dpmpp_2s_ancestral)
sample_dpmpp_sde = ztsnr(k_sampling.sample_dpmpp_sde)
sample_dpmpp_2m = ztsnr(k_sampling.sample_dpmpp_2m)
sample_dpmpp_2m_sde = ztsnr(k_sampling.sample_dpmpp_2m_sde)
sample_dpmpp_3m_sde = ztsnr(k_sampling.sample_dpmpp_3m_sde)

SAMPLERS = {name[len('sample_'):]: fn for name, fn in globals().items() if name.startswith('sample_')}
