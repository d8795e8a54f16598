"""The report's Figure 2 on our own model: the same prompts and seeds from σ = ∞, 20000 and 14.6146.

Writes a grid (rows: prompt × regime, columns: seeds) and prints each row's mean brightness in [0, 1] and
its spread over seeds. The last rows are the unconditional model (prompt '', scale 1), where a finite start
leaks the noise's mean brightness into the samples (report §2.2).
"""

import os
from typing import Optional

import torch

from ..schedules import SDXL_SIGMA_MAX
from .generate import generate
from .params import GenerationParams

PROMPTS = ('completely black', 'completely white', 'white background', 'red circle, blue background', '')
REGIME_PARAMS = {
    'exact inf': {'ztsnr': 'exact'},
    'clamp 20000': {'ztsnr': 'clamp'},
    'sigma_max 14.6146': {'ztsnr': 'sigma_max', 'sigma_max': SDXL_SIGMA_MAX, 'resolution_aware': False},
}


def brightness(images: torch.Tensor) -> torch.Tensor:
    """Per-image mean brightness in [0, 1] of images in [−1, 1] [B, 3, H, W]."""
    return (images.float().flatten(1).mean(1) + 1) / 2


def regime_table(pipe, prompts=PROMPTS, samples: int = 8, steps: int = 28, **overrides) -> dict:
    """{(prompt, regime): images} with identical seeds across regimes."""
    out = {}
    for prompt in prompts:
        for name, regime in REGIME_PARAMS.items():
            scale = {} if prompt else {'scale': 1.}          # '': the unconditional model, no guidance
            p = GenerationParams(prompt=prompt, steps=steps, n_samples=samples, seed=0,
                                 width=pipe.base_side, height=pipe.base_side,
                                 **{**regime, **scale, **overrides})
            out[prompt, name] = generate(pipe, p)
    return out


def save_grid(results: dict, path: str) -> None:
    from PIL import Image, ImageDraw
    rows = list(results.items())
    _, first = rows[0]
    n, _, h, w = first.shape
    label_w = 230
    grid = Image.new('RGB', (label_w + n * (w + 2), len(rows) * (h + 2)), 'white')
    draw = ImageDraw.Draw(grid)
    for r, ((prompt, regime), images) in enumerate(rows):
        label = prompt or '(unconditional)'
        draw.text((4, r * (h + 2) + h // 2 - 10), f'{label}\n{regime}', fill='black')   # ASCII: default font
        for c, img in enumerate(images):
            arr = ((img.float().cpu() + 1) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
            grid.paste(Image.fromarray(arr), (label_w + c * (w + 2), r * (h + 2)))
    from ..files import atomic_write
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    atomic_write(path, lambda tmp: grid.save(tmp, format='PNG'))      # never a partial regimes.png


def run_demo(out: str = 'out/demo', model: str = 'embedded', samples: int = 8, steps: int = 28,
             pipe: Optional[object] = None) -> dict:
    from .lookup import load_pipeline
    pipe = load_pipeline(model) if pipe is None else pipe
    results = regime_table(pipe, samples=samples, steps=steps)
    print(f'{"prompt":32s} {"regime":18s} {"mean brightness":>16s} {"spread":>8s}')
    table = {}
    for (prompt, regime), images in results.items():
        b = brightness(images)
        table[prompt, regime] = b.mean().item()
        print(f'{prompt or "(unconditional, scale 1)":32s} {regime:18s} {b.mean().item():16.3f} {b.std().item():8.3f}')
    path = os.path.join(out, 'regimes.png')
    save_grid(results, path)
    print(f'wrote {path}')
    return table
