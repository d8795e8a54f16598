"""Image-folder dataset (§4.1.3), Welford scale-and-shift and the latent cache (appendix B)."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from kdiff_ztsnr.training.data.buckets import BucketSampler, make_buckets
from kdiff_ztsnr.training.data.images import (ImageFolderDataset, collate_images, cover_crop_box, image_size,
                                              load_for_bucket, parse_tags, read_tags)
from kdiff_ztsnr.training.data.latents import (CacheError, LatentCacheDataset, Welford, cache_latents,
                                               collate_latents, read_stats)

SMALL = make_buckets(max_area=64 * 96, max_side=128, min_side=32, step=16, extra=((64, 64),))


def gradient(w, h, seed=0):
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 255, w)[None, :, None] * rng.random(3) + np.linspace(0, 255, h)[:, None, None] * 0.3
    return Image.fromarray(np.clip(x, 0, 255).astype(np.uint8))


def make_folder(root, sizes, exts=None, tags=None):
    root.mkdir(parents=True, exist_ok=True)
    for k, (w, h) in enumerate(sizes):
        ext = exts[k] if exts else '.png'
        gradient(w, h, k).save(root / f'img{k:03d}{ext}')
        if tags and tags[k] is not None:
            (root / f'img{k:03d}.txt').write_text(tags[k])
    return root


def test_parse_and_read_tags(tmp_path):
    assert parse_tags(' 1girl, solo ,, artist:foo ,\n blue sky ,') == ['1girl', 'solo', 'artist:foo', 'blue sky']
    assert parse_tags('') == []
    make_folder(tmp_path, [(40, 40), (40, 40)], tags=['a, b', None])
    assert read_tags(tmp_path / 'img000.png') == ['a', 'b'] and read_tags(tmp_path / 'img001.png') == []


def test_image_size_header_and_exif(tmp_path):
    gradient(300, 200).save(tmp_path / 'a.webp')
    assert image_size(tmp_path / 'a.webp') == (300, 200)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90°: displayed 200 × 300
    gradient(300, 200).save(tmp_path / 'r.jpg', exif=exif)
    assert image_size(tmp_path / 'r.jpg') == (200, 300)
    assert load_for_bucket(tmp_path / 'r.jpg', 64, 96).shape == (3, 96, 64)
    (tmp_path / 'bad.jpg').write_bytes(b'not an image at all' * 10)
    assert image_size(tmp_path / 'bad.jpg') == (0, 0)


def test_cover_crop_box_properties():
    g = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    for _ in range(500):
        W, H = rng.integers(16, 3000, 2).tolist()
        w, h = rng.integers(16, 1024, 2).tolist()
        W2, H2, left, top = cover_crop_box(W, H, w, h, g)
        assert W2 >= w and H2 >= h and (W2 == w or H2 == h)  # covers; fits exactly on one side
        assert abs(W2 / H2 - W / H) <= W / H * (1 / min(W2, H2) + 1 / min(W, H)) + 1e-9  # aspect kept
        assert 0 <= left <= W2 - w and 0 <= top <= H2 - h
    assert cover_crop_box(1024, 1536, 512, 768, g) == (512, 768, 0, 0)


def test_load_for_bucket_values(tmp_path):
    Image.new('RGB', (90, 50), (255, 0, 0)).save(tmp_path / 'red.png')
    x = load_for_bucket(tmp_path / 'red.png', 64, 64)
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32
    torch.testing.assert_close(x, torch.tensor([1., -1., -1.]).view(3, 1, 1).expand(3, 64, 64))
    Image.new('RGBA', (64, 64), (0, 0, 0, 0)).save(tmp_path / 'clear.png')
    torch.testing.assert_close(load_for_bucket(tmp_path / 'clear.png', 32, 32), torch.ones(3, 32, 32))
    gradient(200, 100).save(tmp_path / 'g.png')
    a = load_for_bucket(tmp_path / 'g.png', 64, 64, torch.Generator().manual_seed(1))
    b = load_for_bucket(tmp_path / 'g.png', 64, 64, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.min() >= -1 and a.max() <= 1
    crops = {load_for_bucket(tmp_path / 'g.png', 64, 64, torch.Generator().manual_seed(s))[0, 0, 0].item()
             for s in range(20)}
    assert len(crops) > 1  # the crop is random along the long side


def corrupt_folder(tmp_path):
    sizes = [(64, 96), (96, 64), (64, 64), (48, 112), (128, 32), (80, 64), (64, 80), (64, 64), (96, 64)]
    root = make_folder(tmp_path / 'imgs', sizes, tags=['a, b'] * 9)
    data = (root / 'img002.png').read_bytes()
    (root / 'img002.png').write_bytes(data[:len(data) // 2])  # truncated: header fine, pixels not
    (root / 'zz_garbage.jpg').write_bytes(b'\xff\xd8\xff garbage' * 50)
    (root / 'zz_garbage.txt').write_text('x')
    return root


@pytest.mark.parametrize('workers', [0, 2])
def test_dataset_epoch_survives_corrupt_images(tmp_path, workers):
    ds = ImageFolderDataset(corrupt_folder(tmp_path), buckets=SMALL)
    assert len(ds) == 10 and ds.n_pruned == 1 and ds.bucket_idx[-1] == -1  # garbage header → pruned
    assert tuple(ds.sizes[2]) == (64, 64)  # truncated file still has its size
    sampler = ds.sampler(batch_size=3)
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=collate_images, num_workers=workers)
    batches = list(loader)
    assert len(batches) == 3
    seen = torch.cat([b['index'] for b in batches]).tolist()
    skipped = sum(b['skipped'] for b in batches)
    assert skipped == (2 in sampler.plan().batches) and 2 not in seen and 9 not in seen
    assert len(seen) + skipped == 9
    for b, k in zip(batches, sampler.plan().bucket):
        w, h = SMALL[k]
        assert b['image'].shape[1:] == (3, h, w) and b['tags'] == [['a', 'b']] * len(b['index'])
    if workers == 0:
        assert ds.n_skipped == skipped
    item = ds[9]  # loading the garbage file directly is also survived
    assert item['image'] is None and item['tags'] == ['x']
    empty = collate_images([item])
    assert empty['image'].shape[0] == 0 and empty['skipped'] == 1


def test_welford_matches_numpy_with_large_offsets():
    g = torch.Generator().manual_seed(0)
    offsets = torch.tensor([1e4, -3e3, 1e8, 0.5], dtype=torch.float64).view(1, 4, 1, 1)
    scales = torch.tensor([1., 0.01, 2., 1e-3], dtype=torch.float64).view(1, 4, 1, 1)
    batches = [torch.randn(b, 4, h, w, generator=g, dtype=torch.float64) * scales + offsets
               for b, h, w in [(1, 3, 5), (7, 8, 8), (2, 16, 4), (13, 2, 2), (1, 1, 1), (4, 9, 7)]]
    acc = Welford()
    for x in batches:
        acc.update(x)
    flat = np.concatenate([x.numpy().transpose(1, 0, 2, 3).reshape(4, -1) for x in batches], 1)
    assert acc.count == flat.shape[1]
    np.testing.assert_allclose(acc.mean.numpy(), flat.mean(1), rtol=1e-13)
    np.testing.assert_allclose(acc.std().numpy(), flat.std(1), rtol=1e-8)
    np.testing.assert_allclose(acc.std(ddof=1).numpy(), flat.std(1, ddof=1), rtol=1e-8)
    a, b = Welford(), Welford()
    for k, x in enumerate(batches):
        (a if k % 2 else b).update(x)
    merged = a.merge(b).merge(Welford())
    torch.testing.assert_close(merged.mean, acc.mean, rtol=1e-14, atol=0)
    torch.testing.assert_close(merged.std(), acc.std(), rtol=1e-9, atol=0)
    chw = Welford().update(batches[1].permute(0, 2, 3, 1), dim=3)  # channels-last input
    torch.testing.assert_close(chw.mean, Welford().update(batches[1]).mean)


def encoder(x):
    """A fixed stand-in VAE encoder: 3 → 4 channels, /8 spatially, offset and scaled."""
    w = torch.tensor([[1., 0, 0], [0, 2, 0], [0, 0, 3], [1, 1, 1]]).view(4, 3, 1, 1)
    return torch.nn.functional.conv2d(torch.nn.functional.avg_pool2d(x, 8), w) * 5 + torch.arange(4.).view(4, 1, 1)


def exact_folder(tmp_path):
    sizes = [(64, 96), (96, 64), (64, 64), (48, 112), (128, 32), (64, 64), (64, 96)]
    tags = ['artist:x, 1girl', None, 'a', 'b, c', '', 'd', 'e']
    return make_folder(tmp_path / 'imgs', sizes, ['.png', '.webp', '.png', '.png', '.jpg', '.png', '.png'], tags)


def test_cache_round_trip(tmp_path):
    root = exact_folder(tmp_path)
    ds = ImageFolderDataset(root, buckets=SMALL)
    out = tmp_path / 'cache'
    res = cache_latents(ds, encoder, out, batch_size=2, shard_size=3)
    assert res['n_cached'] == 7 and res['n_skipped'] == 0 and res['n_shards'] == 3
    assert not list(out.glob('.*'))  # no temporaries left behind
    cache = LatentCacheDataset(out)
    assert len(cache) == 7
    all_latents = []
    for i in range(7):
        item = cache[i]
        w, h = ds.sizes[item['id']]  # images are exactly bucket-sized: no crop, no resize
        expect = encoder(load_for_bucket(ds.paths[item['id']], int(w), int(h))[None])[0]
        torch.testing.assert_close(item['latent'], expect)
        assert item['tags'] == read_tags(ds.paths[item['id']]) and item['bucket'] == (w, h)
        all_latents.append(item['latent'].reshape(4, -1))
    flat = torch.cat(all_latents, 1).double()
    mean, std, meta = read_stats(out)
    torch.testing.assert_close(mean, flat.mean(1))
    torch.testing.assert_close(std, flat.std(1, correction=0))
    assert meta['count'] == flat.shape[1] and meta['mean'] == mean.tolist()
    normed = torch.cat([LatentCacheDataset(out, normalize=True)[i]['latent'].reshape(4, -1)
                        for i in range(7)], 1).double()
    torch.testing.assert_close(normed.mean(1), torch.zeros(4, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(normed.std(1, correction=0), torch.ones(4, dtype=torch.float64), atol=1e-5,
                               rtol=0)
    cache_latents(ds, encoder, out, batch_size=4, shard_size=100)  # rewrite: stale shards removed
    assert sorted(p.name for p in out.iterdir()) == ['shard-00000.safetensors', 'stats.safetensors']
    assert len(LatentCacheDataset(out)) == 7


def test_cache_skips_corrupt_and_feeds_sampler(tmp_path):
    ds = ImageFolderDataset(corrupt_folder(tmp_path), buckets=SMALL)
    res = cache_latents(ds, encoder, tmp_path / 'c', batch_size=4, shard_size=4, dtype=torch.bfloat16)
    assert res['n_skipped'] == 1 and res['n_pruned'] == 1 and res['n_cached'] == 8
    cache = LatentCacheDataset(tmp_path / 'c')
    assert len(cache) == 8 and cache[0]['latent'].dtype == torch.bfloat16
    sampler = BucketSampler(cache.bucket_idx, cache.buckets, batch_size=4)
    batches = list(DataLoader(cache, batch_sampler=sampler, collate_fn=collate_latents))
    assert len(batches) == 2 and all(b['latent'].shape[0] == 4 for b in batches)
    assert sorted(torch.cat([b['index'] for b in batches]).tolist()) == sorted(sampler.plan().batches.ravel())


def test_collate_latents_crops_mixed_batch():
    items = [{'index': 0, 'latent': torch.randn(4, 12, 8), 'tags': []},
             {'index': 1, 'latent': torch.randn(4, 8, 12), 'tags': ['a']}]
    b = collate_latents(items)
    assert b['latent'].shape == (2, 4, 8, 8) and b['index'].tolist() == [0, 1]


def test_corrupt_cache_errors(tmp_path):
    out = tmp_path / 'cache'
    with pytest.raises(CacheError, match='missing'):
        LatentCacheDataset(out)
    cache_latents(ImageFolderDataset(exact_folder(tmp_path), buckets=SMALL), encoder, out, shard_size=3)
    shard = out / 'shard-00001.safetensors'
    data = shard.read_bytes()
    shard.write_bytes(data[:-10])
    with pytest.raises(CacheError, match='corrupt latent shard .*shard-00001'):
        LatentCacheDataset(out)
    shard.write_bytes(b'\x00' * 64)
    with pytest.raises(CacheError, match='shard-00001'):
        LatentCacheDataset(out)
    shard.write_bytes(data)
    assert len(LatentCacheDataset(out)) == 7
    (out / 'stats.safetensors').write_bytes(b'junk')
    with pytest.raises(CacheError, match='stats'):
        LatentCacheDataset(out)
