"""ComfyUI nodes: a SAMPLER with the exact first step from σ = ∞ and a SIGMAS node with the package's schedules.

``comfy`` is imported inside the node functions only, so this module (and the tests' stand-in) loads without
ComfyUI. Wire them into ComfyUI's SamplerCustom / SamplerCustomAdvanced: SAMPLER ← "KSamplerSelect (exact
σ=∞)", SIGMAS ← "ZTSNR schedule (σ=∞)" (or any scheduler whose first sigma is the model's σ_max).
"""

from kdiff_ztsnr.integrations import SCHEDULES

from .sampler import SCHEDULE_SAMPLERS, comfy_sigmas, exact_sampler_function, model_sampling_of, sampler_options

CATEGORY = 'sampling/custom_sampling/ztsnr'


class ZTSNRSamplerSelect:
    """SAMPLER: one of the package's samplers; a schedule starting at the model's top σ starts at σ = ∞."""

    RETURN_TYPES = ('SAMPLER',)
    FUNCTION = 'get_sampler'
    CATEGORY = CATEGORY
    DESCRIPTION = ('The exact first step from sigma = inf (NAI Diffusion V3 report, appendix A) for v-prediction '
                   'zero-terminal-SNR models, then the chosen k-diffusion sampler. Ancestral noise continues the '
                   'noise seed\'s CPU stream after the initial noise (SDE: a Brownian tree from the seed); '
                   'v-prediction models only.')

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {'required': {
            'sampler_name': (list(SCHEDULE_SAMPLERS), {'default': 'euler_ancestral'}),
            'eta': ('FLOAT', {'default': 1.0, 'min': 0.0, 'max': 100.0, 'step': 0.01}),
            's_noise': ('FLOAT', {'default': 1.0, 'min': 0.0, 'max': 100.0, 'step': 0.01}),
        }}

    def get_sampler(self, sampler_name: str, eta: float = 1., s_noise: float = 1.) -> tuple:
        import comfy.samplers
        fn = exact_sampler_function(sampler_name)
        return (comfy.samplers.KSAMPLER(fn, extra_options=sampler_options(sampler_name, eta, s_noise)),)


class ZTSNRSigmas:
    """SIGMAS: the package's schedules from σ = ∞ (written as the model's top σ), ending in 0."""

    RETURN_TYPES = ('SIGMAS',)
    FUNCTION = 'get_sigmas'
    CATEGORY = CATEGORY
    DESCRIPTION = ('Schedules from sigma = inf for zero-terminal-SNR models (native = the report\'s, '
                   'recommended = the package default for the chosen sampler, as kdiff-ztsnr generate uses). '
                   'Use with KSamplerSelect (exact) and the same sampler_name.')

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {'required': {
            'model': ('MODEL',),
            'schedule': (list(SCHEDULES), {'default': 'recommended'}),
            'steps': ('INT', {'default': 28, 'min': 1, 'max': 10000}),
            'denoise': ('FLOAT', {'default': 1.0, 'min': 0.01, 'max': 1.0, 'step': 0.01}),
        }, 'optional': {
            'sampler_name': (list(SCHEDULE_SAMPLERS), {'default': 'euler_ancestral'}),
        }}

    def get_sigmas(self, model, schedule: str, steps: int, denoise: float = 1.,
                   sampler_name: str = 'euler_ancestral') -> tuple:
        return (comfy_sigmas(model_sampling_of(model), schedule, steps, denoise, sampler_name),)


NODE_CLASS_MAPPINGS = {'KDiffZTSNRSamplerSelect': ZTSNRSamplerSelect, 'KDiffZTSNRSigmas': ZTSNRSigmas}
NODE_DISPLAY_NAME_MAPPINGS = {'KDiffZTSNRSamplerSelect': 'KSamplerSelect (exact σ=∞)',
                              'KDiffZTSNRSigmas': 'ZTSNR schedule (σ=∞)'}
