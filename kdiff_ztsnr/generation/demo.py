"""The report's Figure 2 on our own model: the same prompts and seeds from σ = ∞, 20000 and 14.6146.

For each sampler (euler_ancestral, NAI's default, and the multistep dpmpp_2m) and each regime, samples the
prompts with the same seeds, prints each row's mean brightness in [0, 1] and its spread over seeds, and draws
``regimes.png`` (demo_figure): large tiles on a grey canvas with their brightness, and the histogram of the
unconditional model's brightness (prompt '', scale 1) per regime against the training data, where a finite
start leaks the noise's mean brightness into the samples (report §2.2).
"""

import json
import os
from typing import Optional, Sequence

import torch

from ..progress import bar, phase, status
from ..schedules import SDXL_SIGMA_MAX
from .generate import generate
from .params import GenerationParams

PROMPTS = ('completely black', 'completely white', 'red circle, blue background', '')
SAMPLERS = ('euler_ancestral', 'dpmpp_2m')
REGIME_PARAMS = {
    'exact inf': {'ztsnr': 'exact'},
    'clamp 20000': {'ztsnr': 'clamp'},
    'sigma_max 14.6146': {'ztsnr': 'sigma_max', 'sigma_max': SDXL_SIGMA_MAX, 'resolution_aware': False},
}


def brightness(images: torch.Tensor) -> torch.Tensor:
    """Per-image mean brightness in [0, 1] of images in [−1, 1] [B, 3, H, W]."""
    return (images.float().flatten(1).mean(1) + 1) / 2


def demo_jobs(pipe, prompts: Sequence[str] = PROMPTS, samplers: Sequence[str] = SAMPLERS, samples: int = 8,
              uncond_samples: int = 32, steps: int = 28, **overrides) -> dict:
    """{(sampler, prompt, regime): GenerationParams}, seeds 0… identical across regimes and samplers."""
    jobs = {}
    for sampler in samplers:
        for prompt in prompts:
            for name, regime in REGIME_PARAMS.items():
                extra = {} if prompt else {'scale': 1.}          # '': the unconditional model, no guidance
                jobs[sampler, prompt, name] = GenerationParams(
                    prompt=prompt, steps=steps, n_samples=samples if prompt else uncond_samples, seed=0,
                    sampler=sampler, width=pipe.base_side, height=pipe.base_side, **{**regime, **extra, **overrides})
    return jobs


def regime_table(pipe, progress: bool = True, **kw) -> dict:
    """{(sampler, prompt, regime): images} for demo_jobs(pipe, **kw), with one bar over all images."""
    jobs = demo_jobs(pipe, **kw)
    out = {}
    with bar(total=sum(p.n_samples for p in jobs.values()), desc='demo', unit='image', disable=not progress) as b:
        for key, p in jobs.items():
            out[key] = generate(pipe, p, progress=progress)
            b.update(p.n_samples)
    return out


def training_brightness(pipe) -> Optional[torch.Tensor]:
    """Mean brightness of every training image, when the model says it was trained on the synthetic set."""
    import numpy as np
    from ..training.data.synthetic import render, synthetic_caption
    try:
        syn = synthetic_spec(json.loads(pipe.info['config']))
    except (KeyError, TypeError, ValueError):
        return None
    if syn is None:
        return None
    n, sizes = int(syn.get('n', 64)), syn.get('sizes') or [[32, 32]]
    seed, solid = int(syn.get('seed', 0)), float(syn.get('solid_fraction', 0.25))
    values = [np.asarray(render(synthetic_caption(i, seed, solid), tuple(sizes[i % len(sizes)])),
                         dtype=np.float64).mean() / 255. for i in range(n)]
    return torch.tensor(values)


def print_table(results: dict) -> dict:
    """Print and return {(sampler, prompt, regime): mean brightness}."""
    print(f'{"sampler":16s} {"prompt":30s} {"regime":18s} {"mean brightness":>16s} {"spread":>8s}')
    table = {}
    for (sampler, prompt, regime), images in results.items():
        b = brightness(images)
        table[sampler, prompt, regime] = b.mean().item()
        print(f'{sampler:16s} {prompt or "(unconditional, scale 1)":30s} {regime:18s} {b.mean().item():16.3f} '
              f'{b.std().item():8.3f}')
    return table


def run_demo(out: str = 'out/demo', model: str = 'embedded', samples: int = 8, steps: int = 28,
             pipe: Optional[object] = None, uncond_samples: int = 32, samplers: Sequence[str] = SAMPLERS,
             tiles: int = 3) -> dict:
    """Sample the regimes, print the table, write out/regimes.png; returns the table."""
    from .demo_figure import save_figure
    from .loading import load_pipeline
    if pipe is None:
        with phase(f'loading {model}'):
            pipe = load_pipeline(model)
    results = regime_table(pipe, samples=samples, uncond_samples=uncond_samples, steps=steps, samplers=samplers)
    table = print_table(results)
    path = os.path.join(out, 'regimes.png')
    save_figure(results, path, training_brightness(pipe), tiles=min(tiles, samples), steps=steps)
    status(f'wrote {path}')
    print(f'wrote {path}')
    return table


def synthetic_spec(config: dict) -> Optional[dict]:
    """The synthetic-set spec of a training config, or None when the model was trained on other data."""
    ds = config.get('dataset') if isinstance(config, dict) else None
    if not isinstance(ds, dict) or ds.get('type') != 'synthetic':
        return None
    return ds.get('synthetic') or {}


def known_prompts(config: dict) -> dict:
    """{caption: count} of the training set a synthetic-set config describes (empty for other data)."""
    from collections import Counter
    from ..training.data.synthetic import synthetic_caption
    syn = synthetic_spec(config)
    if syn is None:
        return {}
    seed, solid = int(syn.get('seed', 0)), float(syn.get('solid_fraction', 0.25))
    counts = Counter(', '.join(synthetic_caption(i, seed, solid)['tags']) for i in range(int(syn.get('n', 64))))
    return dict(sorted(counts.items(), key=lambda kv: (not kv[0].startswith('completely'), kv[0])))
