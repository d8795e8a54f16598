"""A diffusers scheduler that starts at σ = ∞ with the exact first step (report appendix A.1, eq. 9-18).

    from diffusers import StableDiffusionXLPipeline
    from kdiff_ztsnr.integrations.diffusers import ZTSNRScheduler
    pipe = StableDiffusionXLPipeline.from_pretrained(path)               # a v-prediction ZTSNR model
    pipe.scheduler = ZTSNRScheduler.from_config(pipe.scheduler.config, sampler='dpmpp_2m', schedule='karras')
    image = pipe(prompt, guidance_scale=5, guidance_rescale=0.7).images[0]

The state at σ = ∞ is the unit noise n: ``init_noise_sigma = 1``, ``timesteps[0] = 999``, and at that step
``scale_model_input`` returns n itself (the c_in bypass, eq. 17-18). ``step`` turns the network's v into
D = c_skip·x + c_out·v (eq. 1; c_skip = 0, c_out = −σ_data at ∞) and takes x₁ = σ₁·n + D(n; ∞) (eq. 9), or
its ancestral form; after it, Euler / Euler ancestral / DPM++ 2M run on the finite schedule exactly as
k-diffusion's ``sample_*`` (and so as ``kdiff_ztsnr.sampling``) would. diffusers' own schedulers clamp ᾱ[-1]
to 2⁻²⁴ instead (σ_max = 4096).
"""

import math
from typing import Optional, Sequence, Union

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin, SchedulerOutput
from diffusers.utils.torch_utils import randn_tensor
from k_diffusion.sampling import get_ancestral_step, to_d
from torch import Tensor

from .. import schedule_policy, schedules
from ..denoisers import v_scalings
from ..sampling import infinite_sigmas_up
from . import SCHEDULES, STEP_SAMPLERS, table_denoiser


class ZTSNRScheduler(SchedulerMixin, ConfigMixin):
    """Euler / Euler ancestral / DPM++ 2M for v-prediction zero-terminal-SNR models, from σ = ∞.

    Until `set_timesteps`, the schedule is the training one (t = T−1, …, 0; σ = ∞, …, σ_min), as diffusers'
    schedulers build it in ``__init__``. `betas`, `alphas` and `alphas_cumprod` are the rescaled (ZTSNR) tables.
    """

    _compatibles = [e.name for e in KarrasDiffusionSchedulers]   # swappable with these (their config keys drop)
    order = 1

    @register_to_config
    def __init__(self,
                 num_train_timesteps: int = schedules.NUM_TIMESTEPS,
                 beta_start: float = schedules.SDXL_BETA_START,
                 beta_end: float = schedules.SDXL_BETA_END,
                 beta_schedule: str = 'scaled_linear',
                 trained_betas: Optional[Sequence[float]] = None,
                 prediction_type: str = 'v_prediction',
                 rescale_betas_zero_snr: bool = True,
                 sampler: str = 'euler_ancestral',       # 'euler' | 'euler_ancestral' | 'dpmpp_2m'
                 schedule: str = 'recommended',          # the package's: native | karras | exponential | …
                 eta: float = 1.,                        # ancestral η (the pipeline's own `eta` is not used)
                 s_noise: float = 1.,
                 sigma_data: float = 1.,
                 quantize_timesteps: bool = False):      # integer t, as ComfyUI / A1111 feed them
        if prediction_type != 'v_prediction':
            raise ValueError(f"ZTSNRScheduler samples v-prediction models only, got prediction_type={prediction_type!r}")
        if not rescale_betas_zero_snr:
            raise ValueError('this config describes a model without zero terminal SNR (rescale_betas_zero_snr=False); '
                             'for a ZTSNR model saved so, use ZTSNRScheduler.from_config(config, '
                             'rescale_betas_zero_snr=True)')
        if sampler not in STEP_SAMPLERS:
            raise ValueError(f'unknown sampler {sampler!r}; choose from {", ".join(STEP_SAMPLERS)}')
        if schedule not in SCHEDULES:
            raise ValueError(f'unknown schedule {schedule!r}; choose from {", ".join(SCHEDULES)}')
        if trained_betas is not None:
            betas = torch.as_tensor(trained_betas, dtype=torch.float64).flatten()
        elif beta_schedule == 'scaled_linear':
            betas = schedules.scaled_linear_betas(num_train_timesteps, beta_start, beta_end)
        elif beta_schedule == 'linear':
            betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
        else:
            raise ValueError(f"unsupported beta_schedule {beta_schedule!r}; choose from 'scaled_linear', 'linear' "
                             f"(or give trained_betas)")
        self.alphas_cumprod = schedules.rescale_zero_terminal_snr(schedules.alphas_cumprod(betas))
        self.alphas = self.alphas_cumprod / torch.cat([self.alphas_cumprod.new_ones(1), self.alphas_cumprod[:-1]])
        self.betas = 1 - self.alphas                              # the rescaled betas (the last is 1)
        self.table = table_denoiser(self.alphas_cumprod)           # σ ↔ t maps; σ(T−1) = ∞
        self.num_inference_steps = None
        t = torch.arange(len(self.alphas_cumprod) - 1, -1, -1, dtype=torch.float32)
        self._set_sigmas(torch.cat([self.table.sigmas.flip(0), self.table.sigmas.new_zeros(1)]), timesteps=t)

    # ------------------------------------------------------------------------------------------- schedule

    @property
    def init_noise_sigma(self) -> float:
        """1 when the schedule starts at ∞ (the state there is the unit noise), else the first sigma."""
        if math.isinf(self.sigmas[0]):
            return 1.
        return float(self.sigmas[0])

    @property
    def step_index(self) -> Optional[int]:
        return self._step_index

    @property
    def begin_index(self) -> Optional[int]:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """The first step's index (img2img starts part-way); set by pipelines after set_timesteps."""
        if not 0 <= begin_index < len(self.timesteps):
            raise ValueError(f'begin_index {begin_index} is outside the schedule of {len(self.timesteps)} steps')
        self._begin_index = begin_index

    def set_timesteps(self, num_inference_steps: Optional[int] = None, device: Union[str, torch.device] = None,
                      timesteps: Optional[Sequence[float]] = None, sigmas: Optional[Sequence[float]] = None) -> None:
        """The package's schedule of `num_inference_steps` model calls (∞ first), or given sigmas / timesteps."""
        if sigmas is not None:
            s = torch.as_tensor(sigmas, dtype=torch.float32).flatten()
        elif timesteps is not None:
            s = self.table.t_to_sigma(torch.as_tensor(timesteps, dtype=torch.float32).flatten())
        else:
            if num_inference_steps is None:
                raise ValueError('give num_inference_steps, timesteps or sigmas')
            s = schedule_policy.sigmas(self.table, self.config.schedule, num_inference_steps,
                                       sampler=self.config.sampler)
        if s[-1] != 0:
            s = torch.cat([s, s.new_zeros([1])])
        schedules.validate_sigmas(s)
        self._set_sigmas(s, device)
        self.num_inference_steps = len(self.timesteps)

    def _set_sigmas(self, sigmas: Tensor, device: Union[str, torch.device] = None,
                    timesteps: Optional[Tensor] = None) -> None:
        """The schedule σ₀ > … > 0, its timesteps (t(σ) unless given), and a fresh step state."""
        self.sigmas = sigmas.float().to(device)
        if timesteps is None:
            timesteps = self.table.sigma_to_t(self.sigmas[:-1].cpu(), quantize=self.config.quantize_timesteps)
        self.timesteps = timesteps.float().to(device)
        self._step_index = self._begin_index = None
        self._old_denoised = None

    def index_for_timestep(self, timestep: Union[float, Tensor]) -> int:
        """The position of `timestep` in `timesteps` (ValueError naming the schedule if it is not there)."""
        hits = (self.timesteps == torch.as_tensor(timestep, device=self.timesteps.device)).nonzero()
        if not len(hits):
            which = (f'the {self.num_inference_steps}-step schedule' if self.num_inference_steps else
                     f'the training schedule (t = {len(self.timesteps) - 1}, …, 0; call set_timesteps first)')
            raise ValueError(f'timestep {float(timestep)} is not in {which}; pass one of scheduler.timesteps')
        return hits[0].item()

    def _init_step_index(self, timestep: Union[float, Tensor]) -> None:
        self._step_index = self.index_for_timestep(timestep) if self._begin_index is None else self._begin_index

    def _check_step_index(self) -> int:
        if self._step_index >= len(self.timesteps):
            raise ValueError(f'all {len(self.timesteps)} steps of the schedule are done; call set_timesteps to start '
                             f'another')
        return self._step_index

    # ------------------------------------------------------------------------------------------- sampling

    def scale_model_input(self, sample: Tensor, timestep: Union[float, Tensor] = None) -> Tensor:
        """c_in·x (eq. 12), in float32 at least; at σ = ∞ the unit noise itself (the bypass, eq. 17-18)."""
        if self._step_index is None:
            self._init_step_index(timestep)
        _, _, c_in = v_scalings(self.sigmas[self._check_step_index()].view(1), self.config.sigma_data)
        x = sample.to(torch.promote_types(sample.dtype, torch.float32))
        return (x * c_in.to(x.device)).to(sample.dtype)

    def step(self, model_output: Tensor, timestep: Union[float, Tensor], sample: Tensor,
             generator: Optional[Union[torch.Generator, list]] = None,
             return_dict: bool = True) -> Union[SchedulerOutput, tuple]:
        """One step of the configured sampler from sigmas[i] to sigmas[i + 1]; model_output is v."""
        if self._step_index is None:
            self._init_step_index(timestep)
        i = self._check_step_index()
        sigma, sigma_next = self.sigmas[i].to(sample.device), self.sigmas[i + 1].to(sample.device)
        x = sample.to(torch.promote_types(sample.dtype, torch.float32))
        c_skip, c_out, _ = v_scalings(sigma.view(1), self.config.sigma_data)
        denoised = model_output.to(x.dtype) * c_out + x * c_skip              # eq. 1 (c_skip = 0 at ∞)
        if math.isinf(sigma):
            x_next = self._infinite_step(x, denoised, sigma_next, generator)
        else:
            x_next = getattr(self, f'_{self.config.sampler}')(x, denoised, i, generator)
        self._old_denoised = None if math.isinf(sigma) else denoised
        self._step_index += 1
        x_next = x_next.to(sample.dtype)
        return SchedulerOutput(prev_sample=x_next) if return_dict else (x_next,)

    def _noise(self, x: Tensor, generator) -> Tensor:
        return randn_tensor(x.shape, generator=generator, device=x.device, dtype=x.dtype)

    def _infinite_step(self, n: Tensor, denoised: Tensor, sigma_1: Tensor, generator) -> Tensor:
        """x₁ = σ_down·n + D(n; ∞) + σ_up·s_noise·z (eq. 9 and its ancestral limit, as sampling.infinite_step)."""
        if self.config.sampler != 'euler_ancestral' or sigma_1 == 0:
            return sigma_1 * n + denoised
        sigma_down, sigma_up = infinite_sigmas_up(sigma_1, self.config.eta)
        return sigma_down * n + denoised + self._noise(n, generator) * self.config.s_noise * sigma_up

    def _euler(self, x: Tensor, denoised: Tensor, i: int, generator) -> Tensor:
        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
        return x + to_d(x, sigma, denoised) * (sigma_next - sigma)

    def _euler_ancestral(self, x: Tensor, denoised: Tensor, i: int, generator) -> Tensor:
        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
        sigma_down, sigma_up = get_ancestral_step(sigma, sigma_next, eta=self.config.eta)
        x = x + to_d(x, sigma, denoised) * (sigma_down - sigma)
        if sigma_next > 0:
            x = x + self._noise(x, generator) * self.config.s_noise * sigma_up
        return x

    def _dpmpp_2m(self, x: Tensor, denoised: Tensor, i: int, generator) -> Tensor:
        """DPM-Solver++(2M) in t = −log σ; first order after the step from ∞ (whose D has no finite h)."""
        t, t_next = -self.sigmas[i].log(), -self.sigmas[i + 1].log()
        h = t_next - t
        if self._old_denoised is None or self.sigmas[i + 1] == 0:
            return ((-t_next).exp() / (-t).exp()) * x - (-h).expm1() * denoised
        r = (t + self.sigmas[i - 1].log()) / h
        denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * self._old_denoised
        return ((-t_next).exp() / (-t).exp()) * x - (-h).expm1() * denoised_d

    # ------------------------------------------------------------------------------------------- img2img

    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """x = x₀ + σ·n; at σ = ∞ the state is the unit noise n itself (as kdiff_ztsnr.img2img)."""
        timesteps = torch.as_tensor(timesteps).reshape(-1)
        if self._begin_index is not None:                            # img2img: the first step's σ
            idx = [self._step_index if self._step_index is not None else self._begin_index] * len(timesteps)
        else:
            idx = [self.index_for_timestep(t) for t in timesteps]
        sigma = self.sigmas[idx]
        sigma = sigma.to(original_samples.device).expand(original_samples.shape[0])
        sigma = sigma.view(-1, *[1] * (original_samples.ndim - 1))
        x0, n = original_samples.float(), noise.float()
        return torch.where(sigma.isinf(), n, x0 + n * sigma.nan_to_num(posinf=0.)).to(original_samples.dtype)

    def __len__(self) -> int:
        return self.config.num_train_timesteps
