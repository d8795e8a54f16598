"""kdiff_ztsnr.models.trained: the trainer's checkpoint format read back as a stranger's file: identical weights,
a Pipeline from its metadata, and every malformed part one ValueError naming the file."""

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from kdiff_ztsnr.files import save_weights
from kdiff_ztsnr.models import trained
from kdiff_ztsnr.models.registry import build_model
from kdiff_ztsnr.models.trained import load_trained, read_metadata, resolve_checkpoint, trained_pipeline
from kdiff_ztsnr.text import build_text

MODEL = {'type': 'image_v1', 'input_channels': 3, 'mapping_out': 16, 'depths': [1, 1], 'channels': [8, 16],
         'self_attn_depths': [False, True], 'sigma_data': 0.5}
TEXT = {'type': 'clip', 'encoders': [{'hidden_size': 16, 'intermediate_size': 32, 'num_hidden_layers': 1,
                                      'num_attention_heads': 2, 'projection_dim': None}],
        'seed': 0, 'max_chunks': 2, 'layer': -2, 'final_norm': False}
CONFIG = {'model': dict(MODEL, cross_cond_dim=16, mapping_cond_dim=16), 'text': TEXT}


def write_checkpoint(ckpt, config=CONFIG, base_side=16, text=True):
    """A checkpoint as the trainer writes it: ema/model.safetensors with config metadata, text.safetensors."""
    ckpt.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    inner = build_model(config)
    for p in inner.parameters():
        torch.nn.init.normal_(p, std=0.1)              # not k-diffusion's zero init: every tensor distinct
    meta = {'config': json.dumps(config), 'step': 7, 'base_side': base_side}
    save_weights(inner, ckpt / 'ema.safetensors', meta)
    save_weights(inner, ckpt / 'model.safetensors', meta)
    cond = build_text(config['text'])
    if text and cond is not None:
        for p in cond.parameters():
            p.data.add_(1.)                            # unlike the seed's random encoders
        save_weights(cond, ckpt / 'text.safetensors', meta)
    return inner, cond


def same(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_load_trained_round_trip(tmp_path):
    inner, cond = write_checkpoint(tmp_path / 'ckpt')
    model, text, meta = load_trained(tmp_path / 'ckpt')
    assert same(model.inner_model, inner) and same(text, cond)
    assert meta['config'] == CONFIG and meta['step'] == '7' and meta['base_side'] == '16'
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    assert math.isinf(model.t_to_sigma(torch.tensor(999.)).item()) and model.sigma_data == 0.5


def test_random_encoders_without_a_text_file_come_from_the_seed(tmp_path):
    write_checkpoint(tmp_path / 'ckpt', text=False)
    _, text, _ = load_trained(tmp_path / 'ckpt', ema=False)
    assert same(text, build_text(TEXT))


def test_trained_pipeline(tmp_path):
    write_checkpoint(tmp_path / 'ckpt', base_side=32)
    pipe = trained_pipeline(tmp_path / 'ckpt', name='mine')
    assert (pipe.channels, pipe.factor, pipe.base_side, pipe.size_multiple, pipe.max_chunks) == (3, 1, 32, 2, 2)
    assert pipe.name == 'mine' and pipe.zero_terminal_snr and pipe.sigma_data == 0.5
    assert json.loads(pipe.info['config']) == CONFIG
    cond = pipe.encode_prompts(['a cat'])
    assert cond['context'].shape == (1, 77, 16) and cond['pooled'].shape == (1, 16)
    assert pipe.components['text'].chunk_kwargs['truncate'] is True
    ordinary = dict(CONFIG, model=dict(CONFIG['model'], zero_terminal_snr=False))
    write_checkpoint(tmp_path / 'plain', config=ordinary)
    assert not trained_pipeline(tmp_path / 'plain').zero_terminal_snr


def test_resolve_checkpoint(tmp_path):
    write_checkpoint(tmp_path / 'run' / 'step-2', text=False)
    assert resolve_checkpoint(tmp_path / 'run' / 'step-2') == tmp_path / 'run' / 'step-2'
    (tmp_path / 'run' / 'latest').write_text('step-2\n')
    assert resolve_checkpoint(tmp_path / 'run') == tmp_path / 'run' / 'step-2'
    (tmp_path / 'state').mkdir()
    (tmp_path / 'state' / 'state.pt').write_bytes(b'')
    assert resolve_checkpoint(tmp_path / 'state') == tmp_path / 'state'
    for bad in ('../../etc', '..', '', 'a/b'):
        (tmp_path / 'run' / 'latest').write_text(bad)
        with pytest.raises(ValueError, match=r'run/latest: must name a checkpoint folder inside'):
            resolve_checkpoint(tmp_path / 'run')
    with pytest.raises(FileNotFoundError, match=r'empty is neither a checkpoint directory nor an out_dir'):
        resolve_checkpoint(tmp_path / 'empty')


@pytest.mark.parametrize('metadata, phrase', [
    ({}, 'no training config in its metadata'),
    ({'config': '{'}, 'its config metadata is not valid JSON'),
    ({'config': '[1]'}, 'must be a JSON object with a "model" object'),
    ({'config': '{"model": []}'}, 'must be a JSON object with a "model" object'),
    ({'config': ' ' * (trained.MAX_CONFIG + 1)}, f'(at most {trained.MAX_CONFIG})'),
])
def test_read_metadata_names_the_file(tmp_path, metadata, phrase):
    save_file({'w': torch.zeros(1)}, str(tmp_path / 'ema.safetensors'), metadata=metadata)
    with pytest.raises(ValueError, match=r'ema\.safetensors: .*' + phrase.replace('(', r'\(').replace(')', r'\)')
                       .replace('[', r'\[')):
        read_metadata(tmp_path / 'ema.safetensors')


def test_malformed_checkpoints_are_one_error_naming_the_file(tmp_path):
    plain = dict(CONFIG, text={'type': 'none'}, model=dict(MODEL))
    inner, _ = write_checkpoint(tmp_path / 'grown', config=plain)
    grown = dict(plain, model=dict(MODEL, channels=[8, 32]))                   # its config ≠ its weights
    save_weights(inner, tmp_path / 'grown' / 'ema.safetensors', {'config': json.dumps(grown), 'base_side': 16})
    with pytest.raises(ValueError, match=r'grown/ema\.safetensors: weights do not fit the model of its config'):
        load_trained(tmp_path / 'grown')
    bad = dict(plain, model=dict(MODEL, depths=[1]))                           # its lists disagree
    save_weights(inner, tmp_path / 'grown' / 'ema.safetensors', {'config': json.dumps(bad), 'base_side': 16})
    with pytest.raises(ValueError, match=r'grown/ema\.safetensors: its config cannot build a model'):
        load_trained(tmp_path / 'grown')
    write_checkpoint(tmp_path / 'side', config=plain, base_side=0)
    with pytest.raises(ValueError, match=r'side: its metadata does not describe a sampling setup.*base_side 0'):
        trained_pipeline(tmp_path / 'side')


def test_module_networks_are_never_imported(tmp_path):
    """A 'module' checkpoint names code: refused by name; its network comes from the caller."""
    custom = {'model': {'type': 'module', 'target': 'os:system', 'kwargs': {}}, 'text': {'type': 'none'}}
    conv = torch.nn.Conv2d(3, 3, 1)
    (tmp_path / 'c').mkdir()
    save_weights(conv, tmp_path / 'c' / 'ema.safetensors', {'config': json.dumps(custom), 'base_side': 16})
    with pytest.raises(ValueError, match=r"c/ema\.safetensors: model\.type \"module\" names code \('os:system'\).*"
                                         r"never imported.*inner_model=network"):
        load_trained(tmp_path / 'c')
    mine = torch.nn.Conv2d(3, 3, 1)
    model, text, _ = load_trained(tmp_path / 'c', inner_model=mine)
    assert model.inner_model is mine and same(mine, conv) and text is None
