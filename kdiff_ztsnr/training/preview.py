"""What a user watches during training: the loss per σ bucket (σ = ∞ on its own) and preview grids.

The σ = ∞ bucket is the terminal step ZTSNR exists for (report §2.2): its v target is −x₀/σ_data, so its loss
falls only as the model learns the data mean per prompt. Previews are sampled with the package's exact
sampler from σ = ∞ (report appendix A) with the EMA weights, fixed prompts and seeds, and saved as one PNG grid
with the generation parameters as metadata.
"""

import json
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import Tensor

# finite σ bucket edges (SDXL-ZTSNR: σ[0] ≈ 0.029, σ[998] ≈ 2.3e3); t = T−1 (σ = ∞) is its own bucket
SIGMA_EDGES = (0.1, 1., 10., 100.)
PREVIEW_DEFAULTS = {'prompts': ['completely black', 'completely white'], 'seeds': [0], 'steps': 20,
                    'scale': 5., 'width': None, 'height': None, 'sampler': 'euler_ancestral'}


def bucket_names() -> list[str]:
    e = ('0',) + tuple(f'{x:g}' for x in SIGMA_EDGES)
    return [f'{a}-{b}' for a, b in zip(e, e[1:])] + [f'>{e[-1]}', 'inf']


class SigmaBucketLoss:
    """Σ loss and count per σ bucket over one optimizer step (this rank's samples)."""

    def __init__(self):
        self.names = bucket_names()
        self.reset()

    def reset(self) -> None:
        self.sum, self.count = torch.zeros(len(self.names), dtype=torch.float64), torch.zeros(len(self.names))

    def add(self, sigma: Tensor, losses: Tensor) -> None:
        sigma, losses = sigma.detach().double().cpu(), losses.detach().double().cpu()
        idx = torch.bucketize(sigma, torch.tensor(SIGMA_EDGES, dtype=torch.float64))
        idx = torch.where(sigma.isinf(), torch.full_like(idx, len(self.names) - 1), idx)
        self.sum.index_add_(0, idx, losses)
        self.count.index_add_(0, idx, torch.ones_like(losses, dtype=torch.float32))

    def pop(self) -> dict:
        """{bucket: mean loss} for the buckets seen since the last pop."""
        out = {n: float(s / c) for n, s, c in zip(self.names, self.sum, self.count) if c > 0}
        self.reset()
        return out


def preview_grid(pipeline, preview_config: dict, size: tuple[int, int], out_path: Path, step: int,
                 generate: Optional[Callable] = None) -> Path:
    """Sample every (prompt, seed) from σ = ∞ with the exact sampler; one PNG grid (rows = prompts) with
    the parameters and each cell's mean brightness as metadata."""
    from ..generation.generate import generate as default_generate
    from ..generation.image_io import to_pil
    from ..generation.params import GenerationParams
    from PIL import PngImagePlugin
    pc = {**PREVIEW_DEFAULTS, **(preview_config or {})}
    w, h = pc['width'] or size[0], pc['height'] or size[1]
    rows, meta = [], {'step': step, 'prompts': pc['prompts'], 'seeds': pc['seeds'], 'brightness': []}
    for prompt in pc['prompts']:
        cells = []
        for seed in pc['seeds']:
            p = GenerationParams(prompt=prompt, steps=pc['steps'], scale=pc['scale'], seed=seed, width=w,
                                 height=h, sampler=pc['sampler'], regime='exact', model=f'step {step}')
            with torch.no_grad():
                cells.append((generate or default_generate)(pipeline, p)[0].float().cpu())
        meta['brightness'].append([round(float((c.mean() + 1) / 2), 4) for c in cells])
        rows.append(torch.cat(cells, -1))
    grid = torch.cat(rows, -2)
    info = PngImagePlugin.PngInfo()
    info.add_text('Comment', json.dumps({**meta, **{k: pc[k] for k in ('steps', 'scale', 'sampler')},
                                         'ztsnr': 'exact', 'sigma_start': 'inf'}, default=str))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    to_pil(grid).save(out_path, pnginfo=info)
    return out_path
