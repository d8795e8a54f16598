"""Schedules from σ = ∞ against the data, per sample, on several exact models: the benchmark behind `recommended`.

    python -m benchmarks.schedule_study [--smoke] [--samples 1024] [--nfe 10 20 28 50] [--threads 1]

Subjects (subjects.study_subjects: exact models on the report's canvas, 4×104×152 latents, reduced exactly by
common.ReducedSpace):

* train — ``uniform16``: oracle.brightness_dataset(16), brightness uniform over 16 levels in [−1, 1] (the
  issue's subject); ``two-mode``: 12 dark images (levels ≈ −0.6) and 4 bright (≈ +0.8), unequal mode shares.
* held out — ``continuous``: 64 images with normal(0, 0.5) brightness levels and a Gaussian around each
  (per-element std s = 0.5: brightness is continuous and the detail must be integrated to σ → 0);
  ``soft prompt``: 32 images, brightness uniform in [−1, 1]; the prompt weights bright images ×3 (a
  conditional denoiser over the repeated rows: the prompt prefers, not selects).

Statistics of the 1024 samples (one noise for every schedule) against the data: W1 of per-sample mean
brightness, |spread − data spread| (spread = std of mean brightness), and the TV of mode shares (nearest data
image, grouped: each image for uniform16, dark/bright for two-mode and soft prompt, brightness quartiles of
the components for continuous). Each has a perfect-sampler noise floor (subjects.PerfectSampler): the p90 over
300 trials of the same statistic for 1024 i.i.d. draws of the data distribution itself (computed, against
200 000 reference draws).
``score`` = the largest statistic / its floor: ≤ 1 means indistinguishable from a perfect sampler.

Search (``--search``): per sampler at 28 steps, the finite part's family (karras ρ, kl_optimal, exponential,
beta) and top σ on the train subjects, minimising the worst score; the winners are then reported on every
subject, sampler and NFE with the UI schedules (kdiff_ztsnr.schedule_policy.SCHEDULE_NAMES). Writes
schedules_study.{md,json,png} (``--search``: schedules_search.{md,json}).
"""

import argparse
import itertools
import time

import torch

from benchmarks import common
from benchmarks.common import md_table
from benchmarks.subjects import STATS, MixtureSubject, PerfectSampler, study_subjects
from kdiff_ztsnr import sampling, schedule_policy

SAMPLERS = ['euler', 'euler_ancestral', 'dpmpp_2m', 'dpmpp_2m_sde', 'dpmpp_sde', 'dpmpp_3m_sde']


def run_one(subj: MixtureSubject, ref: PerfectSampler, noise, sigmas, sampler: str, seed: int) -> dict:
    torch.manual_seed(seed)                 # the SDE samplers' Brownian tree and ancestral noise
    out = sampling.SAMPLERS[sampler](subj.model, noise, sigmas, disable=True)
    st = ref.stats(out)
    st['score'] = max(st[k] / ref.floor[k] for k in STATS)
    return st


def evaluate(subjs, refs, specs: dict, samplers, nfes, n, seed, log) -> list:
    """specs: name -> f(model, n, sampler) giving sigmas; one row per subject × NFE × spec × sampler."""
    rows, t0 = [], time.perf_counter()
    for subj, ref in zip(subjs, refs):
        noise = subj.space.noise(n, seed)
        for nfe, (name, spec), sm in itertools.product(nfes, specs.items(), samplers):
            sigmas = spec(subj.model, nfe, sm)
            st = run_one(subj, ref, noise, sigmas, sm, seed + 1)
            rows.append({'subject': subj.name, 'held_out': subj.held_out, 'nfe': nfe, 'schedule': name,
                         'sampler': sm, 'sigma1': float(sigmas[1]), 'sigma2': float(sigmas[2]), **st})
        log(f'  {subj.name} done ({time.perf_counter() - t0:.0f}s)')
    return rows


def ui_specs() -> dict:
    """The package's schedules ('karras' = the former default ρ=7 from 2254.24; polyexponential is left out:
    its ρ = 1 makes it the exponential schedule) and 'recommended', resolved per sampler."""
    names = [n for n in schedule_policy.SCHEDULE_NAMES if n != 'polyexponential'] + ['recommended']
    return {name: (lambda m, n, sm, k=name: schedule_policy.sigmas(m, k, n, sampler=sm)) for name in names}


def search_specs(tops=(100., 250., 500., 1000., 1500., None, 5000., 20000.),
                 rhos=(2., 3., 4., 5., 7.)) -> dict:
    """Family × top σ of the finite part (beta reads the table, so only tops on it)."""
    out = {}
    for top in tops:
        fams = [('karras', r) for r in rhos] + [('kl_optimal', 7.), ('exponential', 7.)]
        for fam, rho in fams + ([('beta', 7.)] if top is None or top < common.ZTSNR_TOP else []):
            spec = schedule_policy.Spec(fam, top, rho)
            out[spec.label] = lambda m, n, sm, sp=spec: schedule_policy.build(m, sp, n)
    return out


def worst(rows, name, sampler, held_out=False) -> tuple:
    """(mean over seeds of the worst score over subjects, mean score) of one schedule and sampler."""
    sel = [r for r in rows if r['schedule'] == name and r['sampler'] == sampler and r['held_out'] == held_out]
    seeds = sorted({r['seed'] for r in sel})
    per_seed = [max(r['score'] for r in sel if r['seed'] == sd) for sd in seeds]
    return sum(per_seed) / len(per_seed), sum(r['score'] for r in sel) / len(sel)


def search(a, subjs, refs, log) -> dict:
    """Per sampler: the spec with the smallest worst score over the train subjects at --nfe (mean over
    --seeds noises), then its held-out score. --tables-from: the rows of an earlier run's JSON, re-tabulated."""
    specs = search_specs((None, 500.), (3., 7.)) if a.smoke else search_specs()
    rows = []
    if a.tables_from:
        import json
        rows = json.loads(open(a.tables_from).read())['rows']
        specs = dict.fromkeys(r['schedule'] for r in rows)
    for seed in ([] if a.tables_from else a.seeds):
        rows += [{**r, 'seed': seed} for r in evaluate(subjs, refs, specs, a.samplers, a.nfe, a.samples, seed, log)]
    best = {sm: min(specs, key=lambda nm: worst(rows, nm, sm)) for sm in a.samplers}
    table = []
    for sm in a.samplers:
        ranked = sorted(specs, key=lambda nm: worst(rows, nm, sm))[:8]
        table += [[sm, nm, *worst(rows, nm, sm), *worst(rows, nm, sm, True)] for nm in ranked]
    md = md_table(['sampler', 'schedule', 'worst score (train)', 'mean score (train)', 'worst score (held out)',
                   'mean score (held out)'], table)
    md += '\n\n' + sigma1_table(rows, a.samplers, 3. if not a.smoke else 3.)
    return {'rows': rows, 'best': best, 'md': md}


def sigma1_table(rows, samplers, rho: float) -> str:
    """The first finite σ (= the top of a Karras ramp of fixed ρ) per sampler: mean score over seeds, and the
    uniform16 spread (data: the PerfectSampler's), every subject."""
    tops = list(dict.fromkeys(r['sigma1'] for r in rows if r['schedule'].startswith(f'karras ρ={rho:g} ')))
    out = []
    for sm in samplers:
        for top in sorted(tops):
            sel = [r for r in rows if r['sampler'] == sm and r['schedule'].startswith(f'karras ρ={rho:g} ')
                   and r['sigma1'] == top]
            subj = list(dict.fromkeys(r['subject'] for r in sel))
            out.append([sm, top] + [sum(r['score'] for r in sel if r['subject'] == x) /
                                    sum(1 for r in sel if r['subject'] == x) for x in subj])
    return (f'First finite σ₁ (Karras ρ={rho:g} from σ₁ to σ_min, ∞ first), mean score over seeds per subject '
            f'({", ".join(subj)}):\n\n' + md_table(['sampler', 'σ₁'] + subj, out))


def study_table(rows, refs, nfe) -> str:
    """Score (and its worst statistic) per schedule × sampler at one NFE, every subject."""
    out = []
    for subj in dict.fromkeys(r['subject'] for r in rows):
        for name in dict.fromkeys(r['schedule'] for r in rows):
            sel = {r['sampler']: r for r in rows if r['subject'] == subj and r['schedule'] == name and r['nfe'] == nfe}
            out.append([subj, name] + [f'{sel[s]["score"]:.2f} ({sel[s]["w1"]:.3f}/{sel[s]["mean_spread"]:.2f}/'
                                       f'{sel[s]["tv"]:.3f})' for s in sel])
    samplers = list(dict.fromkeys(r['sampler'] for r in rows))
    floors = md_table(['subject', 'held out', 'data spread', 'W1 p90 (median)', '|Δspread| p90', 'TV p90 (median)'],
                      [[ref.subj.name, ref.subj.held_out, ref.spread, f'{ref.floor["w1"]:.4f} ({ref.median["w1"]:.4f})',
                        ref.floor['spread'], f'{ref.floor["tv"]:.4f} ({ref.median["tv"]:.4f})'] for ref in refs])
    return (f'### {nfe} steps: score = max(statistic / p90 floor) (W1 / spread / mode TV)\n\n'
            + md_table(['subject', 'schedule'] + samplers, out) + '\n\nPerfect-sampler floors:\n\n' + floors)


def plot(rows, path):
    plt = common.pyplot()
    subjs = list(dict.fromkeys(r['subject'] for r in rows))
    samplers = list(dict.fromkeys(r['sampler'] for r in rows))
    names = list(dict.fromkeys(r['schedule'] for r in rows))
    fig, axes = plt.subplots(len(subjs), len(samplers), figsize=(3 * len(samplers), 2.6 * len(subjs)), squeeze=False)
    for (i, subj), (j, sm) in itertools.product(enumerate(subjs), enumerate(samplers)):
        ax = axes[i, j]
        for name in names:
            sel = sorted((r['nfe'], r['score']) for r in rows if r['subject'] == subj and r['sampler'] == sm
                         and r['schedule'] == name)
            ax.plot(*zip(*sel), 'o-', ms=2.5, lw=2.2 if name == 'recommended' else 0.9, label=name)
        ax.axhline(1, color='k', lw=0.6, ls=':')
        ax.set_yscale('log')
        ax.set_title(f'{subj}: {sm}', fontsize=8)
    axes[0, 0].set_ylabel('score (1 = perfect-sampler p90)')
    axes[0, 0].legend(fontsize=5)
    common.save_figure(fig, path, 'Schedules from ∞ on exact models: worst statistic / noise floor')


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--smoke', action='store_true')
    p.add_argument('--search', action='store_true', help='search family × top σ per sampler on the train subjects')
    p.add_argument('--samples', type=int, default=1024)
    p.add_argument('--nfe', type=int, nargs='+', default=None, help='default 10 20 28 50 (search: 28)')
    p.add_argument('--samplers', nargs='+', default=SAMPLERS)
    p.add_argument('--latent', type=int, nargs=2, default=[104, 152])
    p.add_argument('--threads', type=int, default=None)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2], help='search: noises to average over')
    p.add_argument('--tables-from', default=None, help='search: re-tabulate the rows of this JSON, run nothing')
    p.add_argument('--out', default=None)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    a.nfe = a.nfe or ([28] if a.search else [10, 20, 28, 50])
    if a.smoke:
        a.samples, a.nfe, a.latent, a.samplers, a.seeds = 64, [6], [8, 8], ['euler', 'euler_ancestral'], [0]
    out, t0 = common.out_dir(a.out), time.perf_counter()
    subjs = study_subjects((4, *a.latent))
    refs = [] if a.tables_from else [PerfectSampler(s, a.samples, trials=30 if a.smoke else 300) for s in subjs]
    print(f'schedule study: {a.samples} samples, latent 4×{a.latent[0]}×{a.latent[1]}, NFE {a.nfe}, {a.samplers}; '
          f'floors in {time.perf_counter() - t0:.0f}s')
    if a.search:
        res = search(a, subjs, refs, print)
        print(res['md'])
        payload = {'args': vars(a), 'best': {k: v for k, v in res['best'].items()}, 'rows': res['rows'],
                   'seconds': time.perf_counter() - t0}
        common.write_outputs(out, 'schedules_search', res['md'], payload, script='schedule_study')
        return payload
    rows = evaluate(subjs, refs, ui_specs(), a.samplers, a.nfe, a.samples, a.seed, print)
    table = '\n\n'.join(study_table(rows, refs, nfe) for nfe in a.nfe)
    print(table)
    plot(rows, out / 'schedules_study.png')
    payload = {'args': vars(a), 'rows': rows, 'seconds': time.perf_counter() - t0,
               'floors': {r.subj.name: {'p90': r.floor, 'median': r.median, 'spread': r.spread} for r in refs},
               'recommended': {sm: schedule_policy.recommended(sm).label for sm in a.samplers}}
    common.write_outputs(out, 'schedules_study', table, payload, script='schedule_study')
    return payload


if __name__ == '__main__':
    main()
