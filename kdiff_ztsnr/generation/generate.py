"""Text-to-image, img2img, Enhance and inpainting over a `Pipeline`, reproducible per sample.

Sample i of a batch uses seed + i, and its ancestral/SDE noise comes from its own CPU generator, so a batch
reproduces single runs and a seed gives the same noise on every device. The ancestral noise of all steps is
drawn before the sampler runs and moved to the device once: the step loop copies nothing from the host.
"""

import inspect
import math
from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .. import schedule_policy, schedules
from ..progress import bar
from ..guidance import CFGDenoiser
from ..img2img import img2img_start
from ..sampling import SAMPLERS, BrownianTreeNoiseSampler
from ..models.bundle import Pipeline
from .params import GenerationParams, check_params

BROWNIAN = {'dpmpp_sde', 'dpmpp_2m_sde', 'dpmpp_3m_sde'}


def start_sigma(p: GenerationParams, pipe: Pipeline) -> float:
    """The finite start p.sigma_start of the 'sigma_max' regime, ×2 per ×2 canvas side if resolution-aware."""
    side = math.sqrt(p.width * p.height)
    return schedules.scale_sigma_for_resolution(p.sigma_start, side, pipe.base_side) if p.resolution_aware \
        else p.sigma_start


def sample_noise(seeds: list, shape: tuple) -> tuple[list, Tensor]:
    """Per-sample generators and their first draw: a batch reproduces single runs with the same seeds."""
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    return gens, torch.stack([torch.randn(shape, generator=g) for g in gens])


class MaskedDenoiser(nn.Module):
    """Inpainting by compositing: outside the mask the denoised image is the init at every step."""

    def __init__(self, inner_model: nn.Module, x0: Tensor, mask: Tensor):
        super().__init__()
        self.inner_model, self.x0, self.mask = inner_model, x0, mask     # mask = 1 where to regenerate

    def forward(self, x: Tensor, sigma: Tensor, **kwargs) -> Tensor:
        return self.mask * self.inner_model(x, sigma, **kwargs) + (1 - self.mask) * self.x0


def split_cond(cond: dict, b: int) -> tuple[dict, dict]:
    return {k: v[:b] for k, v in cond.items()}, {k: v[b:] for k, v in cond.items()}


class PresampledNoise:
    """An ancestral noise sampler whose k-th call returns each generator's k-th draw, drawn up front.

    The draws are those fresh per-call draws would give (the same generators, in the same order), made before
    sampling and moved to x's device in one copy; calls past `count` draw more the same way.
    """

    def __init__(self, gens: list, x: Tensor, count: int):
        self.gens, self.x, self.i = gens, x, 0
        self.noise = self.draw(count)                                    # [count, B, ...] on x's device

    def draw(self, count: int) -> Tensor:
        steps = [torch.stack([torch.randn(self.x.shape[1:], generator=g) for g in self.gens]) for _ in range(count)]
        return torch.stack(steps).to(self.x) if steps else self.x.new_empty((0, *self.x.shape))

    def __call__(self, sigma: Tensor, sigma_next: Tensor) -> Tensor:
        z = self.noise[self.i] if self.i < len(self.noise) else self.draw(1)[0]
        self.i += 1
        return z


def sampler_kwargs(p: GenerationParams, x: Tensor, sigmas: Tensor, gens: list, seeds: list) -> dict:
    """Per-sample noise for ancestral/SDE samplers, so batches reproduce single runs."""
    params = inspect.signature(SAMPLERS[p.sampler]).parameters
    kw = {} if p.eta is None or 'eta' not in params else {'eta': p.eta}
    if 'noise_sampler' not in params:
        return kw
    host = sigmas.detach().cpu()                                        # one read of the schedule
    if p.sampler in BROWNIAN:
        finite = host[torch.isfinite(host) & (host > 0)]
        kw['noise_sampler'] = BrownianTreeNoiseSampler(x, finite.min(), finite.max(), seed=list(seeds))
    else:                        # the ancestral samplers draw once per step to a σ > 0 (from ∞ too)
        kw['noise_sampler'] = PresampledNoise(gens, x, int((host[1:] > 0).sum()))
    return kw


@torch.no_grad()
def generate(pipe: Pipeline, p: GenerationParams, init: Optional[Tensor] = None, mask: Optional[Tensor] = None,
             progress: bool = False, sigmas: Optional[Tensor] = None, clamp: Optional[float] = None,
             limits: bool = True) -> Tensor:
    """Images in [−1, 1] [n_samples, 3, H, W]. init: image [1 or B, 3, H, W]; mask: [1, 1, H, W], 1 = repaint.

    sigmas: an explicit schedule instead of p's; clamp: the table's top σ (report A.2; default
    ZTSNR_CLAMP for p.regime == 'clamp', none otherwise); limits=False lifts params.MAX_SIDE / MAX_PIXELS.
    """
    check_params(p, pipe.size_multiple, pipe.name, limits)
    if p.loras or pipe.info.get('loras_from_params'):
        from ..models.sdxl.lora import use_loras
        use_loras(pipe, p.loras)                   # the pipeline carries exactly p.loras
    if clamp is None and p.regime == 'clamp':
        clamp = schedules.ZTSNR_CLAMP
    model = pipe.denoiser(clamp=clamp, quantize=p.quantize_timesteps)
    if sigmas is None:
        sigmas = schedule_policy.sigmas(pipe.denoiser(), p.noise_schedule, p.steps,
                                        sigma_start=start_sigma(p, pipe) if p.regime == 'sigma_max' else None,
                                        sampler=p.sampler, side=math.sqrt(p.width * p.height),
                                        base_side=pipe.base_side)
        if clamp is not None:                  # the clamp replaces only ∞: the same finite part below it
            sigmas = schedule_policy.replace_start(sigmas, clamp)
    b, seeds = p.n_samples, [p.seed + i for i in range(p.n_samples)]
    shape = (pipe.channels, p.height // pipe.factor, p.width // pipe.factor)
    gens, noise = sample_noise(seeds, shape)
    noise = noise.to(pipe.device)
    if pipe.force_zeros_for_empty_prompt and not p.uc.strip():     # as diffusers' SDXL pipeline: no "" pass
        cond = pipe.encode_prompts([p.prompt] * b)
        uncond = {k: torch.zeros_like(v) for k, v in cond.items()}
    else:
        cond, uncond = split_cond(pipe.encode_prompts([p.prompt] * b + [p.uc] * b), b)
    if pipe.size_cond is not None:
        extra = pipe.size_cond(p.width, p.height, b)
        cond, uncond = {**cond, **extra}, {**uncond, **extra}
    denoiser = CFGDenoiser(model, p.scale, p.cfg_rescale, cond_key=None)
    if init is not None:
        x0 = pipe.encode(init.to(pipe.device)).expand(b, *shape).float()
        x, sigmas = img2img_start(x0, noise, sigmas, p.strength)
        if mask is not None:
            m = F.interpolate(mask.float().to(x0), size=shape[1:], mode='area').expand_as(x0)
            denoiser = MaskedDenoiser(denoiser, x0, m)
    else:
        x = noise if math.isinf(sigmas[0]) else noise * sigmas[0]
    if len(sigmas) > 1:
        with step_bar(len(sigmas) - 1, p.sampler, progress) as steps:   # every step, the one from ∞ included
            x = SAMPLERS[p.sampler](denoiser, x, sigmas, extra_args={'cond': cond, 'uncond': uncond},
                                    disable=True, callback=lambda info: steps.update(1),
                                    **sampler_kwargs(p, x, sigmas, gens, seeds))
    if init is not None and mask is not None:
        x = m * x + (1 - m) * x0                       # keep the unmasked latents exactly
    return pipe.decode(x).clamp(-1, 1)


def step_bar(total: int, sampler: str, progress: bool):
    """The per-step bar: the schedule's steps as given (the exact step from ∞ counts as one)."""
    return bar(total=total, desc=f'sampling ({sampler})', unit='step', disable=not progress, leave=False)


def enhance_size(width: int, height: int, multiple: int, factor: float = 1.5) -> tuple[int, int]:
    """Enhance's target canvas: ×1.5, rounded to the model's size multiple (as the NAI service)."""
    return (max(multiple, round(width * factor / multiple) * multiple),
            max(multiple, round(height * factor / multiple) * multiple))


def upscale(image: Tensor, width: int, height: int) -> Tensor:
    """Bicubic resize of images in [−1, 1] to width × height."""
    return F.interpolate(image.float(), size=(height, width), mode='bicubic', align_corners=False).clamp(-1, 1)
