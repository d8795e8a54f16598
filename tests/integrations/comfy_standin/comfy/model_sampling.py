"""Stand-in for a ComfyUI v-prediction model_sampling with a ZTSNR table clamped at ᾱ = 4.8973451890853435e-08.

Interface: .sigmas (float32 [T]), .sigma_min, .sigma_max, .sigma_data, .timestep(σ) (nearest table index in
log σ, an integer as ComfyUI's), .calculate_input, .calculate_denoised, .noise_scaling, .inverse_noise_scaling.
"""

import math

import torch

from kdiff_ztsnr import schedules

COMFY_ZSNR_ALPHA = 4.8973451890853435e-08


class EPS:
    """comfy.model_sampling's prediction classes: the pack reads the prediction type from the class names."""


class V_PREDICTION(EPS):
    pass


class ModelSamplingZTSNRV(torch.nn.Module, V_PREDICTION):
    def __init__(self, sigma_data: float = 1.):
        super().__init__()
        ac = schedules.ztsnr_alphas_cumprod().clone()
        ac[-1] = COMFY_ZSNR_ALPHA
        sigmas = ((1 - ac) / ac).sqrt()
        self.register_buffer('sigmas', sigmas.float())
        self.register_buffer('log_sigmas', sigmas.log().float())
        self.sigma_data = sigma_data

    @property
    def sigma_min(self):
        return self.sigmas[0]

    @property
    def sigma_max(self):
        return self.sigmas[-1]

    def timestep(self, sigma):
        return (sigma.log()[None] - self.log_sigmas[:, None]).abs().argmin(0).view(sigma.shape)

    def calculate_input(self, sigma, x):
        return x / (sigma.view(-1, *[1] * (x.ndim - 1)) ** 2 + self.sigma_data ** 2).sqrt()

    def calculate_denoised(self, sigma, v, x):
        s, sd = sigma.view(-1, *[1] * (x.ndim - 1)), self.sigma_data
        return x * sd ** 2 / (s ** 2 + sd ** 2) - v * s * sd / (s ** 2 + sd ** 2).sqrt()

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        scale = math.sqrt(1 + float(sigma) ** 2) if max_denoise else float(sigma)
        return noise * scale + latent_image

    def inverse_noise_scaling(self, sigma, latent):
        return latent


class StandInBaseModel(torch.nn.Module):
    """A BaseModel: apply_model(x, σ) = calculate_denoised(σ, F(calculate_input(σ, x), timestep(σ)), x)."""

    def __init__(self, diffusion_model, model_sampling):
        super().__init__()
        self.diffusion_model, self.model_sampling = diffusion_model, model_sampling

    def apply_model(self, x, sigma, cond=None, **kwargs):
        t = self.model_sampling.timestep(sigma).float()
        v = self.diffusion_model(self.model_sampling.calculate_input(sigma, x), t, cond)
        return self.model_sampling.calculate_denoised(sigma, v, x)


class StandInGuider:
    """CFG on the denoised output, as ComfyUI's guider: uncond + (cond − uncond)·cfg; .inner_model = BaseModel."""

    def __init__(self, base_model, cond=None, uncond=None, cfg: float = 1.):
        self.inner_model, self.cond, self.uncond, self.cfg = base_model, cond, uncond, cfg

    def __call__(self, x, sigma, model_options=None, seed=None):
        d_cond = self.inner_model.apply_model(x, sigma, self.cond)
        if self.uncond is None or self.cfg == 1.:
            return d_cond
        d_uncond = self.inner_model.apply_model(x, sigma, self.uncond)
        return d_uncond + (d_cond - d_uncond) * self.cfg


class StandInModelPatcher:
    def __init__(self, base_model):
        self.model = base_model

    def get_model_object(self, name):
        return getattr(self.model, name)
