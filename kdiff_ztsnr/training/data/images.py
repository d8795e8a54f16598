"""Image-folder datasets and bucket loading (report §4.1.3).

Images: a folder (recursive) of .png/.jpg/.jpeg/.webp with kohya/booru-style sidecar tags `name.txt`
(comma-separated; a missing file means no tags). Sizes come from the image headers only (EXIF rotation
applied for JPEG/WebP) and feed `buckets.assign_buckets`. An item is loaded for a bucket (w, h) by scaling it,
aspect preserved, to cover the bucket, then cropping at random (§4.1.3); pixels become float32 CHW in [−1, 1],
transparency composited on white. Unreadable images are skipped, never raised: the item's image is None,
`collate_images` drops it and reports the count as batch['skipped'] (also `ImageFolderDataset.n_skipped` in
the loading process); unreadable headers give size (0, 0), which bucket assignment prunes.

"""

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor
from torch.utils.data import Dataset

from .buckets import BucketSampler, assign_buckets, make_buckets

IMAGE_EXTS = ('.png', '.jpg', '.jpeg', '.webp')


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


def load_cropped(path: Union[str, Path], w: int, h: int,
                 generator: Optional[torch.Generator] = None) -> tuple[Tensor, tuple[int, int], tuple[int, int]]:
    """load_for_bucket plus what SDXL's size conditioning needs: (image, original (h, w), crop (top, left)),
    the crop in the resized image's pixels (as SDXL and sd-scripts define ``crop_coords_top_left``)."""
    im = open_rgb(path)
    original = (im.size[1], im.size[0])
    W2, H2, left, top = cover_crop_box(*im.size, w, h, generator)
    if (W2, H2) != im.size:
        im = im.resize((W2, H2), Image.LANCZOS)
    return to_tensor(im.crop((left, top, left + w, top + h))), original, (top, left)


def load_for_bucket(path: Union[str, Path], w: int, h: int,
                    generator: Optional[torch.Generator] = None) -> Tensor:
    """An image scaled to cover (w, h) and randomly cropped to it (§4.1.3): float32 [3, h, w] in [−1, 1]."""
    return load_cropped(path, w, h, generator)[0]


class ImageFolderDataset(Dataset):
    """A folder of images with sidecar tags, bucketed by aspect ratio (§4.1.2).

    Attributes: paths, sizes int64 [N, 2], buckets [K, 2], bucket (nearest bucket per item) and
    bucket_idx (the same with −1 where pruned; feed it to BucketSampler), n_pruned, n_skipped.
    Items: key is a BucketKey/(index, w, h) from BucketSampler, or an int (loads at its own bucket).
    Returns {'index', 'image' ([3, h, w] in [−1, 1], or None if unreadable), 'tags', 'bucket' (w, h),
    'original_size' (h, w) as displayed, 'crop' (top, left) in the resized image}.
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
            image, original, crop = load_cropped(self.paths[i], w, h, generator)
        except Exception:
            (image, original, crop), self.n_skipped = (None, (h, w), (0, 0)), self.n_skipped + 1
        return {'index': i, 'image': image, 'tags': read_tags(self.paths[i]), 'bucket': (w, h),
                'original_size': original, 'crop': crop}

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
    'original_size' / 'crop' [B', 2] ((h, w) / (top, left), for SDXL's add_time_ids), 'skipped' (int)};
    B' may be 0."""
    ok = [it for it in items if it['image'] is not None]
    w, h = items[0]['bucket'] if items else (0, 0)
    image = torch.stack([it['image'] for it in ok]) if ok else torch.empty(0, 3, h, w)
    return {'image': image, 'index': torch.tensor([it['index'] for it in ok], dtype=torch.long),
            'tags': [it['tags'] for it in ok], 'skipped': len(items) - len(ok),
            'original_size': _pairs([it.get('original_size', (h, w)) for it in ok]),
            'crop': _pairs([it.get('crop', (0, 0)) for it in ok])}


def _pairs(values: Sequence) -> Tensor:
    return torch.tensor([list(v) for v in values], dtype=torch.long).reshape(-1, 2)
