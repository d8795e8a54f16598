"""kdiff_ztsnr.text.build: text conditioners from a config's ``text`` section (random CLIP encoders from a seed
without touching the global RNG, a diffusers folder, none), their widths, and the training prompt cache that
must encode exactly as the conditioner does."""

import pytest
import torch
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from kdiff_ztsnr.text import build
from kdiff_ztsnr.text.encode import TextConditioner

ENCODERS = [{'hidden_size': 16, 'intermediate_size': 32, 'num_hidden_layers': 1, 'num_attention_heads': 2},
            {'hidden_size': 24, 'intermediate_size': 32, 'num_hidden_layers': 2, 'num_attention_heads': 2,
             'projection_dim': 8}]


def section(**kw) -> dict:
    return {'type': 'clip', 'encoders': ENCODERS, 'seed': 3, 'max_chunks': 3, 'layer': -2, 'final_norm': False, **kw}


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope='module')
def cond():
    return build.build_text(section())


def test_encoders_from_a_seed_leave_the_global_rng_alone():
    torch.manual_seed(123)
    a = build.build_text_encoders(section())
    after = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(3), after)                                # the global stream did not move
    assert [type(e) for e in a] == [CLIPTextModel, CLIPTextModelWithProjection]
    assert a[1].config.projection_dim == 8 and a[0].config.hidden_size == 16
    assert ENCODERS[1]['projection_dim'] == 8                                 # the config is not consumed
    b, c = build.build_text_encoders(section()), build.build_text_encoders(section(seed=4))
    assert all(same_weights(x, y) for x, y in zip(a, b)) and not same_weights(a[0], c[0])


def test_build_text_is_frozen_and_configured(cond):
    assert isinstance(cond, TextConditioner) and not cond.training
    assert not any(p.requires_grad for p in cond.parameters())
    assert (cond.layer, cond.final_norm, cond.chunk_kwargs['max_chunks']) == (-2, False, 3)
    assert build.build_text(section(type='none')) is None
    last = build.build_text(section(layer=-1, final_norm=True, max_chunks=None))
    assert (last.layer, last.final_norm, last.chunk_kwargs['max_chunks']) == (-1, True, None)
    with pytest.raises(ValueError, match="^unknown text type 'clap'; expected 'clip', 'pretrained' or 'none'$"):
        build.build_text(section(type='clap'))


def test_text_dims_are_the_summed_context_and_the_last_pooled_width(cond):
    assert build.text_dims(cond) == (16 + 24, 8)
    out = cond(['a cat'])
    assert out['context'].shape == (1, 77, 40) and out['pooled'].shape == (1, 8)


def test_pretrained_folder_gives_the_same_conditioner(cond, tmp_path):
    cond.encoders[0].save_pretrained(tmp_path / 'text_encoder')
    cond.encoders[1].save_pretrained(tmp_path / 'text_encoder_2')
    loaded = build.build_text({**section(), 'type': 'pretrained', 'path': str(tmp_path)})
    assert all(same_weights(a, b) for a, b in zip(cond.encoders, loaded.encoders)) and not loaded.training
    with torch.no_grad():
        a, b = cond(['1girl, {solo}']), loaded(['1girl, {solo}'])
    assert torch.equal(a['context'], b['context']) and torch.equal(a['pooled'], b['pooled'])


@pytest.mark.parametrize('cache', [1024, 2, 0])
def test_cached_text_equals_the_conditioners_batch(cond, cache):
    cached = build.CachedText(cond, cache)
    long = ' '.join(['cat'] * 100)                                           # two chunks
    for prompts in (['a cat', 'a dog', 'a cat'], ['a dog', 'a bird', 'a fish', 'a dog'], ['a cat', long]):
        got = cached(prompts, 'cpu')
        with torch.no_grad():
            want = cond(prompts)
        assert got.keys() == {'context', 'pooled'}
        for k in got:
            torch.testing.assert_close(got[k], want[k], rtol=0, atol=1e-6)
    assert len(cached.memo) <= cache


def test_cache_is_least_recently_used(cond):
    cached = build.CachedText(cond, 2)
    cached(['a'], 'cpu')
    cached(['b'], 'cpu')
    cached(['a'], 'cpu')                                                     # a is used again
    cached(['c'], 'cpu')                                                     # b, the least recent, goes
    assert list(cached.memo) == ['a', 'c']
    assert build.CachedText(cond, True).cache == 1024 and build.CachedText(cond, False).cache == 0
