"""Every subject the benchmarks (and the tests) sample: exact closed-form models, trained models, the tiny SDXL.

* `Subject` — what `regimes.run` needs of a subject; `OracleSubject` (the exact conditional oracle of
  `conditional_dataset`, in reduced coordinates) implements it, `PromptData` is what it knows about one prompt.
* `ConditionalMixture` — the exact conditional denoiser (a prompt selects rows of the mixture's means).
* `MixtureSubject` — one exact model of a weighted image set (± a Gaussian around each image) with its exact
  i.i.d. draws (schedule_study.py); `PerfectSampler` — its statistics' noise floors, from those draws.
* `TrainedSubject` — a trained model on the package's synthetic data, sampled with `generate` itself
  (``--model PATH|embedded`` in regimes.py, schedules.py, quantize_timesteps.py); `Task` — a prompt × CFG × n.
* `tiny_sdxl_configs` / `tiny_sdxl_pipeline` — an SDXL-shaped model small enough for CPU tests and benchmarks.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Protocol, Sequence

import numpy as np
import torch
from torch import Tensor

from benchmarks import common
from kdiff_ztsnr.models.sdxl import COMPONENTS, component_config
from kdiff_ztsnr.oracle import brightness_dataset, exact_model, mixture_denoiser


# ---------------------------------------------------------------------------------------------- exact oracles

class ConditionalMixture:
    """Exact conditional denoiser: prompt p (cond[b] = p) selects the rows subsets[p] of the means mu."""

    def __init__(self, mu: Tensor, subsets: Sequence[Sequence[int]], s: float = 0.):
        self.mu, self.s = mu.double(), s
        self.subsets = [torch.as_tensor(list(i), dtype=torch.long) for i in subsets]

    def __call__(self, x: Tensor, sigma: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        if cond is None:
            return mixture_denoiser(self.mu, x, sigma, self.s)
        out = torch.empty_like(x)
        for p in cond.unique().tolist():
            b = cond == p
            out[b] = mixture_denoiser(self.mu[self.subsets[p]], x[b], sigma[b], self.s)
        return out


@dataclass
class PromptData:
    """What the data says about one prompt (oracle subjects only)."""
    brightness: Tensor                  # per data image [K_p]
    rows: Tensor                        # which data images the prompt selects
    focus: Optional[Tensor] = None      # bool [K_p]: images of the prompt's main class (compliance)


class Subject(Protocol):
    name: str
    prompts: Sequence[str]

    def denoiser(self, clamp: Optional[float]): ...                # exact table (None) or clamped at σ
    def noise(self, n: int, seed: int) -> Tensor: ...               # unit-variance noise, same for all regimes
    def extra_args(self, prompt: str, n: int) -> dict: ...          # per-prompt conditioning
    def brightness(self, x: Tensor) -> Tensor: ...                  # per-sample mean brightness [n]
    def reference(self, prompt: str) -> Optional[PromptData]: ...   # data, when known
    def modes(self, x: Tensor, prompt: str) -> Optional[Tensor]: ...
    def predicted(self, prompt: str, sigma: float) -> Optional[Tensor]: ...


def conditional_dataset(shape=(4, 104, 152), per_class: int = 8, texture: float = 0.3, seed: int = 0):
    """[4·per_class, *shape] latents: black (−1), white (+1), mid-grey (0), mixed (half split ±1, or a random
    level in [−0.8, 0.8]), each plus zero-mean i.i.d. texture. Returns images and class names per image."""
    g = torch.Generator().manual_seed(seed)
    c, h, w = shape
    levels = [torch.full((per_class, c, h, w), v) for v in (-1., 1., 0.)]
    mixed = torch.empty(per_class, c, h, w)
    for i in range(per_class):
        if i < per_class // 2:
            split = torch.ones(c, h, w)
            if i % 2:
                split[:, :, : w // 2] = -1
            else:
                split[:, : h // 2] = -1
            mixed[i] = split * (1 if i % 4 < 2 else -1)
        else:
            mixed[i] = torch.empty(1).uniform_(-0.8, 0.8, generator=g)
    base = torch.cat(levels + [mixed])
    tex = torch.randn(base.shape, generator=g)
    tex = tex - tex.mean(dim=(1, 2, 3), keepdim=True)
    names = ['black'] * per_class + ['white'] * per_class + ['grey'] * per_class + ['mixed'] * per_class
    return base + texture * tex, names


class OracleSubject:
    """The exact conditional oracle of `conditional_dataset` in reduced coordinates (common.ReducedSpace)."""
    name = 'oracle'

    def __init__(self, shape=(4, 104, 152), per_class: int = 8, s: float = 0.):
        images, names = conditional_dataset(shape, per_class)
        self.shape, self.names = shape, names
        self.space = common.ReducedSpace(images)
        cls = {n: [i for i, m in enumerate(names) if m == n] for n in ('black', 'white', 'grey', 'mixed')}
        few_others = cls['grey'][:2] + cls['mixed'][-2:]
        self.subsets = {
            'completely black': cls['black'],
            'completely white': cls['white'],
            'mostly dark': cls['black'] + few_others,         # a soft preference: 8 dark + 4 others
            'unconditional': list(range(len(names))),
        }
        self.focus = {'completely black': 'black', 'completely white': 'white', 'mostly dark': 'black'}
        self.prompts = list(self.subsets)
        self.mixture = ConditionalMixture(self.space.coords, list(self.subsets.values()), s)
        self.s = s
        self.data_brightness = self.space.brightness(self.space.coords)
        self._models = {}

    def denoiser(self, clamp):
        if clamp not in self._models:
            self._models[clamp] = exact_model(self.mixture, sigma_max=clamp)
        return self._models[clamp]

    def noise(self, n, seed):
        return self.space.noise(n, seed)

    def extra_args(self, prompt, n):
        return {'cond': torch.full((n,), list(self.subsets).index(prompt), dtype=torch.long)}

    def brightness(self, x):
        return self.space.brightness(x)

    def reference(self, prompt):
        rows = torch.tensor(self.subsets[prompt])
        focus = self.focus.get(prompt)
        mask = None if focus is None else torch.tensor([self.names[i] == focus for i in rows.tolist()])
        return PromptData(self.data_brightness[rows], rows, mask)

    def modes(self, x, prompt):
        rows = torch.tensor(self.subsets[prompt])
        return torch.bincount(self.space.nearest(x, rows), minlength=len(rows))

    def predicted(self, prompt, sigma):
        rows = torch.tensor(self.subsets[prompt])
        return common.posterior_weights(self.space.coords[rows], sigma, s=self.s)


# ---------------------------------------------------------------------------------------------- weighted image sets

@dataclass
class MixtureSubject:
    """An exact model of a weighted image set, ± a Gaussian of per-element std s around each image."""
    name: str
    images: Tensor                  # unique images [K, C, H, W]
    rows: list                      # the distribution: uniform over these rows (repeats = weights)
    groups: list                    # group label per image, for mode shares
    s: float = 0.                   # per-element std around each image
    held_out: bool = False
    space: common.ReducedSpace = field(init=False)

    def __post_init__(self):
        self.space = common.ReducedSpace(self.images, extra=16 if self.s else 0)
        self.mu = self.space.coords[self.rows]
        self.model = exact_model(lambda x, sg, c: mixture_denoiser(self.mu, x, sg, self.s))
        self.group = torch.as_tensor(self.groups)
        self.n_groups = int(self.group.max()) + 1

    def draw(self, n: int, g: torch.Generator) -> Tensor:
        """Exact i.i.d. draws of the data distribution, in reduced coordinates."""
        k = torch.randint(len(self.rows), (n,), generator=g)
        return self.mu[k] + self.s * torch.randn(n, self.space.dim, generator=g, dtype=torch.float64)

    def shares(self, x: Tensor) -> Tensor:
        counts = torch.bincount(self.group[self.space.nearest(x)], minlength=self.n_groups).double()
        return counts / counts.sum()


def levels_images(levels, shape, texture=0.3, seed=0) -> Tensor:
    """One image per brightness level: the level plus zero-mean i.i.d. texture."""
    g = torch.Generator().manual_seed(seed)
    tex = torch.randn((len(levels), *shape), generator=g)
    tex = tex - tex.mean(dim=tuple(range(1, tex.ndim)), keepdim=True)
    return torch.as_tensor(levels, dtype=torch.float32).view(-1, *[1] * len(shape)) + texture * tex


def study_subjects(shape) -> list[MixtureSubject]:
    """schedule_study.py's subjects: uniform16 and two-mode (train), continuous and soft prompt (held out)."""
    g = torch.Generator().manual_seed(1)
    two = torch.cat([-0.6 + 0.1 * torch.randn(12, generator=g), 0.8 + 0.1 * torch.randn(4, generator=g)])
    cont = (0.5 * torch.randn(64, generator=g)).sort().values
    soft = torch.linspace(-1, 1, 32)
    return [
        MixtureSubject('uniform16', brightness_dataset(16, shape), list(range(16)), list(range(16))),
        MixtureSubject('two-mode', levels_images(two, shape, seed=2), list(range(16)), [0] * 12 + [1] * 4),
        MixtureSubject('continuous', levels_images(cont, shape, seed=3), list(range(64)),
                       [i * 4 // 64 for i in range(64)], s=0.5, held_out=True),
        MixtureSubject('soft prompt', levels_images(soft, shape, seed=4),
                       list(range(32)) + [i for i in range(32) if soft[i] > 0] * 2, [int(v > 0) for v in soft],
                       held_out=True),
    ]


STATS = ('w1', 'spread', 'tv')


class PerfectSampler:
    """200 000 exact draws of a MixtureSubject, and the p90 (and median) of each statistic that n i.i.d.
    draws of the data score against them: what a perfect sampler scores with n samples."""

    def __init__(self, subj: MixtureSubject, n: int, trials: int = 300, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.subj = subj
        self.x = subj.draw(200_000, g)
        self.b = subj.space.brightness(self.x)
        self.spread, self.p = self.b.std().item(), subj.shares(self.x)
        stats = [self.stats(subj.draw(n, g)) for _ in range(trials)]
        self.floor = {k: torch.tensor([s[k] for s in stats]).quantile(0.9).item() for k in STATS}
        self.median = {k: torch.tensor([s[k] for s in stats]).median().item() for k in STATS}

    def stats(self, x: Tensor) -> dict:
        b = self.subj.space.brightness(x)
        return {'w1': common.w1(b, self.b[::20]), 'spread': abs(b.std().item() - self.spread),
                'tv': 0.5 * (self.subj.shares(x) - self.p).abs().sum().item(), 'mean_spread': b.std().item()}


# ---------------------------------------------------------------------------------------------- trained models

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


def training_colours(syn: dict) -> tuple[list[str], Tensor]:
    """Captions and per-image mean colour [N, 3] in [0, 1] of the synthetic training set described by syn."""
    from kdiff_ztsnr.training.data.synthetic import render, synthetic_caption
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
    """A model trained on kdiff_ztsnr.training.data.synthetic, loaded with `load_pipeline` and sampled with
    `generate` itself (its sigmas= and clamp= take the benchmark's schedules and table clamps); sample i of
    every task uses seed + i. Metrics (`measure`) are on per-sample mean colour in [0, 1] against the training
    images with exactly the task's caption ('': all of them), rendered from the config's synthetic spec."""

    def __init__(self, spec: str):
        from kdiff_ztsnr.generation.lookup import load_pipeline
        self.spec = str(spec)
        self.pipe = load_pipeline(spec)
        self.config = json.loads(self.pipe.info.get('config', '{}'))
        syn = self.config.get('dataset', {}).get('synthetic')
        if not syn:
            raise ValueError(f'{spec}: not trained on kdiff_ztsnr.training.data.synthetic; the data metrics need '
                             'its spec')
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

    def reference(self, prompt: str) -> Tensor:
        """Mean colours [K, 3] of the training images with exactly this caption ('' : all of them)."""
        if not prompt:
            return self.data
        rows = [i for i, c in enumerate(self.captions) if c == prompt]
        if not rows:
            raise ValueError(f'no training image has the caption {prompt!r}')
        return self.data[rows]

    @torch.no_grad()
    def sample(self, sigmas: Tensor, tasks: Sequence[Task], sampler: str, seed: int = 0,
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
        from kdiff_ztsnr.generation import generate as gen
        from kdiff_ztsnr.generation.params import GenerationParams
        p = GenerationParams(prompt=prompt, scale=scale, n_samples=n, seed=seed, width=self.width,
                             height=self.height, sampler=sampler, eta=eta, steps=len(sigmas) - 1)
        return gen.generate(self.pipe, p, sigmas=sigmas, clamp=clamp)

    def measure(self, task: Task, colours: Tensor) -> dict:
        """bias = mean brightness − the reference's; spread = std of per-sample brightness; W1 = exact 1-D W1 of
        per-sample brightness to the reference images'; W1 colour = the mean over R, G, B of per-channel W1."""
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


# ---------------------------------------------------------------------------------------------- tiny SDXL

def tiny_sdxl_configs() -> dict:
    """SDXL-shaped component configs small enough for CPU tests and benchmarks (64² images → 8² latents;
    CLIP-L 32 ⊕ bigG 48 context, pooled 40)."""
    l_dim, g_dim, g_proj, time_dim = 32, 48, 40, 8
    c = {k: component_config(None, k) for k in COMPONENTS}
    return {
        'unet': dict(c['unet'], block_out_channels=[16, 32, 32], attention_head_dim=[1, 2, 2],
                     transformer_layers_per_block=[1, 1, 2], norm_num_groups=8, cross_attention_dim=l_dim + g_dim,
                     addition_time_embed_dim=time_dim, projection_class_embeddings_input_dim=g_proj + 6 * time_dim,
                     sample_size=8),
        'vae': dict(c['vae'], block_out_channels=[8, 8, 16, 16], layers_per_block=1, norm_num_groups=4,
                    sample_size=64),
        'text_encoder': dict(c['text_encoder'], hidden_size=l_dim, intermediate_size=37, num_attention_heads=4,
                             num_hidden_layers=3, projection_dim=l_dim),
        'text_encoder_2': dict(c['text_encoder_2'], hidden_size=g_dim, intermediate_size=64, num_attention_heads=4,
                               num_hidden_layers=3, projection_dim=g_proj),
    }


def tiny_sdxl_pipeline(vae=None, seed: int = 0, zero_terminal_snr: bool = True, configs: Optional[dict] = None):
    """The tiny SDXL (configs: default tiny_sdxl_configs()) with random weights (torch seed `seed`) as the
    package's Pipeline; vae replaces its random VAE (built first all the same, so the other weights match)."""
    from kdiff_ztsnr.models import alphas_cumprod_for, sdxl
    from kdiff_ztsnr.text import TextConditioner
    configs = configs or tiny_sdxl_configs()
    torch.manual_seed(seed)
    m = {c: sdxl.build_component(c, configs[c]) for c in sdxl.COMPONENTS}
    if vae is not None:
        m['vae'] = vae
    text = TextConditioner([m['text_encoder'], m['text_encoder_2']], sdxl.sdxl_tokenizers())
    mean, std = sdxl.latent_stats_for(m['vae'])
    return sdxl.sdxl_pipeline(m['unet'], m['vae'], text, alphas_cumprod_for(zero_terminal_snr), mean, std,
                              {'name': 'tiny'})
