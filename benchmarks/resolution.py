"""Sufficient starting σ vs canvas size (report §2.3 rule of thumb; appendix A.2's 136–317 at 832×1216).

    python -m benchmarks.resolution [--smoke] [--samples 2048] [--sides 32 64 128] [--tol-w1 0.01 --tol-tv 0.02]

For 4-channel latents of side 32, 64, 128 (and the report's 104×152), the exact oracle of a k=16 image
dataset (oracle.brightness_dataset: levels in [−1, 1] plus i.i.d. texture) is sampled from every σ₀ of the
grid 14.6146·2^k (k = 0…10), the A.2 clamp 20000 and ∞, with the same noise and sampler seed. A start σ₀
is *sufficient* when it and every larger grid σ₀ score within a tolerance of exact ZTSNR (σ₀ = ∞):
brightness W1 ≤ W1(∞) + tol_w1 and mode TV ≤ TV(∞) + tol_tv. A noise-free closed form gives a continuous
threshold: the smallest σ₀ whose exact-posterior mode weights (common.posterior_weights) are within TV
tol_tv of uniform.

The samples live in the exact reduced coordinates of common.ReducedSpace, so 128² costs what 32² costs and
no side needs fewer samples. Schedules (28 model calls each): ``--schedule karras`` (default) Karras ρ=7 from
σ₀ ≤ 2254.24, and for larger σ₀ (∞, 20000 on the clamped table, …) [σ₀] + the same Karras ramp from
2254.24, so every regime integrates its high-σ range and the large ones differ only in the start; ``--schedule truncate``: [σ₀] + the native schedule below σ₀ (as regimes.py) — with native's single
step from σ₀ to 56.18 the discretisation, not the start σ, dominates at d ≥ 16384 (see the README).
"""

import argparse
import math
import time

import torch

from benchmarks import common
from kdiff_ztsnr import oracle
from benchmarks.common import INF, fmt_sigma, md_table
from benchmarks.regimes import Regime, regime_sigmas

from kdiff_ztsnr import sampling
from kdiff_ztsnr.oracle import brightness_dataset
from kdiff_ztsnr.schedules import SDXL_SIGMA_MAX, ZTSNR_CLAMP

REPORT_CANVAS = (104, 152)   # 832×1216 px at the VAE's factor 8


def grid(kmax: int = 10) -> list[Regime]:
    rs = [Regime(f'{SDXL_SIGMA_MAX:.4g}·2^{k}', SDXL_SIGMA_MAX * 2 ** k) for k in range(kmax + 1)]
    return rs + [Regime('clamp 20000', ZTSNR_CLAMP, ZTSNR_CLAMP), Regime('exact ∞', INF)]


def sweep(hw, regimes, samplers, steps, n, texture, mode, seed=0):
    """Metrics per (sampler, regime) for one canvas."""
    images = brightness_dataset(k=16, shape=(4, *hw), spread=1., texture=texture, seed=seed)
    space = common.ReducedSpace(images)
    data_b = space.brightness(space.coords)
    uniform = torch.full((space.k,), 1. / space.k, dtype=torch.float64)
    noise = space.noise(n, seed)
    models = {}
    res = {}
    for r in regimes:
        if r.clamp not in models:
            models[r.clamp] = oracle.exact_model(lambda x, s, c: oracle.mixture_denoiser(space.coords, x, s),
                                                 sigma_max=r.clamp)
        model = models[r.clamp]
        sigmas = regime_sigmas(r, model, steps, mode)
        x0 = noise if math.isinf(sigmas[0]) else noise * sigmas[0]
        for name in samplers:
            torch.manual_seed(seed + 1)
            out = sampling.SAMPLERS[name](model, x0, sigmas, disable=True)
            counts = torch.bincount(space.nearest(out), minlength=space.k)
            res[(name, r.name)] = {'w1': common.w1(space.brightness(out), data_b), 'tv': common.tv(counts, uniform),
                                   'std': space.brightness(out).std().item() / data_b.std().item()}
    return space, res


def closed_form_threshold(space, tol, lo=1., hi=1e5, iters=30, draws=100_000):
    """Smallest σ₀ with TV(exact-posterior weights from x = σ₀n, uniform) ≤ tol, by bisection in log σ."""
    k = space.k

    def tv_at(s):
        return 0.5 * (common.posterior_weights(space.coords, s, draws=draws) - 1. / k).abs().sum().item()
    if tv_at(hi) > tol:
        return INF
    for _ in range(iters):
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if tv_at(mid) <= tol else (mid, hi)
    return hi


def sufficient(regimes, res, sampler, tol_w1, tol_tv):
    """Smallest grid σ₀ such that it and all larger ones are within tolerance of ∞."""
    ref = res[(sampler, regimes[-1].name)]
    best = INF
    for r in reversed(regimes[:-1]):
        m = res[(sampler, r.name)]
        if m['w1'] <= ref['w1'] + tol_w1 and m['tv'] <= ref['tv'] + tol_tv:
            best = r.sigma
        else:
            break
    return best


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--smoke', action='store_true')
    p.add_argument('--samples', type=int, default=1024)
    p.add_argument('--steps', type=int, default=28)
    p.add_argument('--sides', type=int, nargs='+', default=[32, 64, 128])
    p.add_argument('--samplers', nargs='+', default=['euler_ancestral', 'dpmpp_2m'])
    p.add_argument('--texture', type=float, default=0.3)
    p.add_argument('--schedule', default='karras', choices=['karras', 'truncate'],
                   help='karras: ρ=7 from σ₀ (∞: from 2254.24); truncate: [σ₀] + native below σ₀')
    p.add_argument('--tol-w1', type=float, default=0.01)
    p.add_argument('--tol-tv', type=float, default=0.02)
    p.add_argument('--out', default=None)
    a = p.parse_args(argv)
    regimes = grid()
    canvases = [(s, s) for s in a.sides] + [REPORT_CANVAS]
    draws = 100_000
    if a.smoke:
        a.samples, a.steps, a.samplers, draws = 64, 6, ['euler_ancestral'], 5000
        canvases, regimes = [(16, 16), (32, 32)], grid(6)
    out = common.out_dir(a.out)
    t0 = time.perf_counter()
    print(f'resolution: oracle k=16, texture {a.texture}, {a.samples} samples, {a.steps} steps ({a.schedule}); '
          f'tolerance W1 +{a.tol_w1}, TV +{a.tol_tv} over exact ∞')
    results, rows, curves = {}, [], {}
    base = None
    for hw in canvases:
        space, res = sweep(hw, regimes, a.samplers, a.steps, a.samples, a.texture, a.schedule)
        found = {s: sufficient(regimes, res, s, a.tol_w1, a.tol_tv) for s in a.samplers}
        cf = closed_form_threshold(space, a.tol_tv, draws=draws)
        side = math.sqrt(hw[0] * hw[1])
        if base is None:
            base = (side, cf)
        rule = base[1] * side / base[0]
        rows.append([f'4×{hw[0]}×{hw[1]}', space.d] + [fmt_sigma(found[s]) for s in a.samplers]
                    + [cf, rule, cf / base[1], side / base[0]])
        results[f'{hw[0]}x{hw[1]}'] = {'d': space.d, 'sufficient': found, 'closed_form': cf, 'rule_of_thumb': rule,
                                       'metrics': {f'{k[0]}|{k[1]}': v for k, v in res.items()}}
        curves[hw] = res
        print(f'  4×{hw[0]}×{hw[1]}: d={space.d}, sufficient {found}, closed form {cf:.4g} '
              f'({time.perf_counter() - t0:.0f}s)')
    cols = ['latent', 'd'] + [f'{s} sufficient σ₀ (grid)' for s in a.samplers] + \
           ['closed-form σ₀*', f'rule of thumb from {canvases[0][0]}² (×side)', 'σ₀* ratio', 'side ratio']
    table = md_table(cols, rows)
    detail_cols = ['σ₀'] + [f'{"×".join(map(str, hw))} {s} W1/TV' for hw in canvases for s in a.samplers[:1]]
    detail = [[fmt_sigma(r.sigma)] + [f'{curves[hw][(a.samplers[0], r.name)]["w1"]:.3f} / '
                                      f'{curves[hw][(a.samplers[0], r.name)]["tv"]:.3f}' for hw in canvases]
              for r in regimes]
    table += '\n\nPer-σ₀ brightness W1 / mode TV (' + a.samplers[0] + '):\n\n' + md_table(detail_cols, detail)
    print(table)
    plot(curves, canvases, regimes, a.samplers[0], results, out / 'resolution.png')
    payload = {'args': vars(a), 'seconds': time.perf_counter() - t0, 'results': results}
    common.write_outputs(out, 'resolution', table, payload)
    print(f'wrote {out / "resolution.png"} ({time.perf_counter() - t0:.0f}s)')
    return payload


def plot(curves, canvases, regimes, sampler, results, path):
    plt = common.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    finite = [r for r in regimes if not math.isinf(r.sigma)]
    for hw in canvases:
        res = curves[hw]
        for ax, key in zip(axes, ('w1', 'tv')):
            ys = [res[(sampler, r.name)][key] for r in finite]
            line, = ax.plot([r.sigma for r in finite], ys, 'o-', ms=3, label=f'4×{hw[0]}×{hw[1]}')
            ax.axhline(res[(sampler, regimes[-1].name)][key], color=line.get_color(), ls=':', lw=1)
            cf = results[f'{hw[0]}x{hw[1]}']['closed_form']
            if math.isfinite(cf):
                ax.axvline(cf, color=line.get_color(), ls='--', lw=0.8)
    for ax, lab in zip(axes, ('brightness W1 to data', 'mode TV to uniform')):
        ax.set_xscale('log')
        ax.set_xlabel('start σ₀ (dotted: exact ∞; dashed: closed-form sufficient σ₀*)')
        ax.set_ylabel(lab)
        ax.axvspan(136, 317, color='grey', alpha=0.15, label='report A.2: 136–317 @ 104×152')
    axes[0].legend(fontsize=7)
    common.save_figure(fig, path, f'Sufficient start σ vs canvas ({sampler}, exact oracle)')


if __name__ == '__main__':
    main()
