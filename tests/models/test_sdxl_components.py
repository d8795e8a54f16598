"""kdiff_ztsnr.models.sdxl.components: the shipped SDXL configs, or given ones, and models built from them alone."""

import json

import pytest
import torch

from kdiff_ztsnr.models.sdxl import components
from kdiff_ztsnr.models.sdxl.components import (
    COMPONENTS,
    DEFAULT_CONFIGS,
    SGM_PREFIXES,
    build_component,
    component_config,
)
from tests.helpers import TINY


def test_shipped_configs_are_full_size_sdxl():
    assert set(DEFAULT_CONFIGS) == set(SGM_PREFIXES) == set(COMPONENTS)
    c = {k: component_config(None, k) for k in COMPONENTS}
    assert c['unet']['block_out_channels'] == [320, 640, 1280] and c['unet']['cross_attention_dim'] == 2048
    assert c['unet']['projection_class_embeddings_input_dim'] == 2816          # pooled 1280 + 6 × 256
    assert c['vae']['latent_channels'] == 4 and c['vae']['scaling_factor'] == 0.13025
    assert (c['text_encoder']['hidden_size'], c['text_encoder_2']['hidden_size']) == (768, 1280)
    assert c['text_encoder']['hidden_size'] + c['text_encoder_2']['hidden_size'] == c['unet']['cross_attention_dim']
    assert components.BASE_SIDE == 1024


def test_config_from_dict_is_a_copy_and_from_file_is_read(tmp_path):
    given = {'hidden_size': 32}
    got = component_config(given, 'text_encoder')
    got['hidden_size'] = 64
    assert given == {'hidden_size': 32}
    (tmp_path / 'unet.json').write_text(json.dumps(TINY['unet']))
    assert component_config(tmp_path / 'unet.json', 'unet') == TINY['unet']
    (tmp_path / 'list.json').write_text('[1, 2]')
    with pytest.raises(ValueError, match=r'list\.json'):
        component_config(tmp_path / 'list.json', 'unet')


def test_build_component_from_config_alone():
    torch.manual_seed(0)
    unet = build_component('unet', TINY['unet'])
    assert type(unet).__name__ == 'UNet2DConditionModel' and list(unet.config.block_out_channels) == [16, 32, 32]
    assert type(build_component('vae', TINY['vae'])).__name__ == 'AutoencoderKL'
    te = build_component('text_encoder', TINY['text_encoder'])
    te2 = build_component('text_encoder_2', TINY['text_encoder_2'])
    assert type(te).__name__ == 'CLIPTextModel' and te.config.hidden_size == 32
    assert type(te2).__name__ == 'CLIPTextModelWithProjection' and te2.text_projection.weight.shape == (40, 48)


def test_empty_builds_on_the_meta_device():
    full = {k: component_config(None, k) for k in COMPONENTS}
    for c in COMPONENTS:                                           # full-size SDXL: no byte allocated
        assert {p.device.type for p in build_component(c, full[c], empty=True).parameters()} == {'meta'}
