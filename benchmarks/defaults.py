"""Defaults study on trained witnesses: every sampler × steps × schedule, solid prompts and unconditional spread.

``python -m benchmarks.defaults [--smoke] [--witnesses embedded photos] [--steps 8 12 20 28 50] ...``

Witnesses (benchmarks/witnesses.py) are networks trained by the package's own trainer; ``photos`` is held out
(reported in its own table, never used for choosing). Every case samples exactly as ``generate`` does (per-sample
seeds and noise generators, CFG with the default rescale 0, the ∞ first step) with both solid prompts and
their seeds in one batch:

* CFG 5, "completely black" / "completely white", n seeds each: mean brightness of (x+1)/2 (target < 0.05 / > 0.95).
* CFG 1, prompt "", n_uncond seeds: per-image mean brightness; its mean, spread (std) and W1 against the
  witness's data (recomputed from its config), the share in each data brightness quartile (TV to ¼ each), each
  with the band a perfect sampler scores with the same n (bootstrap of data images); and per schedule the paired
  bootstrap over the same seeds of spread − max(spread native, spread Karras ρ=7).

Writes defaults_study.{md,json,png} (``--out``); ``--tables-from JSON`` re-tabulates an earlier run.
"""

import argparse
import itertools
import json
import time

import numpy as np
import torch

from benchmarks import common, witnesses
from benchmarks.common import md_table
from kdiff_ztsnr import schedule_policy
from kdiff_ztsnr.generation.generate import sample_noise, sampler_kwargs
from kdiff_ztsnr.generation.params import SAMPLER_NAMES, GenerationParams
from kdiff_ztsnr.guidance import CFGDenoiser
from kdiff_ztsnr.sampling import SAMPLERS

PROMPTS = ('completely black', 'completely white')
STEPS = (8, 12, 20, 28, 50)
OLD = schedule_policy.Spec('karras', 1000., 2.)            # the former `recommended` (SDE samplers: ρ=7 from 500)
OLD_SDE = schedule_policy.Spec('karras', 500., 7.)
SDE = ('dpmpp_sde', 'dpmpp_2m_sde', 'dpmpp_3m_sde')
BASELINES = ('native', 'karras ρ=7')


def candidates() -> dict:
    """name -> f(model, steps, sampler, side, base_side) giving sigmas from ∞ ('recommended': the package's)."""
    spec = schedule_policy.build
    out = {
        'recommended': lambda m, n, sm, side, base: schedule_policy.sigmas(
            m, 'recommended', n, sampler=sm, side=side, base_side=base),
        'native': lambda m, n, sm, side, base: spec(m, schedule_policy.Spec('native'), n),
        'karras ρ=7': lambda m, n, sm, side, base: spec(m, schedule_policy.Spec('karras'), n),
        'former recommended': lambda m, n, sm, side, base: spec(m, OLD_SDE if sm in SDE else OLD, n),
    }
    for top in (500., 150.):
        out[f'karras ρ=7 top={top:g}'] = lambda m, n, sm, side, base, t=top: spec(
            m, schedule_policy.Spec('karras', t), n)
    out['exponential top=500'] = lambda m, n, sm, side, base: spec(m, schedule_policy.Spec('exponential', 500.), n)
    out['normal top=128'] = lambda m, n, sm, side, base: spec(m, schedule_policy.Spec('normal', 128.), n)
    return out


@torch.no_grad()
def brightness(pipe, sampler: str, sigmas: torch.Tensor, prompts: list, seeds: list, scale: float,
               side: int) -> torch.Tensor:
    """Per-image mean of (x+1)/2 for prompts[i] with seed seeds[i] on a side² canvas, sampled as `generate`
    does (one batch; the empty negative prompt, zeroed where the pipeline says so)."""
    b = len(prompts)
    shape = (pipe.channels, side // pipe.factor, side // pipe.factor)
    gens, noise = sample_noise(seeds, shape)
    if pipe.force_zeros_for_empty_prompt:
        cond = pipe.encode_prompts(list(prompts))
        uncond = {k: torch.zeros_like(v) for k, v in cond.items()}
    else:
        both = pipe.encode_prompts(list(prompts) + [''] * b)
        cond, uncond = ({k: v[:b] for k, v in both.items()}, {k: v[b:] for k, v in both.items()})
    if pipe.size_cond is not None:
        extra = pipe.size_cond(side, side, b)
        cond, uncond = {**cond, **extra}, {**uncond, **extra}
    denoiser = CFGDenoiser(pipe.denoiser(), scale, 0., cond_key=None)
    p = GenerationParams(sampler=sampler)
    x = SAMPLERS[sampler](denoiser, noise, sigmas, extra_args={'cond': cond, 'uncond': uncond}, disable=True,
                          **sampler_kwargs(p, noise, sigmas, gens, seeds))
    return ((pipe.decode(x).clamp(-1, 1) + 1) / 2).mean(dim=(1, 2, 3)).double()


def perfect_band(data_b: np.ndarray, n: int, trials: int = 2000, seed: int = 0) -> dict:
    """What a perfect sampler (n i.i.d. data images) scores: spread 5–95 %, W1 p90, quartile-TV p90."""
    rng = np.random.default_rng(seed)
    edges = np.quantile(data_b, [0.25, 0.5, 0.75])
    draws = data_b[rng.integers(len(data_b), size=(trials, n))]
    spreads = draws.std(axis=1, ddof=0)
    w1s = np.array([w1(d, data_b) for d in draws[:500]])
    tvs = np.array([quartile_tv(d, edges) for d in draws])
    return {'n': n, 'spread_lo': float(np.quantile(spreads, 0.05)), 'spread_hi': float(np.quantile(spreads, 0.95)),
            'w1_p90': float(np.quantile(w1s, 0.9)), 'tv_p90': float(np.quantile(tvs, 0.9)), 'edges': edges.tolist()}


def w1(a: np.ndarray, ref: np.ndarray) -> float:
    """Exact 1-D Wasserstein-1 distance between two empirical distributions."""
    grid = np.sort(np.concatenate([a, ref]))
    fa = np.searchsorted(np.sort(a), grid[:-1], side='right') / len(a)
    fr = np.searchsorted(np.sort(ref), grid[:-1], side='right') / len(ref)
    return float(np.sum(np.abs(fa - fr) * np.diff(grid)))


def quartile_tv(b: np.ndarray, edges) -> float:
    counts = np.bincount(np.searchsorted(edges, b), minlength=4) / len(b)
    return float(0.5 * np.abs(counts - 0.25).sum())


def run_witness(name: str, a, specs: dict, log) -> tuple[list, dict]:
    """One row per sampler × steps × schedule of witness `name`; and its data statistics."""
    pipe = witnesses.pipeline(name, a.work)
    data = witnesses.data_stats(name)
    data_b = np.asarray(data.pop('brightness'))
    data['band'] = perfect_band(data_b, a.n_uncond)
    side = witnesses.CANVAS[name]
    rows, t0 = [], time.perf_counter()
    solid_prompts = [p for p in PROMPTS for _ in range(a.n_solid)]
    solid_seeds = [a.seed + i for _ in PROMPTS for i in range(a.n_solid)]
    for sm, steps, (sname, f) in itertools.product(a.samplers, a.steps, specs.items()):
        ts = time.perf_counter()
        sigmas = f(pipe.denoiser(), steps, sm, side, pipe.base_side)
        sb = brightness(pipe, sm, sigmas, solid_prompts, solid_seeds, 5., side)
        r = {'witness': name, 'sampler': sm, 'steps': steps, 'schedule': sname, 'sigmas': [float(s) for s in sigmas],
             'black': float(sb[:a.n_solid].mean()), 'white': float(sb[a.n_solid:].mean())}
        if a.n_uncond and (not a.uncond_samplers or sm in a.uncond_samplers) and steps in a.uncond_steps:
            ub = brightness(pipe, sm, sigmas, [''] * a.n_uncond, [a.seed + i for i in range(a.n_uncond)], 1.,
                            side).numpy()
            r.update(uncond=ub.tolist(), mean=float(ub.mean()), spread=float(ub.std()), w1=w1(ub, data_b),
                     tv=quartile_tv(ub, data['band']['edges']))
        r['seconds'] = time.perf_counter() - ts
        rows.append(r)
        if a.rows_log:
            with open(a.rows_log, 'a') as fh:
                fh.write(json.dumps({**r, 'data': data}) + '\n')
        log(f'  {name} {sm} {steps} {sname}: black {r["black"]:.3f} white {r["white"]:.3f} spread '
            f'{r.get("spread", float("nan")):.3f} ({r["seconds"]:.0f}s, total {time.perf_counter() - t0:.0f}s)')
    return rows, data


def paired_spread(rows: list, trials: int = 2000, seed: int = 0) -> None:
    """Per row: the 5 % and 95 % paired-bootstrap quantiles of spread − max(native, Karras ρ=7) over the seeds."""
    rng = np.random.default_rng(seed)
    groups = {}
    for r in rows:
        groups.setdefault((r['witness'], r['sampler'], r['steps']), {})[r['schedule']] = r
    for g in groups.values():
        if not all(b in g and 'uncond' in g[b] for b in BASELINES):
            continue
        n = len(g['native']['uncond'])
        idx = rng.integers(n, size=(trials, n))
        best = np.maximum(*[np.asarray(g[b]['uncond'])[idx].std(axis=1) for b in BASELINES])
        for r in (r for r in g.values() if 'uncond' in r):
            d = np.asarray(r['uncond'])[idx].std(axis=1) - best
            r['dspread_lo'], r['dspread_hi'] = float(np.quantile(d, 0.05)), float(np.quantile(d, 0.95))


def passes(r: dict) -> str:
    """The requirement: black < 0.05, white > 0.95 at CFG 5; spread not significantly below the best baseline
    (the 95 % paired-bootstrap quantile of the difference ≥ 0); '(solid)' where no spread was measured."""
    solid = r['black'] < 0.05 and r['white'] > 0.95
    if 'dspread_hi' not in r:
        return 'yes (solid)' if solid else '**no**'
    return 'yes' if solid and r['dspread_hi'] >= 0 else '**no**'


def tables(rows: list, data: dict) -> str:
    out = []
    for wname in dict.fromkeys(r['witness'] for r in rows):
        d = data[wname]
        held = ' (HELD OUT: reported, never used for choosing)' if wname in HELD_OUT else ''
        out.append(f'## Witness `{wname}`{held}\n\nData: {d["n"]} images, mean brightness {d["mean"]:.3f}, spread '
                   f'{d["spread"]:.3f} (perfect sampler, n = {d["band"]["n"]}: spread '
                   f'{d["band"]["spread_lo"]:.3f}–{d["band"]["spread_hi"]:.3f}, W1 p90 {d["band"]["w1_p90"]:.3f}, '
                   f'quartile TV p90 {d["band"]["tv_p90"]:.3f}); solid prompts: '
                   + ', '.join(f'"{p}" {v["share"]:.1%} of the data, brightness {v["mean"]:.3f}'
                               for p, v in d['solid'].items()) + '.\n')
        sel = [r for r in rows if r['witness'] == wname]
        nan = float('nan')
        table = [[r['sampler'], r['steps'], r['schedule'], r['black'], r['white'], r.get('mean', nan),
                  r.get('spread', nan), f'{r.get("dspread_lo", nan):+.3f}…{r.get("dspread_hi", nan):+.3f}',
                  r.get('w1', nan), r.get('tv', nan), passes(r)] for r in sel]
        out.append(md_table(['sampler', 'steps', 'schedule', 'black', 'white', 'uncond mean', 'spread',
                             'Δspread vs best baseline (5–95 %)', 'W1', 'quartile TV', 'meets'], table))
    return '\n\n'.join(out)


HELD_OUT = ('photos',)


def summary(rows: list) -> str:
    """Per witness: black / white at CFG 5 per sampler × steps for each schedule ('recommended' rows stand for
    themselves; where none were run because recommended builds the same sigmas as native, native's are shown)."""
    out = []
    for wname in dict.fromkeys(r['witness'] for r in rows):
        sel = [r for r in rows if r['witness'] == wname]
        steps = sorted({r['steps'] for r in sel})
        names = list(dict.fromkeys(r['schedule'] for r in sel))
        cell = {(r['sampler'], r['steps'], r['schedule']): r for r in sel}
        table = []
        for sm in dict.fromkeys(r['sampler'] for r in sel):
            alias = {n: {'native': 'native', 'karras': 'karras ρ=7'}.get(schedule_policy.recommended(sm, n).family)
                     for n in steps}
            if 'recommended' not in names:
                table.append([sm, '**recommended** (its schedule)'] + [
                    '' if (sm, n, alias[n]) not in cell else
                    f'{cell[sm, n, alias[n]]["black"]:.3f} / {cell[sm, n, alias[n]]["white"]:.3f} (= {alias[n]})'
                    for n in steps])
            for name in names:
                vals = [cell.get((sm, n, name)) for n in steps]
                if not any(vals):
                    continue
                table.append([sm, name] + ['' if r is None else
                                           f'{r["black"]:.3f} / {r["white"]:.3f}' + ('' if r['black'] < 0.05 and
                                                                                   r['white'] > 0.95 else ' ✗')
                                           for r in vals])
        held = ' — HELD OUT (reported, never used for choosing)' if wname in HELD_OUT else ''
        out.append(f'### `{wname}`{held}: "completely black" / "completely white" at CFG 5 (✗: misses < 0.05 / '
                   f'> 0.95)\n\n' + md_table(['sampler', 'schedule'] + [f'{n} steps' for n in steps], table))
    return '\n\n'.join(out)


def plot(rows: list, path) -> None:
    plt = common.pyplot()
    ws = list(dict.fromkeys(r['witness'] for r in rows))
    samplers = list(dict.fromkeys(r['sampler'] for r in rows))
    names = list(dict.fromkeys(r['schedule'] for r in rows))
    fig, axes = plt.subplots(2 * len(ws), len(samplers), figsize=(2.6 * len(samplers), 4.4 * len(ws)), squeeze=False)
    for (i, w), (j, sm) in itertools.product(enumerate(ws), enumerate(samplers)):
        for name in names:
            sel = sorted((r['steps'], r['white'] - r['black'], r.get('spread', float('nan'))) for r in rows
                         if r['witness'] == w and r['sampler'] == sm and r['schedule'] == name)
            if not sel:
                continue
            st, contrast, spread = zip(*sel)
            lw = 2.2 if name == 'recommended' else 0.9
            axes[2 * i, j].plot(st, contrast, 'o-', ms=2.5, lw=lw, label=name)
            axes[2 * i + 1, j].plot(st, spread, 'o-', ms=2.5, lw=lw, label=name)
        axes[2 * i, j].axhline(0.9, color='k', lw=0.6, ls=':')
        axes[2 * i, j].set_title(f'{w}: {sm}', fontsize=8)
        axes[2 * i, j].set_ylim(-1.05, 1.05)
        axes[2 * i + 1, j].set_xlabel('steps', fontsize=7)
    for i in range(len(ws)):
        axes[2 * i, 0].set_ylabel('white − black (CFG 5)', fontsize=7)
        axes[2 * i + 1, 0].set_ylabel('uncond spread (CFG 1)', fontsize=7)
    axes[0, 0].legend(fontsize=5)
    common.save_figure(fig, path, 'Schedules on trained witnesses: solid prompts and unconditional spread')


def read_rows(sources: str) -> tuple[list, dict]:
    """Rows and per-witness data of a results JSON, or of comma-separated JSONL row logs (--rows-log): there a
    repeated case keeps the row with unconditional samples, and a witness keeps data with a perfect-sampler band."""
    if not sources.endswith('.jsonl'):
        payload = json.loads(open(sources).read())
        return payload['rows'], payload['data']
    rows = [json.loads(line) for f in sources.split(',') for line in open(f)]
    data = {}
    for r in rows:                           # a run with --n-uncond 0 has no perfect-sampler band: keep one that has
        d = r.pop('data')
        if r['witness'] not in data or data[r['witness']]['band']['n'] == 0:
            data[r['witness']] = d
    best = {}
    for r in rows:                           # one row per case: a repeated case keeps the one with '' samples
        key = (r['witness'], r['sampler'], r['steps'], r['schedule'])
        if key not in best or 'uncond' in r:
            best[key] = r
    return list(best.values()), data


def replace_rows(rows: list, data: dict, new: list, new_data: dict) -> tuple[list, dict]:
    """A re-measurement: `new` replaces every row of the same witness, sampler and steps (all its schedules, solid
    and unconditional), the other rows stay; rows ordered by witness, sampler (first seen), steps; witnesses new
    to `data` take `new_data`'s statistics."""
    cases = {(r['witness'], r['sampler'], r['steps']) for r in new}
    merged = [r for r in rows if (r['witness'], r['sampler'], r['steps']) not in cases] + list(new)
    order = {k: {v: i for i, v in enumerate(dict.fromkeys(r[k] for r in rows + list(new)))}
             for k in ('witness', 'sampler')}
    merged.sort(key=lambda r: (order['witness'][r['witness']], order['sampler'][r['sampler']], r['steps']))
    return merged, {**new_data, **data}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--smoke', action='store_true')
    p.add_argument('--witnesses', nargs='+', default=['embedded', 'photos'])
    p.add_argument('--samplers', nargs='+', default=list(SAMPLER_NAMES))
    p.add_argument('--steps', type=int, nargs='+', default=list(STEPS))
    p.add_argument('--schedules', nargs='+', default=None, help='names from candidates() (default: all)')
    p.add_argument('--n-solid', type=int, default=4)
    p.add_argument('--n-uncond', type=int, default=32, help='0: solid prompts only')
    p.add_argument('--uncond-samplers', nargs='+', default=None, help='unconditional only for these (default all)')
    p.add_argument('--uncond-steps', type=int, nargs='+', default=list(STEPS))
    p.add_argument('--rows-log', default=None, help='append each row as JSON to this file as it is measured')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--work', default=str(witnesses.WORK), help='where trained witnesses are cached')
    p.add_argument('--name', default='defaults_study')
    p.add_argument('--tables-from', default=None, help='re-tabulate the rows of this JSON (or of comma-separated '
                   '--rows-log files), run nothing')
    p.add_argument('--replace-from', default=None, help='with --tables-from: rows (JSON or .jsonl logs, as there) '
                   'that replace its rows of the same witness, sampler and steps')
    p.add_argument('--note', action='append', default=[], help='a line written under the md header (repeatable)')
    p.add_argument('--out', default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    from pathlib import Path
    a.work = Path(a.work)
    if a.smoke:
        a.witnesses, a.samplers, a.steps, a.uncond_steps = ['embedded'], ['euler', 'dpmpp_2m_sde'], [3], [3]
        a.n_solid, a.n_uncond = 1, 4
    specs = candidates()
    if a.schedules:
        specs = {k: specs[k] for k in a.schedules}
    out, t0 = common.out_dir(a.out), time.perf_counter()
    if a.tables_from:
        rows, data = read_rows(a.tables_from)
        if a.replace_from:
            rows, data = replace_rows(rows, data, *read_rows(a.replace_from))
    else:
        rows, data = [], {}
        for w in a.witnesses:
            r, data[w] = run_witness(w, a, specs, print)
            rows += r
    paired_spread(rows)
    text = ''.join(f'{n}\n\n' for n in a.note) + summary(rows) + '\n\n' + tables(rows, data)
    print(text)
    plot(rows, out / f'{a.name}.png')
    payload = {'args': {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()}, 'rows': rows,
               'data': data, 'seconds': time.perf_counter() - t0}
    common.write_outputs(out, a.name, text, payload, script='defaults')
    return payload


if __name__ == '__main__':
    main()
