"""kdiff_ztsnr.models.sdxl.parts: SDXL components for training (model.type 'sdxl') from a file, a folder or configs,
and a trainer checkpoint of type 'sdxl' as a Pipeline."""

import os

import pytest
import torch

from kdiff_ztsnr.models.sdxl import parts
from kdiff_ztsnr.models.sdxl.parts import build_sdxl_inner, load_parts, sdxl_checkpoint_pipeline, text_options
from kdiff_ztsnr.models.sdxl.unet import SDXLUNetInner
from kdiff_ztsnr.models.sdxl.vae import NAI_ANIME_SDXL_MEAN, NAI_ANIME_SDXL_STD, normalize
from tests.helpers import TINY, write_tiny_sdxl


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    return write_tiny_sdxl(tmp_path_factory.mktemp('tiny'))


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_from_configs_is_seeded_by_the_caller():
    torch.manual_seed(3)
    unet, vae, text, info = load_parts({'components': TINY})
    torch.manual_seed(3)
    unet2, *_ = load_parts({'components': TINY})
    assert list(unet.config.block_out_channels) == [16, 32, 32] and vae.config.latent_channels == 4
    assert [e.config.hidden_size for e in text.encoders] == [32, 48]
    assert info == {'source': None, 'source_prediction': None}
    assert same_weights(unet, unet2)


@pytest.mark.parametrize('source', ['file', 'folder'])
def test_from_a_path_are_the_saved_weights(tiny, source):
    unet, vae, text, info = load_parts({'path': str(tiny[source]), 'components': TINY})
    c = tiny['pipe'].components
    assert same_weights(unet, c['unet']) and same_weights(vae, c['vae'])
    assert all(same_weights(a, b) for a, b in zip(text.encoders, c['text'].encoders))
    assert {p.dtype for p in unet.parameters()} == {torch.float32}
    assert info == {'source': str(tiny[source]), 'source_prediction': None}


def test_epsilon_source_reads_a_file_without_markers(tiny):
    with pytest.raises(ValueError, match='v_pred'):
        load_parts({'path': str(tiny['nomarkers']), 'components': TINY})
    unet, *_, info = load_parts({'path': str(tiny['nomarkers']), 'components': TINY,
                                 'source_prediction': 'epsilon'})
    assert same_weights(unet, tiny['pipe'].components['unet']) and info['source_prediction'] == 'epsilon'


def test_refusals_name_the_key():
    with pytest.raises(ValueError, match=r"model\.source_prediction: 'x0'; expected one of"):
        load_parts({'components': TINY, 'source_prediction': 'x0'})
    with pytest.raises(ValueError, match=r"model\.components: unknown \['unet3'\]"):
        load_parts({'components': {**TINY, 'unet3': {}}})


def test_build_sdxl_inner():
    inner = build_sdxl_inner({'components': TINY})
    assert isinstance(inner, SDXLUNetInner) and inner.vae_factor == 8
    assert list(inner.unet.config.block_out_channels) == [16, 32, 32]


def test_text_options():
    assert text_options(None) == {}
    assert text_options({'max_chunks': 2, 'layer': -1, 'final_norm': True, 'type': 'clip', 'cache': 9}) == \
        {'max_chunks': 2, 'layer': -1, 'final_norm': True}


X = torch.linspace(-1, 1, 3 * 64 * 64).view(1, 3, 64, 64)


def raw_latents(pipe):
    with torch.no_grad():
        return pipe.components['vae'].encode(X).latent_dist.mode()


def test_checkpoint_pipeline(tiny, tmp_path):
    config = {'model': {'type': 'sdxl', 'components': TINY, 'latent_stats': 'nai_anime'}, 'text': {'max_chunks': 2}}
    (tmp_path / 'file').mkdir()
    os.symlink(tiny['file'], tmp_path / 'file' / 'sdxl.safetensors')
    (tmp_path / 'folder').mkdir()
    os.symlink(tiny['folder'], tmp_path / 'folder' / 'diffusers')
    for where in ('file', 'folder'):
        pipe = sdxl_checkpoint_pipeline(tmp_path / where, config, name='step-8')
        assert pipe.name == 'step-8' and pipe.max_chunks == 2
        assert pipe.components['text'].chunk_kwargs['truncate'] is True           # generation warns instead
        assert same_weights(pipe.components['unet'], tiny['pipe'].components['unet'])
        torch.testing.assert_close(pipe.encode(X), normalize(raw_latents(pipe), NAI_ANIME_SDXL_MEAN,
                                                             NAI_ANIME_SDXL_STD))
    cached = dict(config, model=dict(config['model'], latent_stats='cache'))       # 'cache': SDXL's own scale
    pipe = sdxl_checkpoint_pipeline(tmp_path / 'file', cached)
    torch.testing.assert_close(pipe.encode(X), raw_latents(pipe) * 0.13025)
    (tmp_path / 'lora_run').mkdir()
    with pytest.raises(FileNotFoundError, match=r'lora_run: no sdxl\.safetensors or diffusers/.*save_merged'):
        sdxl_checkpoint_pipeline(tmp_path / 'lora_run', config)
    assert parts.SOURCE_PREDICTIONS == (None, 'v', 'epsilon')
