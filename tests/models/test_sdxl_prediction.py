"""kdiff_ztsnr.models.sdxl.prediction: what a checkpoint says about its prediction type and schedule."""

import math
import warnings

import pytest
import torch

from kdiff_ztsnr import schedules
from kdiff_ztsnr.models.alphas import alphas_cumprod_for
from kdiff_ztsnr.models.sdxl.prediction import describe, markers, resolve_prediction, scheduler_config


@pytest.mark.parametrize('keys, expected', [
    (['v_pred', 'ztsnr', 'model.x'], ('v', True)),
    (['v_pred', 'model.x'], ('v', False)),            # ComfyUI: v-prediction on SDXL's ordinary schedule
    (['model.x'], (None, None)),                      # no marker: nothing known
    (['ztsnr'], (None, True)),                        # ztsnr alone says the schedule, not the prediction
])
def test_markers(keys, expected):
    assert markers(keys) == expected
    assert markers(iter(keys)) == expected


def test_resolve_prediction_needs_v():
    with pytest.raises(ValueError, match=r"m\.safetensors.*cannot tell the prediction type.*prediction_type"):
        resolve_prediction(None, None, None, None, 'm.safetensors')
    with pytest.raises(ValueError, match=r"m\.safetensors.*'epsilon'.*v-prediction models only"):
        resolve_prediction(None, None, 'epsilon', None, 'm.safetensors')
    assert resolve_prediction('v', True, None, None, 'm') is True
    assert resolve_prediction('v', False, None, None, 'm') is False
    assert resolve_prediction(None, None, 'v_prediction', True, 'm') is True     # both overridden
    assert resolve_prediction('v', True, None, False, 'm') is False              # the override wins


def test_resolve_prediction_warns_without_schedule_information():
    with pytest.warns(UserWarning, match=r'm: no zero-terminal-SNR information.*zero_terminal_snr=True'):
        assert resolve_prediction(None, None, 'v', None, 'm') is False
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        resolve_prediction('v', False, None, None, 'm')


def test_describe():
    assert describe('v', True, None, None, 'markers') == 'v-prediction (markers), zero-terminal-SNR table on (markers)'
    assert describe(None, None, 'v', False, 'markers') == \
        'v-prediction (--prediction v), zero-terminal-SNR table off (--ztsnr-table)'
    assert describe(None, None, None, None, 'markers').startswith('prediction type unknown, no zero-terminal-SNR')


@pytest.mark.parametrize('ztsnr', [True, False])
def test_scheduler_config_is_the_packages_table_in_diffusers(ztsnr):
    """diffusers reads the config as v-prediction on SDXL's betas; with rescale_betas_zero_snr its ᾱ is the
    package's zero-terminal-SNR table (diffusers stores ᾱ_T = 2⁻²⁴ for ᾱ_T = 0, i.e. σ = ∞)."""
    from diffusers import EulerDiscreteScheduler
    c = scheduler_config(ztsnr)
    assert (c['prediction_type'], c['rescale_betas_zero_snr']) == ('v_prediction', ztsnr)
    assert c['timestep_spacing'] == ('trailing' if ztsnr else 'leading')
    assert (c['beta_start'], c['beta_end'], c['num_train_timesteps']) == \
        (schedules.SDXL_BETA_START, schedules.SDXL_BETA_END, schedules.NUM_TIMESTEPS)
    sched = EulerDiscreteScheduler.from_config(c)
    ours = alphas_cumprod_for(ztsnr)
    torch.testing.assert_close(sched.alphas_cumprod[:-1].double(), ours[:-1], rtol=1e-5, atol=1e-7)
    if ztsnr:
        assert ours[-1] == 0 and sched.alphas_cumprod[-1].item() == 2 ** -24
    else:
        assert math.isclose(sched.alphas_cumprod[-1].item(), ours[-1].item(), rel_tol=1e-5)
