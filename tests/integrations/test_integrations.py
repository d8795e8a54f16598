"""The kdiff_ztsnr.integrations package itself (no host needed): the network-less table denoiser the adapters
share, and the package's schedules from the model's top σ (∞ for a zero-terminal-SNR table) down to 0."""

import math

import pytest
import torch

from kdiff_ztsnr import schedule_policy, schedules
from kdiff_ztsnr.integrations import SCHEDULES, STEP_SAMPLERS, table_denoiser
from kdiff_ztsnr.sampling import SAMPLERS


def test_names():
    assert SCHEDULES == (*schedule_policy.SCHEDULE_NAMES, 'recommended')
    assert set(STEP_SAMPLERS) <= set(SAMPLERS)


def test_table_denoiser_is_the_table_without_a_network():
    ac = schedules.ztsnr_alphas_cumprod()
    model = table_denoiser(ac)
    assert list(model.parameters()) == [] and math.isinf(model.sigma_max)    # ᾱ[-1] = 0: σ = ∞ on top
    finite = ((1 - ac[:-1]) / ac[:-1]).sqrt()
    torch.testing.assert_close(model.sigmas[:-1].double(), finite.double(), rtol=1e-6, atol=0)
    sdxl = table_denoiser(schedules.sdxl_alphas_cumprod())
    assert sdxl.sigma_max.item() == pytest.approx(schedules.SDXL_SIGMA_MAX, rel=1e-6)


@pytest.mark.parametrize('kind', SCHEDULES)
@pytest.mark.parametrize('steps', [2, 4, 9])
def test_schedules_run_from_the_top_to_zero(kind, steps):
    for ac, top in [(schedules.ztsnr_alphas_cumprod(), math.inf),
                    (schedules.sdxl_alphas_cumprod(), schedules.SDXL_SIGMA_MAX)]:
        sigmas = schedule_policy.sigmas(table_denoiser(ac), kind, steps)
        assert len(sigmas) == steps + 1 and sigmas[-1] == 0, (kind, sigmas)      # `steps` model calls
        assert sigmas[0].item() == pytest.approx(top, rel=1e-6)
        assert (sigmas[1:] < sigmas[:-1]).all(), (kind, sigmas)


def test_recommended_for_each_step_sampler_depends_on_the_canvas_relative_to_the_base():
    model = table_denoiser(schedules.ztsnr_alphas_cumprod())
    for sampler in STEP_SAMPLERS:
        for side in (None, 1024, 2048):
            got = schedule_policy.sigmas(model, 'recommended', 8, sampler=sampler, side=side, base_side=1024)
            assert len(got) == 9 and math.isinf(got[0]) and got[-1] == 0 and (got[1:] < got[:-1]).all()
        assert torch.equal(schedule_policy.sigmas(model, 'recommended', 8, sampler=sampler, side=1024, base_side=1024),
                           schedule_policy.sigmas(model, 'recommended', 8, sampler=sampler, side=512, base_side=512))
