"""A latent cache with the VAE scale-and-shift of the report's appendix B.

`cache_latents` writes safetensors shards `shard-NNNNN.safetensors` (one tensor per image keyed by its dataset
index; metadata JSON with bucket, original size, name, tags) and, last, `stats.safetensors` holding the
per-channel mean/std of the latents estimated with Welford's average (appendix B). All files are written to a
temporary name and os.replace'd. `LatentCacheDataset` reads it back.
"""

import json
import os
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from torch.utils.data import Dataset

from ...models.sdxl.vae import normalize
from .images import ImageFolderDataset

CACHE_FORMAT = 'kdiff_ztsnr.latents.v1'
STATS_FILE = 'stats.safetensors'


# ------------------------------------------------------------------------------- scale-and-shift

class Welford:
    """Per-channel running mean and variance over batches (appendix B; Welford 1962), each batch folded in
    with Chan et al.'s parallel merge: δ = μ_b − μ_a, n = n_a + n_b, μ = μ_a + δ·n_b/n,
    M2 = M2_a + M2_b + δ²·n_a·n_b/n. Float64; batches may differ in size and spatial shape."""

    def __init__(self):
        self.count = 0
        self.mean: Optional[Tensor] = None
        self.m2: Optional[Tensor] = None

    def _merge(self, n: int, mean: Tensor, m2: Tensor) -> 'Welford':
        if n == 0:
            return self
        if self.count == 0:
            self.count, self.mean, self.m2 = n, mean.clone(), m2.clone()
            return self
        delta, total = mean - self.mean, self.count + n
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta ** 2 * (self.count * n / total)
        self.count = total
        return self

    def update(self, x: Tensor, dim: int = 1) -> 'Welford':
        """Fold in x [B, C, …] (channels along dim)."""
        x = torch.as_tensor(x).detach().to('cpu', torch.float64).movedim(dim, 0).flatten(1)
        mean = x.mean(1)
        return self._merge(x.shape[1], mean, (x - mean[:, None]).pow(2).sum(1))

    def merge(self, other: 'Welford') -> 'Welford':
        """Fold in another accumulator (e.g. another rank's)."""
        return self._merge(other.count, other.mean, other.m2) if other.count else self

    def var(self, ddof: int = 0) -> Tensor:
        return self.m2 / (self.count - ddof)

    def std(self, ddof: int = 0) -> Tensor:
        return self.var(ddof).sqrt()


# ----------------------------------------------------------------------------------- latent cache

class CacheError(RuntimeError):
    """A latent cache that is missing, incomplete or corrupt."""


def _atomic_save(tensors: dict, path: Path, metadata: dict) -> None:
    tmp = path.with_name(f'.{path.name}.tmp{os.getpid()}')
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def _bucket_batches(bucket_idx: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    """Non-pruned indices grouped by bucket, in chunks of ≤ batch_size (deterministic order)."""
    ids = np.flatnonzero(bucket_idx >= 0)
    ids = ids[np.argsort(bucket_idx[ids], kind='stable')]
    for group in np.split(ids, np.flatnonzero(np.diff(bucket_idx[ids])) + 1):
        for k in range(0, len(group), batch_size):
            yield group[k:k + batch_size]


class _ShardWriter:
    def __init__(self, out: Path, shard_size: int):
        self.out, self.shard_size, self.n_shards = out, shard_size, 0
        self.tensors, self.entries = {}, []

    def add(self, entry: dict, latent: Tensor) -> None:
        self.tensors[entry['key']] = latent.contiguous()
        self.entries.append(entry)
        if len(self.entries) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        if self.entries:
            meta = {'format': CACHE_FORMAT, 'entries': json.dumps(self.entries)}
            _atomic_save(self.tensors, self.out / f'shard-{self.n_shards:05d}.safetensors', meta)
            self.n_shards, self.tensors, self.entries = self.n_shards + 1, {}, []


def cache_latents(dataset: ImageFolderDataset, encode: Callable[[Tensor], Tensor], out_dir: Union[str, Path],
                  batch_size: int = 8, shard_size: int = 1024, seed: int = 0,
                  dtype: torch.dtype = torch.float32) -> dict:
    """Encode every non-pruned image at its bucket (one seeded random crop each) into shards; estimate the
    per-channel latent mean/std with Welford (appendix B) and write them last to stats.safetensors.

    encode: images [B, 3, h, w] in [−1, 1] (CPU float32) → latents [B, C, h', w'] (any device), raw (not
    scaled). Unreadable images are skipped and counted. Returns {'n_cached', 'n_skipped', 'n_pruned',
    'n_shards', 'mean', 'std'}.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / STATS_FILE).unlink(missing_ok=True)  # no stats = incomplete cache
    g, welford, writer, skipped = torch.Generator().manual_seed(seed), Welford(), _ShardWriter(out, shard_size), 0
    from ...progress import bar
    images_bar = bar(total=int((dataset.bucket_idx >= 0).sum()), desc='caching latents', unit='image')
    for idx in _bucket_batches(dataset.bucket_idx, batch_size):
        images_bar.update(len(idx))
        w, h = dataset.buckets[dataset.bucket_idx[idx[0]]].tolist()
        items = [dataset.load(int(i), w, h, g) for i in idx]
        ok = [it for it in items if it['image'] is not None]
        skipped += len(items) - len(ok)
        if not ok:
            continue
        with torch.no_grad():
            z = encode(torch.stack([it['image'] for it in ok])).detach().float().cpu()
        welford.update(z)
        for it, zi in zip(ok, z):
            i = it['index']
            writer.add({'key': str(i), 'id': i, 'name': dataset.name(i), 'bucket': [w, h],
                        'size': dataset.sizes[i].tolist(), 'tags': it['tags'],
                        'original_size': list(it.get('original_size', (h, w))), 'crop': list(it.get('crop', (0, 0)))},
                       zi.to(dtype))
    images_bar.close()
    writer.flush()
    for stale in out.glob('shard-*.safetensors'):
        if int(stale.stem.split('-')[1]) >= writer.n_shards:
            stale.unlink()
    if welford.count == 0:
        raise CacheError(f'no image could be encoded ({skipped} unreadable, {dataset.n_pruned} pruned)')
    _write_stats(out, welford, {'n_skipped': skipped, 'n_pruned': dataset.n_pruned})
    n_cached = int((dataset.bucket_idx >= 0).sum()) - skipped
    return {'n_cached': n_cached, 'n_skipped': skipped, 'n_pruned': dataset.n_pruned,
            'n_shards': writer.n_shards, 'mean': welford.mean, 'std': welford.std()}


def _write_stats(out: Path, welford: Welford, extra: dict) -> None:
    """stats.safetensors: float64 mean/std [C], the same (and count, extra) as JSON metadata."""
    mean, std = welford.mean, welford.std()
    meta = {'format': CACHE_FORMAT, 'count': welford.count, 'mean': mean.tolist(), 'std': std.tolist(), **extra}
    _atomic_save({'mean': mean, 'std': std}, out / STATS_FILE, {k: json.dumps(v) for k, v in meta.items()})


def _read_shard_entries(path: Path) -> list[dict]:
    try:
        with safe_open(str(path), 'pt') as f:
            meta, keys = f.metadata() or {}, set(f.keys())
        if meta.get('format') != CACHE_FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, expected {CACHE_FORMAT!r}")
        entries = json.loads(meta['entries'])
        missing = [e['key'] for e in entries if e['key'] not in keys]
        if missing:
            raise ValueError(f'tensors missing for keys {missing[:5]}')
    except Exception as e:
        raise CacheError(f'corrupt latent shard {path}: {e}') from e
    return [dict(e, shard=path.name) for e in entries]


def read_stats(cache_dir: Union[str, Path]) -> tuple[Tensor, Tensor, dict]:
    """(mean [C], std [C] float64, metadata) of a latent cache."""
    path = Path(cache_dir) / STATS_FILE
    if not path.is_file():
        raise CacheError(f'{path} missing: {cache_dir} is not a complete latent cache')
    try:
        with safe_open(str(path), 'pt') as f:
            meta = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
            return f.get_tensor('mean'), f.get_tensor('std'), meta
    except Exception as e:
        raise CacheError(f'corrupt latent cache stats {path}: {e}') from e


class LatentCacheDataset(Dataset):
    """Reads a cache_latents directory. Items (int or BucketKey/(index, w, h); only the index is used):
    {'index', 'id' (the source dataset's index), 'latent' [C, h', w'], 'tags', 'bucket' (w, h) in pixels}.
    With normalize=True latents are standardised with the cache's own mean/std (appendix B). Every shard's header is checked on opening;
    bucket_idx/buckets feed BucketSampler (latents have fixed crops: use collate_latents)."""

    def __init__(self, cache_dir: Union[str, Path], normalize: bool = False):
        self.dir, self.normalize = Path(cache_dir), normalize
        self.mean, self.std, self.stats = read_stats(cache_dir)
        shards = sorted(self.dir.glob('shard-*.safetensors'))
        self.entries = sorted((e for p in shards for e in _read_shard_entries(p)), key=lambda e: e['id'])
        wh = np.array([e['bucket'] for e in self.entries], dtype=np.int64).reshape(-1, 2)
        self.buckets, self.bucket_idx = np.unique(wh, axis=0, return_inverse=True)
        self.bucket_idx = self.bucket_idx.reshape(-1).astype(np.int64)
        self._files = {}

    def __len__(self) -> int:
        return len(self.entries)

    def __getstate__(self) -> dict:
        return dict(self.__dict__, _files={})  # open handles stay in their process

    def __getitem__(self, key) -> dict:
        i = int(key[0] if isinstance(key, tuple) else key)
        e = self.entries[i]
        if e['shard'] not in self._files:
            self._files[e['shard']] = safe_open(str(self.dir / e['shard']), 'pt')
        z = self._files[e['shard']].get_tensor(e['key'])
        if self.normalize:
            z = normalize(z, self.mean, self.std)
        w, h = e['bucket']
        return {'index': i, 'id': e['id'], 'latent': z, 'tags': e['tags'], 'bucket': (w, h),
                'original_size': tuple(e.get('original_size', (h, w))), 'crop': tuple(e.get('crop', (0, 0)))}


def collate_latents(items: Sequence[dict], generator: Optional[torch.Generator] = None) -> dict:
    """Stack latents; a mixed (catch-all) batch is randomly cropped to its smallest common size."""
    h = min(it['latent'].shape[-2] for it in items)
    w = min(it['latent'].shape[-1] for it in items)
    crops = []
    for it in items:
        z = it['latent']
        top = int(torch.randint(z.shape[-2] - h + 1, (), generator=generator))
        left = int(torch.randint(z.shape[-1] - w + 1, (), generator=generator))
        crops.append(z[..., top:top + h, left:left + w])
    return {'latent': torch.stack(crops), 'index': torch.tensor([it['index'] for it in items]),
            'tags': [it['tags'] for it in items],
            'original_size': torch.tensor([list(it.get('original_size', (0, 0))) for it in items]).reshape(-1, 2),
            'crop': torch.tensor([list(it.get('crop', (0, 0))) for it in items]).reshape(-1, 2)}
