"""kdiff_ztsnr.models.sdxl.pipeline: loaded SDXL components as the package's Pipeline, and as diffusers' own."""

import math

import pytest
import torch

from kdiff_ztsnr.models.sdxl.pipeline import size_cond, to_diffusers
from kdiff_ztsnr.models.sdxl.prediction import scheduler_config
from kdiff_ztsnr.models.sdxl.vae import normalize
from tests.helpers import tiny_pipeline


@pytest.fixture(scope='module')
def pipe():
    return tiny_pipeline()


def test_size_cond_is_the_canvas():
    ids = size_cond(96, 64, 2)['add_time_ids']
    assert ids.tolist() == [[64., 96., 0., 0., 64., 96.]] * 2                 # (h, w) original = target


def test_pipeline_fields(pipe):
    c = pipe.components
    assert pipe.inner_model.unet is c['unet'] and pipe.inner_model.vae_factor == 8
    assert (pipe.channels, pipe.factor, pipe.size_multiple, pipe.base_side) == (4, 8, 8, 1024)
    assert pipe.max_chunks == c['text'].chunk_kwargs['max_chunks'] and pipe.name == 'tiny'
    assert pipe.zero_terminal_snr and math.isinf(pipe.denoiser().sigmas[-1])
    assert not tiny_pipeline(zero_terminal_snr=False).zero_terminal_snr
    cond = pipe.encode_prompts(['a cat', 'a dog'])
    assert cond['context'].shape == (2, 77, 80) and cond['pooled'].shape == (2, 40)   # CLIP-L 32 ⊕ bigG 48
    assert not cond['context'].requires_grad                                        # encoded without grad


def test_codec_is_the_normalised_vae(pipe):
    vae, x = pipe.components['vae'], torch.rand(1, 3, 64, 32) * 2 - 1
    with torch.no_grad():
        z = pipe.encode(x)
        torch.testing.assert_close(z, normalize(vae.encode(x).latent_dist.mode(), 0., 1 / 0.13025))
        img = pipe.decode(z)
    assert z.shape == (1, 4, 8, 4) and img.shape == (1, 3, 64, 32) and not img.requires_grad


def test_to_diffusers_shares_the_modules(pipe):
    from diffusers import EulerDiscreteScheduler
    d = to_diffusers(pipe, EulerDiscreteScheduler.from_config(scheduler_config(True)))
    c = pipe.components
    assert d.unet is c['unet'] and d.vae is c['vae']
    assert d.text_encoder is c['text'].encoders[0] and d.text_encoder_2 is c['text'].encoders[1]
    assert d.tokenizer_2 is c['text'].tokenizers[1] and d.scheduler.config.prediction_type == 'v_prediction'
