"""kdiff_ztsnr.training.sdxl: the trainer's SDXL family (tiny SDXL-shaped components): batches as normalised latents
with per-item size conditioning, the text encoders' group, the latent cache, and each checkpoint's outputs."""

import copy

import numpy as np
import pytest
import torch
from safetensors import safe_open

from kdiff_ztsnr.models.sdxl import load_sdxl
from kdiff_ztsnr.models.sdxl.vae import NAI_ANIME_SDXL_MEAN, NAI_ANIME_SDXL_STD, normalize, vae_encode
from kdiff_ztsnr.training.data.images import ImageFolderDataset
from kdiff_ztsnr.training.data.latents import STATS_FILE, LatentCacheDataset
from kdiff_ztsnr.training.data.synthetic import make_synthetic_dataset
from kdiff_ztsnr.training.sdxl import LiveText, SDXLTraining, cache_sdxl_latents, sdxl_dataset
from tests.helpers import TINY, TINY_KW


def family(model=None, training=None, text=None) -> SDXLTraining:
    torch.manual_seed(0)
    return SDXLTraining({'model': {'type': 'sdxl', 'components': TINY, **(model or {})},
                         'training': training or {}, 'text': text or {}})


@pytest.fixture(scope='module')
def fam():
    return family({'latent_stats': 'nai_anime'}, text={'max_chunks': 2})


def same(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_parts_are_frozen_but_the_unet(fam):
    assert not any(p.requires_grad for p in fam.vae.parameters()) and not fam.vae.training
    assert not any(p.requires_grad for p in fam.text.parameters()) and not fam.train_text
    assert all(p.requires_grad for p in fam.build_inner({}).parameters())
    assert fam.factor == 8 and fam.text.chunk_kwargs['max_chunks'] == 2 and fam.previews
    assert fam.mean.tolist() == pytest.approx(NAI_ANIME_SDXL_MEAN) and fam.text_groups({'lr': 1.}) == []


def test_prepare_pixels_and_raw_latents(fam):
    x = torch.rand(2, 3, 64, 32) * 2 - 1
    batch = {'x0': x, 'original_size': torch.tensor([[128, 64], [100, 50]]), 'crop': torch.tensor([[0, 0], [4, 2]])}
    z, cond = fam.prepare(batch, 'cpu')
    torch.testing.assert_close(z, vae_encode(fam.vae, x, fam.mean, fam.std))
    assert z.shape == (2, 4, 8, 4)
    assert cond['add_time_ids'].tolist() == [[128., 64., 0., 0., 64., 32.], [100., 50., 4., 2., 64., 32.]]
    raw = torch.randn(2, 4, 8, 4) * 5 + 1
    z_raw, _ = fam.prepare({**batch, 'x0': raw}, 'cpu')
    torch.testing.assert_close(z_raw, normalize(raw, NAI_ANIME_SDXL_MEAN, NAI_ANIME_SDXL_STD))


def test_latent_stats_from_the_cache():
    fam = family({'latent_stats': 'cache'})
    with pytest.raises(ValueError, match="model.latent_stats 'cache' needs a latent cache"):
        fam.use_cache_stats(object())

    class Cache:
        mean, std = torch.tensor([1., 2., 3., 4.], dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    fam.use_cache_stats(Cache())
    assert fam.mean.tolist() == [1., 2., 3., 4.] and fam.mean.dtype == torch.float32
    other = family()                                              # SDXL's ×0.13025: the cache's stats unused
    other.use_cache_stats(Cache())
    torch.testing.assert_close(other.std, torch.full([4], 1 / 0.13025))


def test_text_encoders_training():
    fam = family(training={'train_text_encoders': True})
    assert fam.train_text and all(p.requires_grad for p in fam.text.parameters())
    (group,) = fam.text_groups({'lr': 1e-3, 'text_lr': None})
    assert group['lr'] == 1e-3 and len(group['params']) == len(list(fam.text.parameters()))
    assert fam.text_groups({'lr': 1e-3, 'text_lr': 1e-5})[0]['lr'] == 1e-5
    out = LiveText(fam.text)(('a cat', 'a dog'), 'cpu')
    assert out['context'].shape == (2, 77, 80) and out['context'].requires_grad
    with pytest.raises(ValueError, match='train_text_encoders is not available with model.lora'):
        family({'lora': {'rank': 2}}, training={'train_text_encoders': True})


def test_export_full_fine_tune(fam, tmp_path):
    """sdxl.safetensors: the EMA UNet with the frozen VAE and encoders, markers saying v and ZTSNR."""
    ema = copy.deepcopy(fam.inner)
    with torch.no_grad():
        for p in ema.parameters():
            p.mul_(0.9)                                           # other weights than the live UNet
    fam.save_diffusers = True
    try:
        fam.export(tmp_path, ema, step=4)
    finally:
        fam.save_diffusers = False
    with safe_open(str(tmp_path / 'sdxl.safetensors'), 'pt') as f:
        assert {'v_pred', 'ztsnr'} <= set(f.keys())
    for loaded in (load_sdxl(tmp_path / 'sdxl.safetensors', **TINY_KW), load_sdxl(tmp_path / 'diffusers')):
        c = loaded.components
        assert same(c['unet'], ema.unet) and not same(c['unet'], fam.inner.unet) and same(c['vae'], fam.vae)
        assert loaded.info['zero_terminal_snr']


def test_export_lora(tmp_path):
    fam = family({'lora': {'rank': 2}})
    fam.export(tmp_path, fam.inner, step=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['lora.safetensors']
    with safe_open(str(tmp_path / 'lora.safetensors'), 'pt') as f:
        assert f.metadata()['step'] == '3' and all(k.startswith('lora_unet_') for k in f.keys())
    fam.lora['save_merged'] = True
    fam.export(tmp_path, fam.inner, step=3)
    merged = load_sdxl(tmp_path / 'sdxl.safetensors', **TINY_KW).components['unet']
    assert not any('lora' in k for k in merged.state_dict())
    assert any('lora_A' in n for n, _ in fam.inner.unet.named_parameters())       # the live adapter stays


def test_latent_cache(fam, tmp_path):
    root = make_synthetic_dataset(tmp_path / 'data', n=3, sizes=[[64, 64]], seed=0)
    images = ImageFolderDataset(root, buckets=np.array([[64, 64]]))
    ds = sdxl_dataset(fam, {'cache_latents': True}, images, tmp_path / 'out', seed=0)
    assert isinstance(ds, LatentCacheDataset) and not ds.normalize and len(ds) == 3
    assert (tmp_path / 'out' / 'latents' / STATS_FILE).is_file()
    item = ds[0]
    with torch.no_grad():                                        # 64² images in a 64² bucket: no crop
        raw = fam.vae.encode(images.load(item['id'], 64, 64)['image'][None]).latent_dist.mode()
    torch.testing.assert_close(item['latent'], raw[0], atol=1e-5, rtol=1e-5)      # raw: prepare normalises
    assert cache_sdxl_latents(None, images, tmp_path / 'out' / 'latents') == tmp_path / 'out' / 'latents'  # reused
    again = LatentCacheDataset(tmp_path / 'out' / 'latents', normalize=True)
    assert sdxl_dataset(fam, {}, again, tmp_path, seed=0) is again and not again.normalize
