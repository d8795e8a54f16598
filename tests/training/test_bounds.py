"""kdiff_ztsnr.training.bounds: a merged config bounded as a whole, each product named by its keys."""

import pytest
import torch

from kdiff_ztsnr.models.registry import build_model
from kdiff_ztsnr.training import bounds
from kdiff_ztsnr.training.bounds import bucket_plan, check_bounds, network_bytes

SMALL_MODEL = {'type': 'image_v1', 'input_channels': 3, 'mapping_out': 16, 'depths': [1, 1], 'channels': [8, 16],
               'self_attn_depths': [False, True]}
ENCODER = {'hidden_size': 16, 'intermediate_size': 32, 'num_hidden_layers': 1, 'num_attention_heads': 2,
           'projection_dim': None}


def config(**sections) -> dict:
    c = {'model': dict(SMALL_MODEL), 'dataset': {'type': 'folder', 'buckets': None},
         'training': {'batch_size': 4}, 'text': {'type': 'none'}}
    for k, v in sections.items():
        c[k] = {**c[k], **v}
    return c


def test_bucket_plan():
    assert bucket_plan(config()) == (2 * ((1024 - 256) // 64 + 1) + 1, 512 * 768)   # the defaults
    b = {'max_area': 256, 'max_side': 32, 'min_side': 16, 'step': 16, 'extra': [[16, 16], [64, 64]]}
    assert bucket_plan(config(dataset={'buckets': b})) == (2 * 2 + 2, 64 * 64)        # an extra is largest


def test_network_bytes_on_the_meta_device():
    assert network_bytes(lambda: torch.nn.Linear(10, 10)) == (100 + 10) * 4
    assert network_bytes(lambda: torch.nn.Linear(1 << 20, 1 << 20)) == ((1 << 40) + (1 << 20)) * 4  # 4 TiB, unbuilt

    def broken():
        raise KeyError('channels')
    assert network_bytes(broken) == 0                     # the real build reports it, by key


def test_a_small_config_passes():
    small = config(text={'type': 'clip', 'encoders': [ENCODER], 'seed': 0, 'max_chunks': 3, 'layer': -2,
                         'final_norm': False, 'cache': 16})
    check_bounds(small)                                   # nothing refused
    check_bounds(config())
    assert 0 < network_bytes(lambda: build_model(small)) < bounds.MAX_NETWORK_BYTES


@pytest.mark.parametrize('sections, keys', [
    ({'dataset': {'buckets': {'max_side': 65536, 'min_side': 4, 'step': 4}}},
     r'dataset\.buckets \(max_side − min_side\) / step'),
    ({'training': {'batch_size': 1 << 12}}, r'training\.batch_size × dataset\.buckets'),
    ({'dataset': {'type': 'synthetic', 'synthetic': {'n': 1 << 20, 'sizes': [[4096, 4096]]}}},
     r'dataset\.synthetic\.n × sizes'),
    ({'training': {'preview_every': 1, 'preview': {'prompts': ['x'] * 64, 'steps': 2000}}}, r'training\.preview'),
    ({'text': {'type': 'clip', 'encoders': [dict(ENCODER, hidden_size=16384, intermediate_size=65536,
                                                 num_hidden_layers=64, num_attention_heads=128)],
               'seed': 0, 'max_chunks': 3, 'layer': -2, 'final_norm': False, 'cache': 1}}, r'text\.encoders'),
    ({'text': {'type': 'clip', 'encoders': [ENCODER], 'seed': 0, 'max_chunks': 100, 'layer': -2,
               'final_norm': False, 'cache': 1 << 24}}, r'text\.cache'),
    ({'model': {'channels': [1 << 16, 1 << 16]}}, r'model\.channels / depths'),
])
def test_each_product_is_named_by_its_keys(sections, keys):
    with pytest.raises(ValueError, match=keys + r': .* more than the limit'):
        check_bounds(config(**sections))


def test_previews_count_only_when_on():
    preview = {'prompts': ['x'] * 64, 'steps': 2000}                     # 64 × 1024² × 2000 pixel-steps
    assert 64 * 1024 * 1024 * 2000 > bounds.MAX_PREVIEW_WORK
    check_bounds(config(training={'preview': preview}))                    # preview_every unset: no previews
