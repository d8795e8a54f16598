"""The report's Figure 2 on our own model: the same prompts and seeds from σ = ∞, 20000 and 14.6146.

For each sampler (euler_ancestral, NAI's default, and the multistep dpmpp_2m) and each regime, samples the
prompts with the same seeds, prints each row's mean brightness in [0, 1] and its spread over seeds, and draws
``regimes.png`` (demo_figure): large tiles on a grey canvas with their brightness, and the histogram of the
unconditional model's brightness (prompt '', scale 1) per regime against the training data, where a finite
start leaks the noise's mean brightness into the samples (report §2.2).
"""

import os
from typing import Optional, Sequence

import torch

from ..progress import bar, phase
from ..schedules import SDXL_SIGMA_MAX
from .demo_figure import brightness, save_figure
from .generate import generate
from .params import GenerationParams

PROMPTS = ('completely black', 'completely white', 'red circle, blue background', '')
SAMPLERS = ('euler_ancestral', 'dpmpp_2m')
REGIME_PARAMS = {
    'exact inf': {'regime': 'exact'},
    'clamp 20000': {'regime': 'clamp'},
    'sigma_max 14.6146': {'regime': 'sigma_max', 'sigma_start': SDXL_SIGMA_MAX, 'resolution_aware': False},
}


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
             tiles: int = 3, data: Optional[torch.Tensor] = None) -> dict:
    """Sample the regimes, print the table, write out/regimes.png; returns the table.

    data: the training images' mean brightness, for the histogram (e.g. training.data.synthetic's)."""
    from .lookup import load_pipeline
    if pipe is None:
        with phase(f'loading {model}'):
            pipe = load_pipeline(model)
    results = regime_table(pipe, samples=samples, uncond_samples=uncond_samples, steps=steps, samplers=samplers)
    table = print_table(results)
    path = os.path.join(out, 'regimes.png')
    save_figure(results, path, data, tiles=min(tiles, samples), steps=steps)
    print(f'wrote {path}')
    return table
