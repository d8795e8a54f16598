"""kdiff_ztsnr.training.pixel: the trainer's pixel-space family (image_v1 / module) behind the family interface."""

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from kdiff_ztsnr.training.pixel import PixelTraining

MODEL = {'type': 'image_v1', 'input_channels': 3, 'mapping_out': 16, 'depths': [1, 1], 'channels': [8, 16],
         'self_attn_depths': [False, True]}
TEXT = {'type': 'clip', 'encoders': [{'hidden_size': 16, 'intermediate_size': 32, 'num_hidden_layers': 1,
                                      'num_attention_heads': 2, 'projection_dim': None}],
        'seed': 0, 'max_chunks': 3, 'layer': -2, 'final_norm': False}


def test_images_train_as_they_are():
    fam = PixelTraining({'model': MODEL, 'text': {'type': 'none'}})
    assert fam.text is None and not fam.train_text and not fam.previews
    assert fam.to('cpu') is fam and fam.text_groups({'lr': 1.}) == []
    x0 = torch.rand(2, 3, 8, 8) * 2 - 1
    x, cond = fam.prepare({'x0': x0, 'caption': ['a', 'b']}, 'cpu')
    assert x is x0 and cond == {}
    data = object()
    assert fam.prepare_dataset({}, data, None, 0) is data


def test_build_inner_is_the_configs_network():
    fam = PixelTraining({'model': MODEL, 'text': {'type': 'none'}})
    inner = fam.build_inner({'model': MODEL})
    assert type(inner).__name__ == 'ImageV1Inner'
    custom = {'model': {'type': 'module', 'target': 'torch.nn:Identity'}}
    with pytest.raises(ValueError, match='refused model.target'):
        fam.build_inner(custom)
    assert isinstance(fam.build_inner(custom, trust_code=True), torch.nn.Identity)


def test_export_keeps_random_encoders_beside_the_model(tmp_path):
    fam = PixelTraining({'model': MODEL, 'text': TEXT})
    assert not any(p.requires_grad for p in fam.text.parameters())                 # frozen
    fam.export(tmp_path, ema=None, step=3, meta={'step': 3})
    saved = load_file(str(tmp_path / 'text.safetensors'))
    own = fam.text.state_dict()
    assert saved.keys() == own.keys() and all(torch.equal(saved[k], own[k]) for k in own)
    with safe_open(str(tmp_path / 'text.safetensors'), 'pt') as f:
        assert f.metadata() == {'step': '3'}
    none = tmp_path / 'none'
    none.mkdir()
    PixelTraining({'model': MODEL, 'text': {'type': 'none'}}).export(none, ema=None, step=3)
    assert list(none.iterdir()) == []
