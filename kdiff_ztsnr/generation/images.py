"""Image files in and out of generation: init images and masks as tensors, and the output PNGs.

Images are [B, 3, H, W] tensors in [−1, 1]. Output files are named by seed.
"""

import os

import numpy as np
import torch
from torch import Tensor

from .params import GenerationParams


def load_image(path: str, width: int, height: int) -> Tensor:
    """An init image as [1, 3, H, W] in [−1, 1] at the canvas size (bicubic)."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            im = im.convert('RGB').resize((width, height), Image.BICUBIC)
    except (OSError, UnidentifiedImageError) as e:
        raise ValueError(f'cannot read image {path}: {e}') from e
    return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)[None].float() / 127.5 - 1


def load_mask(path: str, width: int, height: int) -> Tensor:
    """An inpainting mask as [1, 1, H, W]: 1 where the image is repainted (any non-black pixel)."""
    return (load_image(path, width, height).mean(1, keepdim=True) > 0).float()


def to_pil(image: Tensor):
    """One [3, H, W] image in [−1, 1] as an 8-bit PIL image."""
    from PIL import Image
    arr = ((image.float().cpu() + 1) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
    return Image.fromarray(arr)


def save_images(images: Tensor, p: GenerationParams, out: str, alpha: bool = False) -> list[str]:
    """Write each image with its own parameters (seed + i, n_samples 1) as PNG metadata; returns the paths."""
    from .metadata import save_png
    os.makedirs(out, exist_ok=True)
    paths = []
    for i, img in enumerate(images):
        params = {**p.to_dict(), 'seed': p.seed + i, 'n_samples': 1}
        path = os.path.join(out, f'{p.seed + i:08d}.png')
        save_png(to_pil(img), path, params, alpha=alpha)
        paths.append(path)
    return paths
