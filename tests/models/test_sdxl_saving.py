"""kdiff_ztsnr.models.sdxl.saving: an SDXL Pipeline as a diffusers folder or one SGM single file with ComfyUI's
markers; what is written reads back as identical tensors."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from kdiff_ztsnr.models.sdxl.keys import sgm_state_dict
from kdiff_ztsnr.models.sdxl.prediction import scheduler_config
from kdiff_ztsnr.models.sdxl.saving import MODEL_INDEX, save_pretrained, save_single_file
from tests.helpers import tiny_pipeline


@pytest.fixture(scope='module')
def pipe():
    return tiny_pipeline()


def test_single_file_is_the_sgm_state_dict_with_markers(pipe, tmp_path):
    save_single_file(pipe, tmp_path / 'm.safetensors')
    sd = load_file(str(tmp_path / 'm.safetensors'))
    c = pipe.components
    ref = sgm_state_dict(c['unet'], c['vae'], *c['text'].encoders)
    assert sd.keys() == ref.keys() | {'v_pred', 'ztsnr'}
    assert sd['v_pred'].numel() == 0 and sd['ztsnr'].numel() == 0
    assert all(torch.equal(sd[k], ref[k]) for k in ref)
    with safe_open(str(tmp_path / 'm.safetensors'), 'pt') as f:
        assert f.metadata() == {'format': 'pt'}


def test_single_file_of_an_ordinary_schedule_has_no_ztsnr_marker(tmp_path):
    save_single_file(tiny_pipeline(zero_terminal_snr=False), tmp_path / 'plain.safetensors')
    with safe_open(str(tmp_path / 'plain.safetensors'), 'pt') as f:
        keys = set(f.keys())
    assert 'v_pred' in keys and 'ztsnr' not in keys


def test_diffusers_folder_reads_back_identically(pipe, tmp_path):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer
    save_pretrained(pipe, tmp_path / 'f')
    f = tmp_path / 'f'
    assert json.loads((f / 'model_index.json').read_text()) == MODEL_INDEX
    assert json.loads((f / 'scheduler' / 'scheduler_config.json').read_text()) == scheduler_config(True)
    c = pipe.components
    for loaded, orig in [(UNet2DConditionModel.from_pretrained(f / 'unet'), c['unet']),
                         (AutoencoderKL.from_pretrained(f / 'vae'), c['vae']),
                         (CLIPTextModelWithProjection.from_pretrained(f / 'text_encoder_2'), c['text'].encoders[1])]:
        a, b = loaded.state_dict(), orig.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    tok = CLIPTokenizer.from_pretrained(f / 'tokenizer_2')
    assert tok('a cat').input_ids == c['text'].tokenizers[1]('a cat').input_ids
