"""Shared pieces of the benchmarks: machine info, output paths, metrics and exact closed-form models.

The exact models are the package's oracles (`kdiff_ztsnr.oracle`: optimal denoisers of a finite set of
images, or a Gaussian mixture around them, wrapped as v networks inside DiscreteVDenoiser).

Exact dimension reduction (``ReducedSpace``). For data y_k ∈ R^d and x = y + σ·n, the posterior over k
depends on x only through |x − y_k|² = |P x − y_k|² + |x_⊥|², P the projection onto span{y_k}; the last term
is common to every k and cancels in the softmax. Every k-diffusion schedule sampler updates x by linear
combinations of x, D(x) ∈ span{y_k} (+ the isotropic part for the mixture) and fresh isotropic Gaussian
noise, and the projection of isotropic Gaussian noise onto an orthonormal basis is again standard normal.
So the coordinates of x in an orthonormal basis Q of span{y_k} (plus, for the mixture, a few sampled
orthogonal coordinates) evolve exactly as they do in R^d, and mean brightness is a linear functional of
them. This makes a 4×104×152 latent (d = 63232) cost what a K-vector costs; ``verify_reduction`` checks it
against the full-dimensional run. d still enters, through the data's Gram matrix (norms ∝ d).
"""

import json
import math
import os
import platform
import statistics
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from kdiff_ztsnr.oracle import exact_model, mixture_denoiser
from kdiff_ztsnr.schedules import sigmas_from_alphas_cumprod, ztsnr_alphas_cumprod


warnings.filterwarnings('ignore', message='Should have tb<=t1')  # torchsde float32 round-off in k-diffusion

RESULTS = Path(__file__).resolve().parent / 'results'
INF = math.inf
ZTSNR_TOP = float(sigmas_from_alphas_cumprod(ztsnr_alphas_cumprod())[-2])   # the table's largest finite σ, 2254.24


# ---------------------------------------------------------------------------------------------- machine, io

def machine() -> dict:
    """CPU model (lscpu), usable cores and torch version, for the README."""
    model = platform.processor() or 'unknown'
    try:
        out = subprocess.run(['lscpu'], capture_output=True, text=True, timeout=5).stdout
        model = next(l.split(':', 1)[1].strip() for l in out.splitlines() if l.startswith('Model name'))
    except Exception:
        pass
    return {'cpu': model, 'cores': len(os.sched_getaffinity(0)), 'torch': torch.__version__,
            'threads': torch.get_num_threads(), 'python': platform.python_version()}


def machine_line() -> str:
    m = machine()
    return f'{m["cpu"]}, {m["cores"]} cores, torch {m["torch"]} ({m["threads"]} threads), Python {m["python"]}'


def out_dir(path: Optional[str]) -> Path:
    d = Path(path) if path else RESULTS
    d.mkdir(parents=True, exist_ok=True)
    return d


def save_figure(fig, path, title: Optional[str] = None) -> None:
    """Title, tight layout, write the PNG and free the figure (every benchmark's plot ends so)."""
    import matplotlib.pyplot as plt
    if title is not None:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(out: Path, name: str, table: str, payload: dict, script: Optional[str] = None) -> None:
    """results/NAME.md (the printed table, with the machine) and results/NAME.json (raw numbers)."""
    header = f'<!-- written by benchmarks/{script or name}.py; {time.strftime("%Y-%m-%d %H:%M")}; {machine_line()} -->\n'
    (out / f'{name}.md').write_text(header + table + '\n')
    (out / f'{name}.json').write_text(json.dumps({'machine': machine(), **payload}, indent=1, default=float))


def pyplot():
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def md_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return 'inf' if math.isinf(v) else f'{v:.4g}' if abs(v) >= 1e-3 or v == 0 else f'{v:.2e}'
        return str(v)
    lines = ['| ' + ' | '.join(headers) + ' |', '|' + '---|' * len(headers)]
    lines += ['| ' + ' | '.join(fmt(v) for v in r) + ' |' for r in rows]
    return '\n'.join(lines)


def fmt_sigma(s: float) -> str:
    return '∞' if math.isinf(s) else f'{s:.6g}'


# ---------------------------------------------------------------------------------------------- timing

def interleaved(fns: dict, repeats: int, inner: int = 1) -> dict:
    """Median seconds per call of each fn, runs interleaved (a, b, a, b, …) so machine load hits all alike."""
    times = {k: [] for k in fns}
    for f in fns.values():          # warm-up
        f()
    for _ in range(repeats):
        for k, f in fns.items():
            t = time.perf_counter()
            for _ in range(inner):
                f()
            times[k].append((time.perf_counter() - t) / inner)
    return {k: statistics.median(v) for k, v in times.items()}


# ---------------------------------------------------------------------------------------------- exact models

@dataclass
class ReducedSpace:
    """Orthonormal coordinates of span{images} (+ `extra` orthogonal coordinates, the first along the
    part of the all-ones vector outside the span). See the module docstring for why this is exact."""
    images: Tensor          # [K, C, H, W]
    extra: int = 0          # orthogonal coordinates to carry (needed when the model has isotropic variance)

    def __post_init__(self):
        y = self.images.flatten(1).double()                      # [K, d]
        self.k, self.d = y.shape
        q, r = torch.linalg.qr(y.T)                              # y.T = Q R, Q [d, K]
        self.coords = torch.cat([r.T, torch.zeros(self.k, self.extra, dtype=torch.float64)], 1)   # data [K, K+e]
        ones = torch.ones(self.d, dtype=torch.float64)
        in_span = q.T @ ones
        ortho = (ones @ ones - in_span @ in_span).clamp(min=0).sqrt()
        tail = torch.zeros(self.extra, dtype=torch.float64)
        if self.extra:
            tail[0] = ortho
        self.ones = torch.cat([in_span, tail]) / self.d          # brightness = x · ones
        self.q = q
        self.dim = self.k + self.extra

    def noise(self, n: int, seed: int) -> Tensor:
        return torch.randn(n, self.dim, generator=torch.Generator().manual_seed(seed))

    def brightness(self, x: Tensor) -> Tensor:
        return x.double() @ self.ones

    def nearest(self, x: Tensor, rows: Optional[Tensor] = None) -> Tensor:
        """Index (into rows, default all) of the nearest data image: the oracle's exact mode assignment."""
        c = self.coords if rows is None else self.coords[rows]
        return torch.cdist(x.double(), c).argmin(1)

    def sq_error(self, a: Tensor, b: Tensor) -> Tensor:
        """Per-sample squared error in R^d [B]; the sampled orthogonal coordinates stand for all d−K−1."""
        e = (a.double() - b.double()) ** 2
        exact = e[:, :self.k + min(self.extra, 1)].sum(1)
        if self.extra > 1:
            exact = exact + e[:, self.k + 1:].mean(1) * (self.d - self.k - 1)
        return exact


def verify_reduction(images: Tensor, sampler: Callable, sigmas: Tensor, n: int = 8, seed: int = 0) -> float:
    """Max |brightness difference| between the full-d run and the reduced run from the projected same noise."""
    space = ReducedSpace(images)
    full = exact_model(lambda x, s, c: mixture_denoiser(images, x, s))
    red = exact_model(lambda x, s, c: mixture_denoiser(space.coords, x, s))
    noise = torch.randn(n, *images.shape[1:], generator=torch.Generator().manual_seed(seed))
    noise_r = (noise.flatten(1).double() @ space.q).float()
    x0 = 1. if math.isinf(sigmas[0]) else float(sigmas[0])
    a = sampler(full, noise * x0, sigmas, disable=True)
    b = sampler(red, noise_r * x0, sigmas, disable=True)
    return (a.flatten(1).double().mean(1) - space.brightness(b)).abs().max().item()


# ---------------------------------------------------------------------------------------------- metrics

def w1(samples: Tensor, atoms: Tensor, weights: Optional[Tensor] = None) -> float:
    """Exact 1-D Wasserstein-1 distance between samples and a weighted set of atoms."""
    from scipy.stats import wasserstein_distance
    return float(wasserstein_distance(samples.double().numpy(), atoms.double().numpy(),
                                      None, None if weights is None else weights.double().numpy()))


def tv(counts: Tensor, p: Tensor) -> float:
    """Total variation between an empirical histogram and probabilities p."""
    q = counts.double() / counts.sum()
    return 0.5 * (q - p.double()).abs().sum().item()


def tv_noise_floor(n: int, p: Tensor, trials: int = 2000, seed: int = 0) -> float:
    """E[TV] of an n-sample histogram drawn from p itself: what a perfect sampler scores with n samples."""
    g = torch.Generator().manual_seed(seed)
    draws = torch.multinomial(p.double().expand(trials, -1), n, replacement=True, generator=g)
    counts = torch.zeros(trials, len(p), dtype=torch.float64).scatter_add_(1, draws, torch.ones_like(draws, dtype=torch.float64))
    return (0.5 * (counts / n - p).abs().sum(1)).mean().item()


def posterior_weights(coords: Tensor, sigma: float, draws: int = 200_000, seed: int = 0, s: float = 0.) -> Tensor:
    """E_n[p(k | x = σn)]: the exact-posterior (reverse-SDE limit) mode weights when sampling starts at
    x = σ·n instead of x ~ p_σ. Logits ℓ_k = (n·y_k)/σ' − |y_k|²/2σ'² (σ'² = σ² + s², times σ/σ' on n)
    are jointly Gaussian with covariance Y Yᵀ σ²/σ'⁴: a K-dimensional expectation. σ = ∞: uniform."""
    k = len(coords)
    if math.isinf(sigma):
        return torch.full((k,), 1. / k, dtype=torch.float64)
    y = coords.double()
    g = torch.Generator().manual_seed(seed)
    var = sigma ** 2 + s ** 2
    n = torch.randn(draws, y.shape[1], generator=g, dtype=torch.float64)
    logits = (sigma * n @ y.T - 0.5 * (y * y).sum(1)) / var
    return logits.softmax(1).mean(0)


def metric_table(rows: list, key_cols: list, tasks: Sequence, records: dict, floors: dict) -> str:
    """One table per trained-model task (subjects.Task): key columns, then bias / spread / W1 / W1 colour;
    records[(keys, task)] = subjects.TrainedSubject.measure's dict, floors[task] its perfect-sampler scores."""
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
        parts.append(f'**{t.label}**, n={t.n}{note}\n\n' + md_table(cols, body))
    return '\n\n'.join(parts)
