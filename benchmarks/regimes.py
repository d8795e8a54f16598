"""σ_max regimes, same model, same seeds: SDXL's 14.6146 up to ∞ (report §2.2, Figure 2; appendix A.2).

    python -m benchmarks.regimes [--smoke] [--samples 1024] [--steps 28] [--latent 104 152] [--schedule truncate]

Subject (default ``--model oracle``): the exact optimal denoiser of a conditional dataset of 4-channel
latents (classes black, white, mid-grey, mixed; "prompts" select class subsets), wrapped as a v network on
the ZTSNR table. Each regime starts from σ₀ with x = σ₀·n (x = n at ∞):

* finite σ₀ below the table's top (14.6146 … 317): the exact wrapper, schedule [σ₀] + the native 28-step
  schedule's sigmas below σ₀ (``--schedule truncate``: the steps a user who "sets the first sigma" gets,
  e.g. ComfyUI's SetFirstSigma; NFE shrinks by one or two for σ₀ < 56.18), or ``--schedule retime``: the
  native ramp t = linspace(t(σ₀), 0, steps) (equal NFE), or ``--schedule karras``: Karras ρ=7 from σ₀, and
  for σ₀ above the largest finite table σ (2254.24) [σ₀] + the Karras ramp that follows ∞ (only the start
  differs) — the schedule benchmark's best, equal NFE;
* 4096 (diffusers' 2⁻²⁴ clamp), 4518.76 (ComfyUI/A1111's ᾱ clamp), 20000 (report A.2): the table clamped
  at that σ, its own native schedule ([σ_clamp, 56.18, …]) and the unmodified k-diffusion samplers;
* ∞: the exact wrapper, the native schedule and the package's exact first step.

Metrics (per prompt, sampler, regime): mean brightness bias against the prompt's data, brightness W1 and
spread ratio, the oracle's exact mode assignment (nearest data image) as a TV distance to the uniform
mixture weights (with the noise floor of a perfect sampler at this sample count), and a closed form: the
mode weights an exact posterior sampler would give from x = σ₀·n (common.posterior_weights).

The subject is pluggable: ``run(subject, regimes, samplers, …)`` needs only ``subjects.Subject``'s methods (a denoiser
factory taking the table clamp, noise, per-prompt extra_args, brightness); data-based metrics are skipped
when ``subject.reference`` returns None.

``--model embedded`` (or a trainer checkpoint directory): the trained pixel-space model instead of the oracle
(``subjects.TrainedSubject``: the package's pipeline, sampled as ``generate`` samples it). Prompts "completely
black" and "completely white" at CFG scales ``--scales`` (default 5 and 1) and '' at scale 1; the same seeds
for every regime. Finite starts use generate's ``regime='sigma_max'`` schedule with resolution_aware=False
(the native ramp re-timed to start at σ₀, equal NFE: ``--schedule retime``, the default for a model); the
clamps use the clamped table's native schedule; ∞ the exact one. Writes regimes_NAME.{md,json,png}.
"""

import argparse
import math
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from benchmarks import common, subjects
from benchmarks.common import INF, fmt_sigma, md_table
from benchmarks.subjects import OracleSubject, Subject, conditional_dataset

from kdiff_ztsnr import sampling, schedules
from kdiff_ztsnr.schedules import COMFY_SIGMA_MAX, DIFFUSERS_SIGMA_MAX, SDXL_SIGMA_MAX, ZTSNR_CLAMP


@dataclass(frozen=True)
class Regime:
    name: str
    sigma: float                    # starting σ₀ (∞ for exact ZTSNR)
    clamp: Optional[float] = None   # clamp the table's top σ to this (report A.2); None: exact table


REGIMES = [
    Regime('SDXL σ_max', SDXL_SIGMA_MAX),
    Regime('2× SDXL', 29.2),
    Regime('56', 56.),
    Regime('136 (A.2 low)', 136.),
    Regime('317 (A.2 high)', 317.),
    Regime('diffusers 2⁻²⁴ clamp', DIFFUSERS_SIGMA_MAX, DIFFUSERS_SIGMA_MAX),
    Regime('ComfyUI/A1111 clamp', COMFY_SIGMA_MAX, COMFY_SIGMA_MAX),
    Regime('NAI A.2 clamp 20000', ZTSNR_CLAMP, ZTSNR_CLAMP),
    Regime('exact ∞ (ZTSNR)', INF),
]
SAMPLERS = ['euler', 'euler_ancestral', 'dpmpp_2m', 'dpmpp_2m_sde']


def regime_sigmas(regime: Regime, model, steps: int, mode: str = 'truncate') -> torch.Tensor:
    """The schedule a regime samples with (see the module docstring)."""
    if mode == 'karras':                        # Karras ρ=7 down from σ₀ (from the top finite σ after ∞)
        sigma_min, top = float(model.sigmas[0]), common.ZTSNR_TOP         # 2254.24, whatever the clamp
        if math.isinf(regime.sigma):
            return schedules.get_sigmas_karras(steps, sigma_min, top, 7.)
        if regime.sigma > top:                   # [σ₀] + the same ramp as from ∞: only the start differs
            k = schedules.get_sigmas_karras(steps, sigma_min, top, 7.)
            k[0] = regime.sigma
            return k
        return schedules.get_sigmas_karras(steps, sigma_min, regime.sigma, 7., prepend_inf=False)
    native = model.get_sigmas(steps)
    if regime.clamp is not None or math.isinf(regime.sigma):
        return native
    s0 = torch.tensor([regime.sigma], dtype=native.dtype)
    if mode == 'truncate':
        return torch.cat([s0, native[native < regime.sigma]])
    t = torch.linspace(float(model.sigma_to_t(s0)), 0, steps)
    sig = model.t_to_sigma(t)
    sig[0] = regime.sigma
    return torch.cat([sig, sig.new_zeros(1)])


@dataclass
class Record:
    regime: Regime
    sampler: str
    prompt: str
    nfe: int
    brightness: torch.Tensor
    metrics: dict = field(default_factory=dict)


def measure(subject: Subject, prompt: str, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    b = subject.brightness(x).float()
    m = {'mean': b.mean().item(), 'std': b.std().item()}
    ref = subject.reference(prompt)
    if ref is None:
        return b, m
    m['bias'] = m['mean'] - ref.brightness.mean().item()
    m['spread'] = m['std'] / ref.brightness.std().item()
    m['w1'] = common.w1(b, ref.brightness)
    counts = subject.modes(x, prompt)
    if counts is not None:
        p = torch.full((len(counts),), 1. / len(counts), dtype=torch.float64)
        m['tv'] = common.tv(counts, p)
        if ref.focus is not None:
            m['focus'] = (counts[ref.focus].sum() / counts.sum()).item()
    return b, m


def run(subject: Subject, regimes: Sequence[Regime], samplers: Sequence[str], steps: int, n: int,
        seed: int = 0, mode: str = 'truncate', log=print) -> list[Record]:
    """Sample every (regime, prompt, sampler) from the same noise and sampler seed."""
    records = []
    noise = subject.noise(n, seed)
    for regime in regimes:
        t0 = time.perf_counter()
        model = subject.denoiser(regime.clamp)
        sigmas = regime_sigmas(regime, model, steps, mode)
        x0 = noise if math.isinf(sigmas[0]) else noise * sigmas[0]
        for prompt in subject.prompts:
            for name in samplers:
                torch.manual_seed(seed + 1)
                out = sampling.SAMPLERS[name](model, x0, sigmas, extra_args=subject.extra_args(prompt, n),
                                              disable=True)
                b, m = measure(subject, prompt, out)
                records.append(Record(regime, name, prompt, len(sigmas) - 1, b, m))
        log(f'  {regime.name:24s} σ₀={fmt_sigma(regime.sigma):>9s} NFE={len(sigmas) - 1:2d} '
            f'({time.perf_counter() - t0:.1f}s)')
    return records


def theory(subject: Subject, regimes, prompts) -> dict:
    """Closed-form exact-posterior predictions per (regime, prompt): mean-brightness bias, TV, focus."""
    out = {}
    for r in regimes:
        for p in prompts:
            w = subject.predicted(p, r.sigma)
            ref = subject.reference(p)
            if w is None or ref is None:
                continue
            k = len(w)
            d = {'bias': (w @ ref.brightness.double()).item() - ref.brightness.mean().item(),
                 'tv': 0.5 * (w - 1. / k).abs().sum().item()}
            if ref.focus is not None:
                d['focus'] = w[ref.focus].sum().item()
            out[(r.name, p)] = d
    return out


def tables(records: list[Record], th: dict, regimes, samplers, prompts, n: int, floors: dict) -> str:
    short = {'euler': 'eul', 'euler_ancestral': 'eul_a', 'dpmpp_2m': '2m', 'dpmpp_2m_sde': '2m_sde'}
    by = {(r.regime.name, r.prompt, r.sampler): r for r in records}
    parts = []
    for p in prompts:
        first = by[(regimes[0].name, p, samplers[0])].metrics
        has_ref = 'bias' in first
        key, label = ('bias', 'mean-brightness bias') if has_ref else ('mean', 'mean brightness')
        cols = ['regime', 'σ₀', 'NFE'] + [f'{short.get(s, s)} {key}' for s in samplers]
        if has_ref:
            cols += ['theory bias'] + [f'{short.get(s, s)} W1' for s in samplers]
            cols += [f'{short.get(s, s)} TV' for s in samplers] + ['theory TV']
            if 'focus' in first:
                cols += [f'{short.get(s, s)} in-class' for s in samplers] + ['theory in-class']
        rows = []
        for r in regimes:
            recs = [by[(r.name, p, s)] for s in samplers]
            row = [r.name, fmt_sigma(r.sigma), recs[0].nfe] + [x.metrics[key] for x in recs]
            if has_ref:
                t = th.get((r.name, p), {})
                row += [t.get('bias', float('nan'))] + [x.metrics['w1'] for x in recs]
                row += [x.metrics['tv'] for x in recs] + [t.get('tv', float('nan'))]
                if 'focus' in first:
                    row += [x.metrics['focus'] for x in recs] + [t.get('focus', float('nan'))]
            rows.append(row)
        note = f' (TV noise floor of a perfect sampler with n={n}: {floors[p]:.3f})' if p in floors else ''
        parts.append(f'**prompt "{p}"** — {label}{note}\n\n' + md_table(cols, rows))
    return '\n\n'.join(parts)


def plot(records, th, regimes, samplers, prompts, path):
    plt = common.pyplot()
    fig, axes = plt.subplots(2, len(prompts), figsize=(4.2 * len(prompts), 7), squeeze=False)
    xs = list(range(len(regimes)))
    labels = [fmt_sigma(r.sigma) for r in regimes]
    by = {(r.regime.name, r.prompt, r.sampler): r for r in records}
    for j, p in enumerate(prompts):
        for row, key in enumerate(('bias', 'tv')):
            ax = axes[row, j]
            for s in samplers:
                ys = [by[(r.name, p, s)].metrics.get(key, float('nan')) for r in regimes]
                ax.plot(xs, ys, 'o-', label=s, ms=3)
            ys = [th.get((r.name, p), {}).get(key, float('nan')) for r in regimes]
            ax.plot(xs, ys, 'k--', label='closed form (exact posterior)')
            ax.set_xticks(xs, labels, rotation=60, fontsize=7)
            ax.axhline(0, color='grey', lw=0.5)
            ax.set_title(f'"{p}"', fontsize=9)
            ax.set_ylabel('mean-brightness bias' if key == 'bias' else 'mode TV to uniform')
    axes[0, 0].legend(fontsize=7)
    common.save_figure(fig, path, 'Start-σ regimes (x-axis: σ₀), exact oracle; bias = sample mean − data mean')


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--smoke', action='store_true', help='tiny sizes, for the tests')
    p.add_argument('--model', default='oracle', help="'oracle' (exact closed-form model), 'embedded' or a trainer "
                   'checkpoint directory (the trained model; see subjects.TrainedSubject)')
    p.add_argument('--samples', type=int, default=None, help='samples per prompt (default 1024; 32 for a model)')
    p.add_argument('--uncond-samples', type=int, default=None, help="model: samples for '' (default --samples)")
    p.add_argument('--scales', type=float, nargs='+', default=[5., 1.], help='model: CFG scales for the solid prompts')
    p.add_argument('--threads', type=int, default=None, help='torch threads (default: torch\'s)')
    p.add_argument('--steps', type=int, default=28)
    p.add_argument('--latent', type=int, nargs=2, default=[104, 152], help='latent H W (4 channels)')
    p.add_argument('--schedule', default=None, choices=['truncate', 'retime', 'karras'],
                   help='finite starts (default truncate; retime for a model)')
    p.add_argument('--samplers', nargs='+', default=None, help=f'default {SAMPLERS}; euler_ancestral for a model')
    p.add_argument('--converged-steps', type=int, default=100,
                   help='second pass: every regime at this many native steps (start-σ effect alone); 0: skip')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--out', default=None, help='output folder (default benchmarks/results)')
    return p


def main(argv=None):
    a = parser().parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.model != 'oracle':
        return main_trained(a)
    a.samples = a.samples or 1024
    a.schedule = a.schedule or 'truncate'
    regimes, samplers = REGIMES, a.samplers or SAMPLERS
    if a.smoke:
        a.samples, a.steps, a.latent = 32, 8, [16, 16]
        regimes, samplers = [REGIMES[0], REGIMES[7], REGIMES[-1]], ['euler', 'dpmpp_2m_sde']
        a.converged_steps = 12 if a.converged_steps else 0
    out = common.out_dir(a.out)
    t0 = time.perf_counter()
    subject = OracleSubject((4, *a.latent))
    print(f'regimes: {subject.name}, latent 4×{a.latent[0]}×{a.latent[1]} (d={subject.space.d}), '
          f'{a.samples} samples, {a.steps} steps, schedule={a.schedule}')
    check = common.verify_reduction(conditional_dataset((4, 16, 16))[0], sampling.sample_euler,
                                    subject.denoiser(None).get_sigmas(a.steps))
    print(f'reduced-coordinate check (full d vs reduced, euler from ∞): max brightness diff {check:.2e}')
    records = run(subject, regimes, samplers, a.steps, a.samples, a.seed, a.schedule)
    th = theory(subject, regimes, subject.prompts)
    floors = {pr: common.tv_noise_floor(a.samples, torch.full((len(subject.subsets[pr]),), 1. / len(subject.subsets[pr]),
                                                              dtype=torch.float64)) for pr in subject.prompts}
    table = tables(records, th, regimes, samplers, subject.prompts, a.samples, floors)
    conv = []
    if a.converged_steps:
        print(f'converged pass: {a.converged_steps} native steps, euler_ancestral and dpmpp_2m')
        soft = ['mostly dark', 'unconditional']
        sub = OracleSubject((4, *a.latent))
        sub.prompts = soft
        conv = run(sub, regimes, ['euler_ancestral', 'dpmpp_2m'], a.converged_steps, a.samples, a.seed, a.schedule)
        table += (f'\n\n**Converged pass: the same regimes at {a.converged_steps} native steps** (isolates the '
                  f'start-σ effect from the discretisation of the first steps)\n\n'
                  + tables(conv, th, regimes, ['euler_ancestral', 'dpmpp_2m'], soft, a.samples, floors))
    print(table)
    plot(records, th, regimes, samplers, subject.prompts, out / 'regimes.png')
    payload = {'args': vars(a), 'reduction_check': check, 'seconds': time.perf_counter() - t0,
               'records': rows_of(records), 'converged': rows_of(conv),
               'theory': [{'regime': k[0], 'prompt': k[1], **v} for k, v in th.items()]}
    common.write_outputs(out, 'regimes', table, payload)
    print(f'wrote {out / "regimes.png"}, regimes.md, regimes.json ({time.perf_counter() - t0:.0f}s)')
    return payload


def rows_of(records: list[Record]) -> list[dict]:
    return [{'regime': r.regime.name, 'sigma0': r.regime.sigma, 'sampler': r.sampler, 'prompt': r.prompt,
             'nfe': r.nfe, **r.metrics} for r in records]


# ---------------------------------------------------------------------------------------------- trained model

def model_sigmas(subject, regime: Regime, steps: int, mode: str) -> torch.Tensor:
    """What generate() uses for the regime (retime), or the oracle benchmark's truncate / karras variants."""
    from kdiff_ztsnr import schedule_policy
    model = subject.denoiser(regime.clamp)
    if mode != 'retime':
        return regime_sigmas(regime, model, steps, mode)
    if regime.clamp is not None or math.isinf(regime.sigma):
        return schedule_policy.sigmas(model, 'native', steps)       # [clamp or ∞, 56.18, …, 0]
    # regime='sigma_max', resolution_aware=False
    return schedule_policy.sigmas(model, 'native', steps, sigma_start=regime.sigma)


def main_trained(a):
    regimes = list(REGIMES)
    samplers = a.samplers or ['euler_ancestral']
    mode = a.schedule or 'retime'
    n = a.samples or 32
    if a.smoke:
        n, a.steps, regimes, samplers = 4, 4, [REGIMES[0], REGIMES[7], REGIMES[-1]], samplers[:1]
    n_u = a.uncond_samples or n
    out = common.out_dir(a.out)
    t0 = time.perf_counter()
    subject, tasks, floors = subjects.subject_and_tasks(a.model, n, n_u, a.scales)
    print(f'regimes: {subject.describe()}; {n} samples per solid prompt, {n_u} for \'\', {a.steps} steps, '
          f'schedule={mode}, samplers {samplers}')
    records, rows, raw = {}, [], []
    for regime in regimes:
        sigmas = model_sigmas(subject, regime, a.steps, mode)
        for sampler in samplers:
            t1 = time.perf_counter()
            res = subject.sample(sigmas, tasks, sampler, a.seed, regime.clamp)
            keys = (regime.name, fmt_sigma(regime.sigma), len(sigmas) - 1, sampler)
            rows.append(keys)
            for t, colours in res.items():
                m = subject.measure(t, colours)
                records[(keys, t)] = m
                raw.append({'regime': regime.name, 'sigma0': regime.sigma, 'nfe': len(sigmas) - 1, 'sampler': sampler,
                            'prompt': t.prompt, 'scale': t.scale, 'n': t.n, **m})
            print(f'  {regime.name:24s} σ₀={fmt_sigma(regime.sigma):>9s} {sampler} ({time.perf_counter() - t1:.1f}s)')
    table = common.metric_table(rows, ['regime', 'σ₀', 'NFE', 'sampler'], tasks, records, floors)
    table = f'Model: {subject.describe()}\n\n' + table
    print(table)
    name = f'regimes_{subject.name}'
    plot_trained(raw, regimes, samplers, tasks, floors, out / f'{name}.png', subject.name)
    payload = {'args': vars(a), 'model': subject.describe(), 'records': raw,
               'floors': [{'prompt': t.prompt, 'n': t.n, **f} for t, f in floors.items()],
               'seconds': time.perf_counter() - t0}
    common.write_outputs(out, name, table, payload, script='regimes')
    print(f'wrote {out / name}.png, .md, .json ({time.perf_counter() - t0:.0f}s)')
    return payload


def plot_trained(raw, regimes, samplers, tasks, floors, path, model_name):
    plt = common.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    xs = list(range(len(regimes)))
    labels = [fmt_sigma(r.sigma) for r in regimes]

    def series(t, sampler, key):
        return [next(r[key] for r in raw if r['regime'] == g.name and r['sampler'] == sampler and
                     r['prompt'] == t.prompt and r['scale'] == t.scale) for g in regimes]
    for sampler in samplers:
        for t in tasks:
            if t.prompt:
                axes[0].plot(xs, series(t, sampler, 'bias'), 'o-', ms=3, label=f'{t.label}, {sampler}')
            else:
                axes[1].plot(xs, series(t, sampler, 'w1'), 'o-', ms=3, label=f'W1 brightness, {sampler}')
                axes[1].plot(xs, series(t, sampler, 'w1_colour'), 's--', ms=3, label=f'W1 colour, {sampler}')
    for t, f in floors.items():
        axes[1].axhline(f['w1'], color='grey', lw=0.8, ls=':', label=f'perfect sampler, n={t.n}')
    axes[0].axhline(0, color='k', lw=0.5)
    axes[0].set_ylabel('mean brightness − data (0 black, 1 white)')
    axes[0].set_title('solid prompts: brightness bias', fontsize=9)
    axes[1].set_ylabel('W1 to the training data')
    axes[1].set_title("unconditional '' (scale 1)", fontsize=9)
    for ax in axes:
        ax.set_xticks(xs, labels, rotation=60, fontsize=7)
        ax.set_xlabel('start σ₀')
        ax.legend(fontsize=6)
    common.save_figure(fig, path, f'Start-σ regimes, trained model ({model_name})')


if __name__ == '__main__':
    main()
