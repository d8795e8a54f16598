"""Stand-in for comfy.samplers.KSAMPLER: scale the unit noise by sigmas[0] (√(1 + σ²) at the model's σ_max),
call the sampler function fn(model, x, sigmas, extra_args=, callback=, disable=, **extra_options)."""

import math


class KSamplerX0Inpaint:
    """The wrapper a sampler function receives as `model`: model(x, σ, **extra_args); .inner_model = guider."""

    def __init__(self, guider):
        self.inner_model = guider

    def __call__(self, x, sigma, **extra_args):
        return self.inner_model(x, sigma, **extra_args)


class KSAMPLER:
    def __init__(self, sampler_function, extra_options=None, inpaint_options=None):
        self.sampler_function = sampler_function
        self.extra_options = {} if extra_options is None else extra_options
        self.inpaint_options = {} if inpaint_options is None else inpaint_options

    def sample(self, guider, sigmas, extra_args, callback, noise, latent_image=None, disable_pbar=False):
        ms = guider.inner_model.model_sampling
        top, s0 = float(ms.sigma_max), float(sigmas[0])
        max_denoise = math.isclose(top, s0, rel_tol=1e-5) or s0 > top
        latent = noise * 0 if latent_image is None else latent_image
        x = ms.noise_scaling(sigmas[0], noise, latent, max_denoise)
        out = self.sampler_function(KSamplerX0Inpaint(guider), x, sigmas, extra_args=extra_args, callback=callback,
                                    disable=disable_pbar, **self.extra_options)
        return ms.inverse_noise_scaling(sigmas[-1], out)
