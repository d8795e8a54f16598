"""Image files in and out of generation: init images and masks as tensors, and the output PNGs.

Images are [B, 3, H, W] tensors in [−1, 1]. Output files are named ``NNNNN-SEED.png``: a running index (one
more than the largest in the folder) and the sample's seed. A file is written under a temporary name and linked
to its name only when complete, so an existing file is never overwritten and no partial or empty PNG is left; if
writing fails, every image is kept in a fresh temporary folder that the error names.
"""

from __future__ import annotations

import os
import re
import tempfile
from typing import TYPE_CHECKING, Callable

import numpy as np

from ..errors import ParamError, ParamOSError, quote
from .params import GenerationParams

if TYPE_CHECKING:                       # torch is imported where a tensor is made: --out is checked without it
    from torch import Tensor


def load_image(path: str, width: int, height: int) -> Tensor:
    """An init image as [1, 3, H, W] in [−1, 1] at the canvas size (bicubic)."""
    import torch
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            im = to_rgb8(im).resize((width, height), Image.BICUBIC)
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as e:
        raise ValueError(f'cannot read image {path}: {e}') from e
    return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)[None].float() / 127.5 - 1


def to_rgb8(im):
    """8-bit RGB of any PIL image; 16-bit and 32-bit grayscale are scaled, not clipped to white."""
    from PIL import Image
    if im.mode in ('I;16', 'I;16B', 'I;16L', 'I'):
        a = np.asarray(im, dtype=np.float64)
        top = 65535. if im.mode.startswith('I;16') or a.max() <= 65535 else 2 ** 32 - 1
        return Image.fromarray(np.round(a.clip(0, top) * (255 / top)).astype(np.uint8)).convert('RGB')
    if im.mode == 'F':
        return Image.fromarray(np.round(np.asarray(im).clip(0, 1) * 255).astype(np.uint8)).convert('RGB')
    return im.convert('RGB')


def load_mask(path: str, width: int, height: int) -> Tensor:
    """An inpainting mask as [1, 1, H, W]: 1 where the image is repainted (any non-black pixel)."""
    return (load_image(path, width, height).mean(1, keepdim=True) > 0).float()


def to_pil(image: Tensor):
    """One [3, H, W] image in [−1, 1] as an 8-bit PIL image."""
    from PIL import Image
    arr = ((image.float().cpu() + 1) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
    return Image.fromarray(arr)


NAME = re.compile(r'^(\d{5,})-\d+\.png$')


PSEUDO_FS = {'proc', 'sysfs', 'devtmpfs', 'devpts', 'cgroup', 'cgroup2', 'debugfs', 'tracefs', 'securityfs',
             'configfs', 'pstore', 'bpf', 'efivarfs', 'fusectl', 'mqueue', 'hugetlbfs', 'binfmt_misc'}


def mount_type(path: str) -> str:
    """The filesystem type of the mount holding path (Linux /proc/self/mounts; '' where unknown)."""
    try:
        with open('/proc/self/mounts') as f:
            mounts = [line.split()[1:3] for line in f if len(line.split()) > 2]
    except OSError:
        return ''
    path = os.path.realpath(path)
    best = max((m for m in mounts if path == m[0] or path.startswith(m[0].rstrip('/') + '/')),
               key=lambda m: len(m[0]), default=('', ''))
    return best[1]


def prepare_out(out: str) -> None:
    """Prove the output folder writable (or creatable) before any work is done; nothing is created yet."""
    if not out or not out.strip():
        raise ParamError(f'{{out}} {quote(repr(out))} is empty; give a folder for the images')
    if os.path.exists(out) and not os.path.isdir(out):
        raise ParamError(f'{{out={quote(out)}}} is a file; give a folder for the images')
    folder = os.path.abspath(out)
    missing = []
    while not os.path.exists(folder):                    # the nearest existing ancestor will hold it
        if os.path.islink(folder):
            raise ParamError(f'{{out={quote(out)}}}: {quote(folder)} is a symbolic link to '
                             f'{quote(os.readlink(folder))}, which does not exist')
        missing.append(os.path.basename(folder))
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise ParamError(f'{{out={quote(out)}}}: {quote(folder)} is a file, so the folder cannot be created')
    kind = mount_type(folder)
    if kind in PSEUDO_FS:
        raise ParamError(f'{{out={quote(out)}}}: {quote(folder)} is on the {kind} pseudo-filesystem, where images '
                         f'cannot be written')
    limit = os.pathconf(folder, 'PC_NAME_MAX') if hasattr(os, 'pathconf') else 255
    long = [m for m in missing if len(os.fsencode(m)) > limit]
    if long:
        raise ParamError(f'{{out={quote(out)}}}: the folder name {quote(long[0][:40])}… is longer than the {limit} '
                         f'bytes a name may have there')
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix='.kdiff-ztsnr-probe-'):
            pass
    except OSError as e:
        raise ParamOSError(f'{{out={quote(out)}}} is not a writable folder: '
                           f'{quote(write_failure(folder, e))}') from e


def write_failure(folder: str, e: OSError) -> str:
    """Why a file cannot be created in an existing folder, in words (the errno alone can mislead)."""
    fs = mount_type(folder)
    if fs in PSEUDO_FS:
        return f'{folder} is on a {fs} filesystem, which holds no user files (choose a folder on a disk)'
    reason = {13: 'permission denied', 30: 'the filesystem is read-only', 28: 'no space left on the device',
              122: 'disk quota exceeded'}.get(e.errno, e.strerror or str(e))
    return f'cannot create a file in {folder}: {reason}'


def next_index(out: str) -> int:
    """One more than the largest running index in the folder (0 for an empty folder)."""
    found = [int(m.group(1)) for m in map(NAME.match, os.listdir(out)) if m]
    return max(found, default=-1) + 1


def _write_new(path: str, write: Callable) -> bool:
    """Write a file through a temporary name in the same folder, then link it to path without replacing an
    existing file: path is never left partial or empty. False when path exists."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or '.', prefix='.' + os.path.basename(path) + '.',
                               suffix='.tmp')
    try:
        with os.fdopen(fd, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)                            # atomic, fails if path exists
        except FileExistsError:
            return False
        except OSError:                                   # no hard links here: reserve the name, then replace
            with open(path, 'xb'):
                pass
            os.replace(tmp, path)
        return True
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def _write(images: Tensor, p: GenerationParams, out: str, alpha: bool) -> list[str]:
    from .metadata import save_png
    paths, index = [], next_index(out)
    for i, img in enumerate(images):
        params = {**p.to_dict(), 'seed': p.seed + i, 'n_samples': 1}
        pil = to_pil(img)
        while True:
            path = os.path.join(out, f'{index:05d}-{p.seed + i}.png')
            index += 1
            if _write_new(path, lambda f: save_png(pil, f, params, alpha=alpha)):
                break
        paths.append(path)
    return paths


def save_images(images: Tensor, p: GenerationParams, out: str, alpha: bool = False) -> list[str]:
    """Write each image with its own parameters (seed + i, n_samples 1) as PNG metadata; returns the paths.

    If the folder cannot be written, the images go to a new temporary folder and the OSError says where."""
    try:
        os.makedirs(out, exist_ok=True)
        return _write(images, p, out, alpha)
    except OSError as e:
        rescue = tempfile.mkdtemp(prefix='kdiff-ztsnr-rescue-')
        _write(images, p, rescue, alpha)
        raise OSError(f'could not write the images to {out} ({e.strerror or e}); they were saved to {rescue}') from e
