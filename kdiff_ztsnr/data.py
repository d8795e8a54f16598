"""Image-folder datasets, bucket loading, and a latent cache with VAE scale-and-shift (report §4.1.3, app. B).

Images: a folder (recursive) of .png/.jpg/.jpeg/.webp with kohya/booru-style sidecar tags `name.txt`
(comma-separated; a missing file means no tags). Sizes come from the image headers only (EXIF rotation
applied for JPEG/WebP) and feed `buckets.assign_buckets`. An item is loaded for a bucket (w, h) by scaling it,
aspect preserved, to cover the bucket, then cropping at random (§4.1.3); pixels become float32 CHW in [−1, 1],
transparency composited on white. Unreadable images are skipped, never raised: the item's image is None,
`collate_images` drops it and reports the count as batch['skipped'] (also `ImageFolderDataset.n_skipped` in
the loading process); unreadable headers give size (0, 0), which bucket assignment prunes.

Latent cache: `cache_latents` writes safetensors shards `shard-NNNNN.safetensors` (one tensor per image
keyed by its dataset index; metadata JSON with bucket, original size, name, tags) and, last, `stats.safetensors`
holding the per-channel mean/std of the latents estimated with Welford's average (appendix B). All files are
written to a temporary name and os.replace'd. `LatentCacheDataset` reads it back.
"""

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageOps
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from torch.utils.data import Dataset

from .buckets import BucketSampler, assign_buckets, make_buckets

IMAGE_EXTS = ('.png', '.jpg', '.jpeg', '.webp')
NAI_ANIME_SDXL_MEAN = (4.8119, 0.1607, 1.3538, -1.7753)  # appendix B, fig. 8: SDXL VAE, anime
NAI_ANIME_SDXL_STD = (9.9181, 6.2753, 7.5978, 5.9956)
CACHE_FORMAT = 'kdiff_ztsnr.latents.v1'
STATS_FILE = 'stats.safetensors'


# ---------------------------------------------------------------------------------------------- images

def parse_tags(text: str) -> list[str]:
    """Comma-separated tags, whitespace stripped, empties dropped."""
    return [t.strip() for t in text.split(',') if t.strip()]


def read_tags(image_path: Union[str, Path]) -> list[str]:
    """Tags from the sidecar `.txt` next to an image; [] if there is none."""
    p = Path(image_path).with_suffix('.txt')
    return parse_tags(p.read_text(encoding='utf-8', errors='replace')) if p.is_file() else []


def list_images(root: Union[str, Path], exts: Sequence[str] = IMAGE_EXTS) -> list[Path]:
    """Image files under root (recursive), sorted."""
    exts = {e.lower() for e in exts}
    return sorted(p for p in Path(root).rglob('*') if p.suffix.lower() in exts and p.is_file())


def image_size(path: Union[str, Path]) -> tuple[int, int]:
    """(w, h) as displayed, from the header only; (0, 0) if the header is unreadable."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            if im.format in ('JPEG', 'MPO', 'WEBP') and im.getexif().get(0x0112, 1) in (5, 6, 7, 8):
                w, h = h, w  # EXIF orientation with a transpose
            return w, h
    except Exception:
        return 0, 0


def read_sizes(paths: Sequence[Union[str, Path]], workers: int = 8) -> np.ndarray:
    """image_size for many files (I/O-bound, threaded): int64 [N, 2]."""
    with ThreadPoolExecutor(max(1, workers)) as ex:
        return np.array(list(ex.map(image_size, paths)), dtype=np.int64).reshape(-1, 2)


def cover_crop_box(W: int, H: int, w: int, h: int,
                   generator: Optional[torch.Generator] = None) -> tuple[int, int, int, int]:
    """Scale (W, H) preserving aspect to cover (w, h), then a random crop (§4.1.3): (W', H', left, top)."""
    s = max(w / W, h / H)
    W2, H2 = max(w, round(W * s)), max(h, round(H * s))
    left = int(torch.randint(W2 - w + 1, (), generator=generator))
    top = int(torch.randint(H2 - h + 1, (), generator=generator))
    return W2, H2, left, top


def open_rgb(path: Union[str, Path]) -> Image.Image:
    """Decode fully, apply EXIF orientation, composite transparency on white; RGB."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        im.load()
    if im.mode in ('RGBA', 'LA', 'PA') or 'transparency' in im.info:
        im = im.convert('RGBA')
        return Image.alpha_composite(Image.new('RGBA', im.size, (255, 255, 255, 255)), im).convert('RGB')
    return im.convert('RGB')


def to_tensor(im: Image.Image) -> Tensor:
    """RGB PIL image → float32 [3, H, W] in [−1, 1]."""
    x = torch.from_numpy(np.array(im, dtype=np.uint8, copy=True)).permute(2, 0, 1)
    return x.float() / 127.5 - 1


def load_for_bucket(path: Union[str, Path], w: int, h: int,
                    generator: Optional[torch.Generator] = None) -> Tensor:
    """An image scaled to cover (w, h) and randomly cropped to it (§4.1.3): float32 [3, h, w] in [−1, 1]."""
    im = open_rgb(path)
    W2, H2, left, top = cover_crop_box(*im.size, w, h, generator)
    if (W2, H2) != im.size:
        im = im.resize((W2, H2), Image.LANCZOS)
    return to_tensor(im.crop((left, top, left + w, top + h)))


class ImageFolderDataset(Dataset):
    """A folder of images with sidecar tags, bucketed by aspect ratio (§4.1.2).

    Attributes: paths, sizes int64 [N, 2], buckets [K, 2], bucket (nearest bucket per item) and
    bucket_idx (the same with −1 where pruned; feed it to BucketSampler), n_pruned, n_skipped.
    Items: key is a BucketKey/(index, w, h) from BucketSampler, or an int (loads at its own bucket).
    Returns {'index', 'image' ([3, h, w] in [−1, 1], or None if unreadable), 'tags', 'bucket' (w, h)}.
    """

    def __init__(self, root: Union[str, Path], buckets: Optional[np.ndarray] = None, log_space: bool = True,
                 max_ratio_error: float = 0.5, exts: Sequence[str] = IMAGE_EXTS, workers: int = 8):
        self.root = Path(root)
        self.paths = list_images(root, exts)
        self.sizes = read_sizes(self.paths, workers)
        self.buckets = make_buckets() if buckets is None else np.asarray(buckets, dtype=np.int64)
        self.bucket, pruned = assign_buckets(self.sizes, self.buckets, log_space, max_ratio_error)
        self.bucket_idx = np.where(pruned, -1, self.bucket)
        self.n_pruned, self.n_skipped = int(pruned.sum()), 0

    def __len__(self) -> int:
        return len(self.paths)

    def name(self, i: int) -> str:
        return self.paths[i].relative_to(self.root).as_posix()

    def captions(self) -> list[list[str]]:
        """Every item's tags (reads all sidecars), e.g. for tags.image_weights."""
        return [read_tags(p) for p in self.paths]

    def load(self, i: int, w: int, h: int, generator: Optional[torch.Generator] = None) -> dict:
        try:
            image = load_for_bucket(self.paths[i], w, h, generator)
        except Exception:
            image, self.n_skipped = None, self.n_skipped + 1
        return {'index': i, 'image': image, 'tags': read_tags(self.paths[i]), 'bucket': (w, h)}

    def __getitem__(self, key) -> dict:
        if isinstance(key, tuple):
            i, w, h = (int(k) for k in key)
        else:
            i = int(key)
            w, h = self.buckets[self.bucket[i]].tolist()
        return self.load(i, w, h)

    def sampler(self, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0) -> BucketSampler:
        return BucketSampler(self.bucket_idx, self.buckets, batch_size, rank, world_size, seed)


def collate_images(items: Sequence[dict]) -> dict:
    """Stack one bucket's items, dropping unreadable ones: {'image' [B', 3, h, w], 'index' [B'], 'tags',
    'skipped' (int)}; B' may be 0."""
    ok = [it for it in items if it['image'] is not None]
    w, h = items[0]['bucket'] if items else (0, 0)
    image = torch.stack([it['image'] for it in ok]) if ok else torch.empty(0, 3, h, w)
    return {'image': image, 'index': torch.tensor([it['index'] for it in ok], dtype=torch.long),
            'tags': [it['tags'] for it in ok], 'skipped': len(items) - len(ok)}


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


def _channels(v, z: Tensor) -> Tensor:
    return torch.as_tensor(v, dtype=torch.float32, device=z.device).view(-1, 1, 1)


def normalize(z: Tensor, mean, std) -> Tensor:
    """VAE latents → standard Gaussian per channel: (z − μ)/σ (appendix B); z [B, C, h, w] or [C, h, w]."""
    return ((z.float() - _channels(mean, z)) / _channels(std, z)).to(z.dtype)


def denormalize(z: Tensor, mean, std) -> Tensor:
    """Inverse of normalize: z·σ + μ, back to the VAE decoder's distribution (appendix B)."""
    return (z.float() * _channels(std, z) + _channels(mean, z)).to(z.dtype)


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
    for idx in _bucket_batches(dataset.bucket_idx, batch_size):
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
                        'size': dataset.sizes[i].tolist(), 'tags': it['tags']}, zi.to(dtype))
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
        return {'index': i, 'id': e['id'], 'latent': z, 'tags': e['tags'], 'bucket': tuple(e['bucket'])}


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
            'tags': [it['tags'] for it in items]}
