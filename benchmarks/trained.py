"""A trained model as a benchmark subject (``--model PATH|embedded`` in regimes.py and schedules.py).

The model is loaded with ``kdiff_ztsnr.generation.load_pipeline`` and sampled with
``kdiff_ztsnr.generation.generate`` itself (its ``sigmas=`` and ``clamp=`` arguments take the benchmark's
schedules and table clamps), so the benchmark measures exactly what users run.

Sample i of every prompt, regime and schedule uses seed + i: the same noise everywhere.

Metrics, on per-sample mean colour in [0, 1] (images decoded, (x + 1)/2, averaged over pixels):
the reference for a prompt is the training data's images with exactly that caption (``completely black``:
brightness 0, ``completely white``: 1) and for '' all training images — rendered from the training config's
synthetic-dataset spec (``synthetic.synthetic_caption`` + ``render``, the same pixels the trainer saw).
bias = mean brightness − reference mean; spread = std of per-sample brightness; W1 = exact 1-D Wasserstein-1
of per-sample brightness to the reference images' brightness (for a one-colour prompt, the mean |error|);
W1 colour = the mean over R, G, B of the per-channel W1. For '' the W1 a perfect sampler scores with the
same n (samples drawn from the data itself) is printed as the noise floor.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from benchmarks import common

from kdiff_ztsnr.generation import generate as gen
from kdiff_ztsnr.generation.params import GenerationParams
from kdiff_ztsnr.training.data.synthetic import render, synthetic_caption

SOLID = ('completely black', 'completely white')


@dataclass(frozen=True)
class Task:
    prompt: str       # '' = unconditional
    scale: float      # CFG scale (1: no guidance, one forward)
    n: int            # samples (seeds seed … seed + n − 1)

    @property
    def label(self) -> str:
        return f'"{self.prompt}" scale {self.scale:g}' if self.prompt else f'unconditional "" scale {self.scale:g}'


def default_tasks(n: int, n_uncond: int, scales: Sequence[float] = (5., 1.)) -> list[Task]:
    return [Task(p, float(s), n) for s in scales for p in SOLID] + [Task('', 1., n_uncond)]


def training_colours(syn: dict) -> tuple[list[str], torch.Tensor]:
    """Captions and per-image mean colour [N, 3] in [0, 1] of the synthetic training set described by syn."""
    n, sizes = int(syn.get('n', 64)), syn.get('sizes') or [[32, 32]]
    seed, solid = int(syn.get('seed', 0)), float(syn.get('solid_fraction', 0.25))
    caps, cols = [], []
    for i in range(n):
        scene = synthetic_caption(i, seed, solid)
        im = np.asarray(render(scene, tuple(sizes[i % len(sizes)])), dtype=np.float64) / 255.
        caps.append(', '.join(scene['tags']))
        cols.append(im.reshape(-1, 3).mean(0))
    return caps, torch.tensor(np.stack(cols))


class TrainedSubject:
    def __init__(self, spec: str):
        from kdiff_ztsnr.generation.lookup import load_pipeline
        self.spec = str(spec)
        self.pipe = load_pipeline(spec)
        self.config = json.loads(self.pipe.info.get('config', '{}'))
        syn = self.config.get('dataset', {}).get('synthetic')
        if not syn:
            raise ValueError(f'{spec}: not trained on kdiff_ztsnr.training.data.synthetic; the data metrics need its spec')
        self.syn = syn
        self.width, self.height = (syn.get('sizes') or [[32, 32]])[0]
        self.captions, self.data = training_colours(syn)
        self.name = 'embedded' if self.spec == 'embedded' else Path(self.spec).name
        self.params = sum(p.numel() for p in self.pipe.inner_model.parameters())
        self._models = {}

    def describe(self) -> str:
        s = self.syn
        return (f'{self.spec} ({self.params / 1e6:.2f}M params, {self.pipe.channels}×{self.height}×{self.width} '
                f'pixels; trained on synthetic n={s.get("n")}, seed {s.get("seed", 0)}, solid_fraction '
                f'{s.get("solid_fraction", 0.25)})')

    def denoiser(self, clamp: Optional[float] = None):
        if clamp not in self._models:
            self._models[clamp] = self.pipe.denoiser(clamp=clamp)
        return self._models[clamp]

    def reference(self, prompt: str) -> torch.Tensor:
        """Mean colours [K, 3] of the training images with exactly this caption ('' : all of them)."""
        if not prompt:
            return self.data
        rows = [i for i, c in enumerate(self.captions) if c == prompt]
        if not rows:
            raise ValueError(f'no training image has the caption {prompt!r}')
        return self.data[rows]

    @torch.no_grad()
    def sample(self, sigmas: torch.Tensor, tasks: Sequence[Task], sampler: str, seed: int = 0,
               clamp: Optional[float] = None, eta: Optional[float] = None) -> dict:
        """{task: per-sample mean colour [n, 3]}: one `generate` call per task, sample i seeded with seed + i
        (the same noise for every task, regime and schedule)."""
        out = {}
        for t in tasks:
            img = self.run(sigmas, t.prompt, t.n, seed, t.scale, sampler, clamp, eta)
            out[t] = ((img.double() + 1) / 2).mean((2, 3))
        return out

    def run(self, sigmas, prompt, n, seed, scale, sampler, clamp=None, eta=None):
        """Per-sample images of `generate` (seed + i for sample i) with this schedule and table clamp."""
        p = GenerationParams(prompt=prompt, scale=scale, n_samples=n, seed=seed, width=self.width,
                             height=self.height, sampler=sampler, eta=eta, steps=len(sigmas) - 1)
        return gen.generate(self.pipe, p, sigmas=sigmas, clamp=clamp)

    def measure(self, task: Task, colours: torch.Tensor) -> dict:
        ref = self.reference(task.prompt)
        b, rb = colours.mean(1), ref.mean(1)
        return {'mean': b.mean().item(), 'bias': (b.mean() - rb.mean()).item(), 'spread': b.std().item(),
                'data_spread': rb.std().item() if len(rb) > 1 else 0.,
                'w1': common.w1(b, rb), 'w1_colour': sum(common.w1(colours[:, c], ref[:, c]) for c in range(3)) / 3,
                'mean_colour': colours.mean(0).tolist()}

    def w1_floor(self, n: int, prompt: str = '', draws: int = 300, seed: int = 0) -> dict:
        """E[W1] of n per-sample colours drawn from the reference itself: a perfect sampler's score."""
        ref = self.reference(prompt)
        g = torch.Generator().manual_seed(seed)
        w, wc = [], []
        for _ in range(draws):
            c = ref[torch.randint(len(ref), (n,), generator=g)]
            w.append(common.w1(c.mean(1), ref.mean(1)))
            wc.append(sum(common.w1(c[:, k], ref[:, k]) for k in range(3)) / 3)
        return {'w1': float(np.mean(w)), 'w1_colour': float(np.mean(wc))}


def subject_and_tasks(spec: str, n: int, n_uncond: int, scales: Sequence[float]) -> tuple:
    """(TrainedSubject, tasks, noise floors of the unconditional tasks): the common set-up of --model runs."""
    subject = TrainedSubject(spec)
    tasks = default_tasks(n, n_uncond, scales)
    floors = {t: {**subject.w1_floor(t.n, t.prompt), 'data_spread': subject.reference(t.prompt).mean(1).std().item()}
              for t in tasks if not t.prompt}
    return subject, tasks, floors


def metric_table(rows: list, key_cols: list, tasks: Sequence[Task], records: dict, floors: dict) -> str:
    """One table per task: key columns, then bias / spread / W1 / W1 colour."""
    parts = []
    for t in tasks:
        cols = key_cols + ['mean brightness', 'bias', 'spread (std)', 'W1 brightness', 'W1 colour']
        body = []
        for keys in rows:
            m = records[(tuple(keys), t)]
            body.append(list(keys) + [m['mean'], m['bias'], m['spread'], m['w1'], m['w1_colour']])
        note = ''
        if t in floors:
            f = floors[t]
            note = (f' (data: brightness std {f["data_spread"]:.3f}; a perfect sampler with n={t.n} scores '
                    f'W1 {f["w1"]:.4f}, W1 colour {f["w1_colour"]:.4f})')
        parts.append(f'**{t.label}**, n={t.n}{note}\n\n' + common.md_table(cols, body))
    return '\n\n'.join(parts)
