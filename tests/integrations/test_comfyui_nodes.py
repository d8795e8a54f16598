"""kdiff_ztsnr.integrations.comfyui.nodes: the two nodes ComfyUI reads (their inputs, and what they return) on
the stand-in `comfy` package; the pack's imports make no ComfyUI call. The samplers' images against the
package's own: tests/integrations/test_comfyui.py."""

import math

import torch

from kdiff_ztsnr import schedule_policy, schedules
from kdiff_ztsnr.integrations import SCHEDULES, table_denoiser
from kdiff_ztsnr.integrations.comfyui import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, nodes
from kdiff_ztsnr.integrations.comfyui.sampler import SCHEDULE_SAMPLERS, sampler_options


def test_the_pack_exports_the_nodes_mappings():
    assert NODE_CLASS_MAPPINGS is nodes.NODE_CLASS_MAPPINGS and NODE_DISPLAY_NAME_MAPPINGS is \
        nodes.NODE_DISPLAY_NAME_MAPPINGS
    assert NODE_CLASS_MAPPINGS == {'KDiffZTSNRSamplerSelect': nodes.ZTSNRSamplerSelect,
                                   'KDiffZTSNRSigmas': nodes.ZTSNRSigmas}
    assert NODE_DISPLAY_NAME_MAPPINGS.keys() == NODE_CLASS_MAPPINGS.keys()


def test_inputs_offer_the_packages_samplers_and_schedules():
    for cls in NODE_CLASS_MAPPINGS.values():
        assert callable(getattr(cls(), cls.FUNCTION)) and cls.CATEGORY == nodes.CATEGORY and cls.DESCRIPTION
    sampler = nodes.ZTSNRSamplerSelect.INPUT_TYPES()['required']
    assert sampler['sampler_name'] == (list(SCHEDULE_SAMPLERS), {'default': 'euler_ancestral'})
    assert sampler['eta'][1]['default'] == sampler['s_noise'][1]['default'] == 1.
    sigmas = nodes.ZTSNRSigmas.INPUT_TYPES()
    assert sigmas['required']['schedule'] == (list(SCHEDULES), {'default': 'recommended'})
    assert sigmas['required']['steps'][1]['min'] == 1 and sigmas['required']['denoise'][1]['max'] == 1.
    assert sigmas['optional']['sampler_name'][0] == list(SCHEDULE_SAMPLERS)
    assert nodes.ZTSNRSamplerSelect.RETURN_TYPES == ('SAMPLER',) and nodes.ZTSNRSigmas.RETURN_TYPES == ('SIGMAS',)


def test_sampler_node_wraps_the_exact_sampler(comfy):
    for name in ('euler', 'euler_ancestral', 'dpmpp_2m_sde'):
        (ksampler,) = nodes.ZTSNRSamplerSelect().get_sampler(name, 0.5, 0.9)
        assert isinstance(ksampler, comfy.samplers.KSAMPLER)
        assert ksampler.sampler_function.__name__ == f'sample_{name}_ztsnr'
        assert ksampler.extra_options == sampler_options(name, 0.5, 0.9)
    assert 'eta' not in nodes.ZTSNRSamplerSelect().get_sampler('euler', 0.5)[0].extra_options   # η: where taken
    assert nodes.ZTSNRSamplerSelect().get_sampler('euler_ancestral', 0.5)[0].extra_options['eta'] == 0.5


def test_sigmas_node_is_the_schedule_with_infinity_as_the_top(comfy):
    base = comfy.model_sampling.StandInBaseModel(None, comfy.model_sampling.ModelSamplingZTSNRV())
    patcher = comfy.model_sampling.StandInModelPatcher(base)
    model = table_denoiser(schedules.ztsnr_alphas_cumprod())
    for schedule in ('karras', 'recommended'):
        (sigmas,) = nodes.ZTSNRSigmas().get_sigmas(patcher, schedule, 6, 1., 'dpmpp_2m')
        want = schedule_policy.sigmas(model, schedule, 6, sampler='dpmpp_2m')
        assert math.isinf(want[0]) and sigmas.dtype == torch.float32 and len(sigmas) == 7
        assert sigmas[0].item() == float(base.model_sampling.sigma_max)            # ∞ written as the top σ
        torch.testing.assert_close(sigmas[1:], want[1:].float(), rtol=1e-5, atol=0)
    (tail,) = nodes.ZTSNRSigmas().get_sigmas(patcher, 'karras', 3, 0.5)
    (full,) = nodes.ZTSNRSigmas().get_sigmas(patcher, 'karras', 6)
    assert torch.equal(tail, full[-4:])                                         # denoise: the last steps
