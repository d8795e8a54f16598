"""Schedules from σ = ∞ at equal NFE: native vs karras / exponential / polyexponential (+ designed ones).

    python benchmarks/schedules.py [--smoke] [--samples 1024] [--nfe 10 20 28 50] [--latent 104 152]

Two exact subjects on the report's canvas (4×104×152 latents, k=16 images of oracle.brightness_dataset):
the finite-dataset oracle (s = 0: the posterior collapses onto one image at low σ, so only the high/mid-σ
part of a schedule matters) and a Gaussian mixture around the same images with per-element std s = 0.5
(its within-component "detail" must still be integrated down to σ → 0, so low-σ spacing matters too).
Every schedule starts at ∞ (the package's exact first step) and has the same number of model calls for
the first-order samplers (n + 1 entries, the last 0; dpmpp_2m also one call per step).

Metrics: distance of the samples to the exact distribution (brightness W1, mode TV to the uniform mixture
weights, with the perfect-sampler noise floor), and for the deterministic samplers (euler, dpmpp_2m) the
error against a high-NFE reference solve of the probability-flow ODE from the same noise (dpmpp_2m with
2000 log-spaced steps from σ = 10⁶ on the raw, σ-exact denoiser in float64; its own error is estimated
against 1000 steps and printed): RMS error per latent element and the fraction of samples that end in
the same mode as the reference.
"""

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import md_table  # noqa: E402

from kdiff_ztsnr import sampling, schedules  # noqa: E402
from kdiff_ztsnr.oracle import brightness_dataset  # noqa: E402

SIGMA_MIN = 0.029167      # the table's smallest sigma (SDXL and ZTSNR share it)


def native_sigma1(model, n):
    return float(model.get_sigmas(n)[1])


def schedule_specs(sigma_top: float) -> dict:
    """name -> f(model, n) giving an n-step schedule [∞, …, 0]."""
    k, e, pe = schedules.get_sigmas_karras, schedules.get_sigmas_exponential, schedules.get_sigmas_polyexponential
    return {
        'native': lambda m, n: m.get_sigmas(n),
        'karras ρ=7': lambda m, n: k(n, SIGMA_MIN, sigma_top, 7.),
        'exponential': lambda m, n: e(n, SIGMA_MIN, sigma_top),
        'polyexp ρ=2': lambda m, n: pe(n, SIGMA_MIN, sigma_top, 2.),
        # designed: keep native's σ₁ (first finite σ), change the ramp below it
        'karras ρ=7, σ₁=native': lambda m, n: k(n, SIGMA_MIN, native_sigma1(m, n), 7.),
        'karras ρ=5': lambda m, n: k(n, SIGMA_MIN, sigma_top, 5.),
        # designed: native's ramp, but the first finite σ at ≥ 300 (≈ √d of this canvas; A.2's 136–317)
        'native, σ₁≥300': lambda m, n: native_high_start(m, n, 300.),
        'exponential σ₁=300': lambda m, n: e(n, SIGMA_MIN, 300.),
    }


def native_high_start(model, n, sigma_1):
    """[∞, max(σ₁, native σ₁), native's ramp over the remaining n − 2 steps]: NFE n."""
    nat = model.get_sigmas(n - 1)[1:]          # n − 1 finite (incl. σ_min) + 0
    s1 = max(sigma_1, float(model.get_sigmas(n)[1]))
    return torch.cat([torch.tensor([math.inf, s1]), nat])


def reference_solve(denoise, noise, steps, top=1e6):
    """Probability-flow ODE from ∞ on the raw σ-exact denoiser, float64, dpmpp_2m on log-spaced sigmas."""
    sig = torch.cat([torch.tensor([math.inf]), torch.logspace(math.log10(top), math.log10(SIGMA_MIN), steps - 1,
                                                              dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])
    model = lambda x, s, **kw: denoise(x, s, None)  # noqa: E731
    return sampling.sample_dpmpp_2m(model, noise.double(), sig, disable=True)


def evaluate(subject_name, s, images, specs, nfes, samplers, n_samples, ref_steps, log, seed=0):
    space = common.ReducedSpace(images, extra=16 if s > 0 else 0)
    mix = common.ConditionalMixture(space.coords, [list(range(space.k))], s)
    model = common.exact_model(mix)
    data_b = space.brightness(space.coords)
    uniform = torch.full((space.k,), 1. / space.k, dtype=torch.float64)
    noise = space.noise(n_samples, seed)
    t0 = time.perf_counter()
    ref = reference_solve(mix, noise, ref_steps)
    ref_half = reference_solve(mix, noise, ref_steps // 2)
    ref_err = (space.sq_error(ref, ref_half) / space.d).mean().sqrt().item()
    ref_modes = space.nearest(ref)
    ref_counts = torch.bincount(ref_modes, minlength=space.k)
    log(f'  {subject_name}: reference ({ref_steps} steps) RMS change vs {ref_steps // 2} steps: {ref_err:.2e}; '
        f'reference W1 {common.w1(space.brightness(ref), data_b):.4f} TV {common.tv(ref_counts, uniform):.4f} '
        f'({time.perf_counter() - t0:.0f}s)')
    rows = []
    for nfe in nfes:
        for name, spec in specs.items():
            sigmas = spec(model, nfe)
            for sname in samplers:
                torch.manual_seed(seed + 1)
                out = sampling.SAMPLERS[sname](model, noise, sigmas, disable=True)
                b = space.brightness(out)
                modes = space.nearest(out)
                counts = torch.bincount(modes, minlength=space.k)
                r = {'subject': subject_name, 'nfe': nfe, 'schedule': name, 'sampler': sname,
                     'sigma1': float(sigmas[1]), 'w1': common.w1(b, data_b), 'tv': common.tv(counts, uniform)}
                if sname in ('euler', 'dpmpp_2m', 'heun', 'lms'):
                    r['rmse'] = (space.sq_error(out, ref) / space.d).mean().sqrt().item()
                    r['same_mode'] = (modes == ref_modes).double().mean().item()
                rows.append(r)
        log(f'    NFE {nfe} done ({time.perf_counter() - t0:.0f}s)')
    floor = common.tv_noise_floor(n_samples, uniform)
    return rows, {'ref_rmse_vs_half': ref_err, 'tv_floor': floor}


def summarize(rows, specs, nfes, samplers):
    out = []
    for subj in dict.fromkeys(r['subject'] for r in rows):
        for nfe in nfes:
            sub = [r for r in rows if r['subject'] == subj and r['nfe'] == nfe]
            for name in specs:
                rs = {r['sampler']: r for r in sub if r['schedule'] == name}
                row = [subj, nfe, name, rs[samplers[0]]['sigma1']]
                for sm in samplers:
                    row += [rs[sm]['w1'], rs[sm]['tv']]
                for sm in samplers:
                    if 'rmse' in rs[sm]:
                        row += [rs[sm]['rmse'], rs[sm]['same_mode']]
                out.append(row)
    cols = ['subject', 'NFE', 'schedule', 'σ₁']
    for sm in samplers:
        cols += [f'{sm} W1', f'{sm} TV']
    for sm in samplers:
        if sm in ('euler', 'dpmpp_2m', 'heun', 'lms'):
            cols += [f'{sm} RMSE vs ref', f'{sm} same mode']
    return cols, out


def ranking(rows, specs, nfes, samplers):
    """Mean rank of each schedule over (subject, NFE, sampler, metric) cells: lower is better."""
    ranks = {name: [] for name in specs}
    keys = [('w1', s) for s in samplers] + [('tv', s) for s in samplers] + \
           [('rmse', s) for s in samplers if s in ('euler', 'dpmpp_2m')]
    for subj in dict.fromkeys(r['subject'] for r in rows):
        for nfe in nfes:
            for metric, sm in keys:
                cell = [(r[metric], r['schedule']) for r in rows
                        if r['subject'] == subj and r['nfe'] == nfe and r['sampler'] == sm and metric in r]
                for i, (_, name) in enumerate(sorted(cell)):
                    ranks[name].append(i + 1)
    return {k: sum(v) / len(v) for k, v in ranks.items() if v}


def plot(rows, specs, nfes, samplers, path):
    plt = common.pyplot()
    subjects = list(dict.fromkeys(r['subject'] for r in rows))
    panels = [('tv', 'euler_ancestral'), ('tv', 'dpmpp_2m'), ('rmse', 'dpmpp_2m'), ('rmse', 'euler')]
    panels = [(m, s) for m, s in panels if s in samplers]
    fig, axes = plt.subplots(len(subjects), len(panels), figsize=(4 * len(panels), 3.4 * len(subjects)), squeeze=False)
    for i, subj in enumerate(subjects):
        for j, (metric, sm) in enumerate(panels):
            ax = axes[i, j]
            for name in specs:
                ys = [next(r[metric] for r in rows if r['subject'] == subj and r['nfe'] == n and r['sampler'] == sm
                           and r['schedule'] == name) for n in nfes]
                ax.plot(nfes, ys, 'o-', ms=3, label=name, lw=2.5 if name == 'native' else 1)
            ax.set_title(f'{subj}: {sm}', fontsize=9)
            ax.set_xlabel('NFE')
            ax.set_ylabel({'tv': 'mode TV to uniform', 'rmse': 'RMS error vs reference ODE'}[metric])
            if metric == 'rmse':
                ax.set_yscale('log')
    axes[0, 0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--smoke', action='store_true')
    p.add_argument('--samples', type=int, default=1024)
    p.add_argument('--nfe', type=int, nargs='+', default=[10, 20, 28, 50])
    p.add_argument('--latent', type=int, nargs=2, default=[104, 152])
    p.add_argument('--samplers', nargs='+', default=['euler', 'euler_ancestral', 'dpmpp_2m', 'dpmpp_2m_sde'])
    p.add_argument('--ref-steps', type=int, default=2000)
    p.add_argument('--out', default=None)
    a = p.parse_args(argv)
    subjects = [('oracle s=0', 0.), ('GMM s=0.5', 0.5)]
    if a.smoke:
        a.samples, a.nfe, a.latent, a.ref_steps = 32, [6], [16, 16], 100
        a.samplers, subjects = ['euler', 'dpmpp_2m'], subjects[1:]
    out = common.out_dir(a.out)
    t0 = time.perf_counter()
    images = brightness_dataset(k=16, shape=(4, *a.latent))
    sigma_top = float(common.exact_model(lambda x, s, c: x).sigma_max_finite)
    specs = schedule_specs(sigma_top)
    print(f'schedules: k=16, latent 4×{a.latent[0]}×{a.latent[1]}, {a.samples} samples, NFE {a.nfe}, '
          f'σ_max for karras/exp = {sigma_top:.6g}')
    rows, info = [], {}
    for name, s in subjects:
        r, i = evaluate(name, s, images, specs, a.nfe, a.samplers, a.samples, a.ref_steps, print)
        rows += r
        info[name] = i
    cols, table_rows = summarize(rows, specs, a.nfe, a.samplers)
    table = md_table(cols, table_rows)
    rank = ranking(rows, specs, a.nfe, a.samplers)
    table += '\n\nMean rank over (subject, NFE, sampler, metric) cells, 1 = best:\n\n' + \
        md_table(['schedule', 'mean rank'], sorted(rank.items(), key=lambda kv: kv[1]))
    table += '\n\n' + ', '.join(f'{k}: reference RMS change vs half steps {v["ref_rmse_vs_half"]:.1e}, '
                                f'TV noise floor {v["tv_floor"]:.3f}' for k, v in info.items())
    print(table)
    plot(rows, specs, a.nfe, a.samplers, out / 'schedules.png')
    payload = {'args': vars(a), 'seconds': time.perf_counter() - t0, 'rows': rows, 'rank': rank, 'info': info}
    common.write_outputs(out, 'schedules', table, payload)
    print(f'wrote {out / "schedules.png"} ({time.perf_counter() - t0:.0f}s)')
    return payload


if __name__ == '__main__':
    main()
