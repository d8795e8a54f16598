"""models.alphas, models.registry and models.bundle: the ᾱ table, the model families, the Pipeline's denoiser."""

import math

import pytest
import torch
from torch import nn

from kdiff_ztsnr import schedules
from kdiff_ztsnr.models.alphas import alphas_cumprod_for
from kdiff_ztsnr.models.bundle import Pipeline
from kdiff_ztsnr.models.registry import MODEL_TYPES, build_denoiser, build_model


def test_alphas_table():
    """SDXL's scaled-linear ᾱ, and its zero-terminal-SNR rescale (Lin et al.; report §2.2)."""
    plain = alphas_cumprod_for(False)
    want = schedules.alphas_cumprod(schedules.scaled_linear_betas(1000, schedules.SDXL_BETA_START,
                                                                  schedules.SDXL_BETA_END))
    assert plain.dtype == torch.float64 and torch.equal(plain, want)
    z = alphas_cumprod_for(True)
    assert z[-1] == 0 and torch.equal(z, schedules.rescale_zero_terminal_snr(plain))
    with pytest.raises(ValueError, match='scaled_linear'):
        alphas_cumprod_for(True, {'beta_schedule': 'linear'})


def test_registry_builds_and_refuses():
    config = {'model': {'type': 'module', 'target': 'torch.nn:Identity', 'sigma_max': 20000.}}
    with pytest.raises(ValueError, match=r"refused model.target 'torch.nn:Identity'.*trust_code=True"):
        build_model(config)                                                      # code runs only when trusted
    assert isinstance(build_model(config, trust_code=True), nn.Identity)
    d = build_denoiser(config, trust_code=True)
    assert float(d.sigmas[-1]) == 20000. and d.sigma_data == 1.                 # the A.2 clamp
    assert math.isinf(build_denoiser({'model': {'type': 'module', 'target': 'torch.nn:Identity'}},
                                     trust_code=True).sigmas[-1])
    with pytest.raises(ValueError, match=r"unknown model type 'gan'; expected one of \['image_v1', 'sdxl'\] "
                                         r"\(or 'module' with trust_code=True\)"):
        build_model({'model': {'type': 'gan'}})
    assert set(MODEL_TYPES) == {'image_v1', 'sdxl'}                # a closed registry ('module' is not in it)


def test_pipeline_denoiser_exact_or_clamped():
    net = nn.Conv2d(3, 3, 1)
    pipe = Pipeline(inner_model=net, alphas_cumprod=alphas_cumprod_for(True), encode_prompts=lambda p: {})
    assert pipe.zero_terminal_snr and pipe.device == torch.device('cpu')
    assert math.isinf(pipe.denoiser().sigmas[-1]) and float(pipe.denoiser(20000.).sigmas[-1]) == 20000.
    assert not Pipeline(inner_model=net, alphas_cumprod=alphas_cumprod_for(False),
                        encode_prompts=lambda p: {}).zero_terminal_snr
