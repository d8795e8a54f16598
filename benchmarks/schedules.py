"""Schedules from σ = ∞ at equal NFE: native vs karras / exponential / polyexponential (+ designed ones).

    python -m benchmarks.schedules [--smoke] [--samples 1024] [--nfe 10 20 28 50] [--latent 104 152]

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

``--model embedded`` (or a trainer checkpoint directory): the trained pixel-space model instead
(``subjects.TrainedSubject``, sampled as ``generate`` samples it, same seeds for every schedule). Schedules
(``--schedules``): native, karras ρ=7, exponential (the package's ``schedule_policy.sigmas``: ∞ then the ramp
from the largest finite table σ, 2254.24) and polyexponential ρ=2 (``schedule_policy.sigmas``'s polyexponential
has ρ=1, which is the exponential schedule); prompts "completely black"/"completely white" at CFG ``--scales`` (default 5)
and '' at scale 1. Metrics: brightness bias, spread, W1 brightness and W1 colour to the training images of
the prompt (subjects.TrainedSubject.measure). Writes schedules_NAME.{md,json,png}.
"""

import argparse
import math
import time

import torch

from benchmarks import common
from benchmarks.common import md_table
from benchmarks.subjects import ConditionalMixture, subject_and_tasks
from kdiff_ztsnr import oracle, sampling, schedule_policy, schedules
from kdiff_ztsnr.oracle import brightness_dataset

def native_sigma1(model, n):
    return float(model.get_sigmas(n)[1])


def schedule_specs() -> dict:
    """name -> f(model, n) giving an n-step schedule [∞, …, 0]: the package's families (schedule_policy.Spec,
    built by schedule_policy.build: σ_min and the top σ from the model's table), native's own ramp, and
    polyexponential ρ=2 (the package's polyexponential has ρ=1, which is the exponential schedule)."""
    build, spec = schedule_policy.build, schedule_policy.Spec
    return {
        'native': lambda m, n: m.get_sigmas(n),
        'karras ρ=7': lambda m, n: build(m, spec('karras'), n),
        'exponential': lambda m, n: build(m, spec('exponential'), n),
        'polyexp ρ=2': lambda m, n: schedules.get_sigmas_polyexponential(
            n, float(m.sigmas[0]), float(m.sigma_max_finite), 2.),
        # designed: keep native's σ₁ (first finite σ), change the ramp below it
        'karras ρ=7, σ₁=native': lambda m, n: build(m, spec('karras', native_sigma1(m, n)), n),
        'karras ρ=5': lambda m, n: build(m, spec('karras', rho=5.), n),
        # designed: native's ramp, but the first finite σ at ≥ 300 (≈ √d of this canvas; A.2's 136–317)
        'native, σ₁≥300': lambda m, n: native_high_start(m, n, 300.),
        'exponential σ₁=300': lambda m, n: build(m, spec('exponential', 300.), n),
    }


def native_high_start(model, n, sigma_1):
    """[∞, max(σ₁, native σ₁), native's ramp over the remaining n − 2 steps]: NFE n."""
    nat = model.get_sigmas(n - 1)[1:]          # n − 1 finite (incl. σ_min) + 0
    s1 = max(sigma_1, float(model.get_sigmas(n)[1]))
    return torch.cat([torch.tensor([math.inf, s1]), nat])


def reference_solve(denoise, noise, steps, sigma_min, top=1e6):
    """Probability-flow ODE from ∞ on the raw σ-exact denoiser, float64, dpmpp_2m on log-spaced sigmas down to
    sigma_min (the table's smallest σ)."""
    sig = torch.cat([torch.tensor([math.inf]), torch.logspace(math.log10(top), math.log10(sigma_min), steps - 1,
                                                              dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])
    model = lambda x, s, **kw: denoise(x, s, None)  # noqa: E731
    return sampling.sample_dpmpp_2m(model, noise.double(), sig, disable=True)


def evaluate(subject_name, s, images, specs, nfes, samplers, n_samples, ref_steps, log, seed=0):
    space = common.ReducedSpace(images, extra=16 if s > 0 else 0)
    mix = ConditionalMixture(space.coords, [list(range(space.k))], s)
    model = oracle.exact_model(mix)
    data_b = space.brightness(space.coords)
    uniform = torch.full((space.k,), 1. / space.k, dtype=torch.float64)
    noise = space.noise(n_samples, seed)
    t0 = time.perf_counter()
    ref = reference_solve(mix, noise, ref_steps, float(model.sigmas[0]))
    ref_half = reference_solve(mix, noise, ref_steps // 2, float(model.sigmas[0]))
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
    common.save_figure(fig, path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--smoke', action='store_true')
    p.add_argument('--model', default='oracle', help="'oracle' (exact closed-form subjects), 'embedded' or a "
                   'trainer checkpoint directory (see subjects.TrainedSubject)')
    p.add_argument('--schedules', nargs='+', default=None,
                   help='model: schedules to compare (default native, karras ρ=7, exponential, polyexp ρ=2)')
    p.add_argument('--scales', type=float, nargs='+', default=[5.], help='model: CFG scales for the solid prompts')
    p.add_argument('--uncond-samples', type=int, default=None, help="model: samples for '' (default --samples)")
    p.add_argument('--threads', type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument('--samples', type=int, default=None, help='default 1024; 32 for a model')
    p.add_argument('--nfe', type=int, nargs='+', default=[10, 20, 28, 50])
    p.add_argument('--latent', type=int, nargs=2, default=[104, 152])
    p.add_argument('--samplers', nargs='+', default=None,
                   help='default euler euler_ancestral dpmpp_2m dpmpp_2m_sde; euler_ancestral for a model')
    p.add_argument('--ref-steps', type=int, default=2000)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--out', default=None)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.model != 'oracle':
        return main_trained(a)
    a.samples = a.samples or 1024
    a.samplers = a.samplers or ['euler', 'euler_ancestral', 'dpmpp_2m', 'dpmpp_2m_sde']
    subjects = [('oracle s=0', 0.), ('GMM s=0.5', 0.5)]
    if a.smoke:
        a.samples, a.nfe, a.latent, a.ref_steps = 32, [6], [16, 16], 100
        a.samplers, subjects = ['euler', 'dpmpp_2m'], subjects[1:]
    out = common.out_dir(a.out)
    t0 = time.perf_counter()
    images = brightness_dataset(k=16, shape=(4, *a.latent))
    sigma_top = float(oracle.exact_model(lambda x, s, c: x).sigma_max_finite)
    specs = schedule_specs()
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


# ---------------------------------------------------------------------------------------------- trained model

MODEL_SCHEDULES = ['native', 'karras ρ=7', 'exponential', 'polyexp ρ=2']


def model_specs(names, sampler=None):
    """name -> f(model, n); the package's schedule_policy.sigmas where it has the schedule ('recommended'
    resolved for `sampler`), schedule_specs otherwise."""
    from kdiff_ztsnr import schedule_policy
    from kdiff_ztsnr.generation.params import SCHEDULES
    specs = schedule_specs()
    pkg = {'karras ρ=7': 'karras', **{k: k for k in SCHEDULES}}
    out = {}
    for name in names:
        if name in pkg:
            out[name] = lambda m, n, kind=pkg[name]: schedule_policy.sigmas(m, kind, n, sampler=sampler)
        elif name in specs:
            out[name] = specs[name]
        else:
            raise SystemExit(f'unknown schedule {name!r}; choose from {", ".join([*specs, *SCHEDULES])}')
    return out


def main_trained(a):
    samplers = a.samplers or ['euler_ancestral']
    names = a.schedules or MODEL_SCHEDULES
    n = a.samples or 32
    nfes = a.nfe
    if a.smoke:
        n, nfes, samplers = 4, [4], samplers[:1]
    n_u = a.uncond_samples or n
    out = common.out_dir(a.out)
    t0 = time.perf_counter()
    subject, tasks, floors = subject_and_tasks(a.model, n, n_u, a.scales)
    model = subject.denoiser()
    specs = model_specs(names, samplers[0])
    print(f'schedules: {subject.describe()}; {n} samples per solid prompt, {n_u} for \'\', NFE {nfes}, '
          f'samplers {samplers}')
    records, rows, raw = {}, [], []
    for nfe in nfes:
        t1 = time.perf_counter()
        for name, spec in specs.items():
            sigmas = spec(model, nfe)
            for sampler in samplers:
                res = subject.sample(sigmas, tasks, sampler, a.seed)
                keys = (nfe, name, fmt_sigma1(sigmas), sampler)
                rows.append(keys)
                for t, colours in res.items():
                    m = subject.measure(t, colours)
                    records[(keys, t)] = m
                    raw.append({'nfe': nfe, 'schedule': name, 'sigma1': float(sigmas[1]), 'sampler': sampler,
                                'prompt': t.prompt, 'scale': t.scale, 'n': t.n, **m})
        print(f'  NFE {nfe} done ({time.perf_counter() - t1:.0f}s)')
    table = f'Model: {subject.describe()}\n\n' + common.metric_table(rows, ['NFE', 'schedule', 'σ₁', 'sampler'],
                                                                       tasks, records, floors)
    rank = {}
    for name in specs:
        rank[name] = []
    for nfe in nfes:
        for sampler in samplers:
            for t in tasks:
                for key in ('w1', 'w1_colour'):
                    cell = sorted((records[((nfe, nm, fmt_sigma1(specs[nm](model, nfe)), sampler), t)][key], nm)
                                  for nm in specs)
                    for i, (_, nm) in enumerate(cell):
                        rank[nm].append(i + 1)
    rank = {k: sum(v) / len(v) for k, v in rank.items()}
    table += ('\n\nMean rank over (NFE, sampler, prompt/scale, {W1 brightness, W1 colour}) cells, 1 = best:\n\n'
              + md_table(['schedule', 'mean rank'], sorted(rank.items(), key=lambda kv: kv[1])))
    print(table)
    name = f'schedules_{subject.name}'
    plot_trained(raw, specs, nfes, samplers, tasks, floors, out / f'{name}.png', subject.name)
    payload = {'args': vars(a), 'model': subject.describe(), 'records': raw, 'rank': rank,
               'floors': [{'prompt': t.prompt, 'n': t.n, **f} for t, f in floors.items()],
               'seconds': time.perf_counter() - t0}
    common.write_outputs(out, name, table, payload, script='schedules')
    print(f'wrote {out / name}.png, .md, .json ({time.perf_counter() - t0:.0f}s)')
    return payload


def fmt_sigma1(sigmas):
    return f'{float(sigmas[1]):.4g}'


def plot_trained(raw, specs, nfes, samplers, tasks, floors, path, model_name):
    plt = common.pyplot()
    panels = [(t, 'w1') for t in tasks if t.prompt] + [(t, k) for t in tasks if not t.prompt for k in ('w1', 'w1_colour')]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 3.4), squeeze=False)
    for ax, (t, key) in zip(axes[0], panels):
        for sampler in samplers:
            for name in specs:
                ys = [next(r[key] for r in raw if r['nfe'] == nfe and r['schedule'] == name and r['sampler'] == sampler
                           and r['prompt'] == t.prompt and r['scale'] == t.scale) for nfe in nfes]
                ax.plot(nfes, ys, 'o-', ms=3, lw=2.5 if name == 'native' else 1,
                        label=name if len(samplers) == 1 else f'{name}, {sampler}')
        if t in floors:
            ax.axhline(floors[t][key], color='grey', lw=0.8, ls=':', label=f'perfect sampler, n={t.n}')
        ax.set_title(f'{t.label}: {"W1 colour" if key == "w1_colour" else "W1 brightness"}', fontsize=8)
        ax.set_xlabel('NFE')
    axes[0, 0].set_ylabel('W1 to the training data')
    axes[0, 0].legend(fontsize=6)
    common.save_figure(fig, path, f'Schedules from ∞, trained model ({model_name})')


if __name__ == '__main__':
    main()
