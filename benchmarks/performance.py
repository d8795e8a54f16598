"""Costs of the package against baselines measured in the same process (ratios; runs interleaved, medians).

    python -m benchmarks.performance [--smoke] [--threads 1]

1. Wrapper overhead per call: DiscreteVDenoiser vs k-diffusion's external.DiscreteVDDPMDenoiser around a
   null network (returns its input), so the wrapper is all that is timed (target ≤ 1.05×).
2. Model calls per sampler from ∞ vs k-diffusion's own count on sigmas[1:] (target: exactly +1).
3. Network forwards per guided step with CFGDenoiser (target: one, at twice the batch).
4. Bucket epoch planning for 6,000,000 image sizes (target < 2 s on one core), with a 6M permutation timed
   alongside as a load-independent unit.
5. Trainer step vs a bare loop on the same model, batch, conditioning and optimizer (target ≤ 1.05×).
"""

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchmarks import common
from kdiff_ztsnr import oracle
from benchmarks.common import md_table

from k_diffusion import external
from k_diffusion import sampling as K

from kdiff_ztsnr import CFGDenoiser, DiscreteVDenoiser, sampling, schedules


class Null(nn.Module):
    """A 'network' that returns its input: the wrapper is all that is left to time."""

    def __init__(self):
        super().__init__()
        self.calls, self.batches = 0, []

    def forward(self, x, t, **kwargs):
        self.calls += 1
        self.batches.append(x.shape[0])
        return x


# ------------------------------------------------------------------------------------------ 1. wrapper

def wrapper_overhead(sizes, repeats, inner):
    ztsnr, sdxl = schedules.ztsnr_alphas_cumprod(), schedules.sdxl_alphas_cumprod()
    ours = DiscreteVDenoiser(Null(), ztsnr)
    ours_sdxl = DiscreteVDenoiser(Null(), sdxl)
    theirs = external.DiscreteVDDPMDenoiser(Null(), sdxl.float(), quantize=False)
    sig = torch.tensor([0.03, 5., 14.6])        # where both tables are defined, both wrappers agree
    xs = torch.randn(len(sig), 4, 8, 8)
    assert torch.allclose(ours_sdxl(xs, sig), theirs(xs, sig), rtol=1e-5, atol=1e-5)
    rows, raw = [], []
    for shape in sizes:
        x = torch.randn(shape)
        sigma = torch.full((shape[0],), 5.)
        inf = torch.full((shape[0],), math.inf)
        with torch.no_grad():
            t = common.interleaved({
                'k-diffusion': lambda: theirs(x, sigma),
                'ours (ZTSNR table)': lambda: ours(x, sigma),
                'ours (SDXL table)': lambda: ours_sdxl(x, sigma),
                'ours at σ=∞': lambda: ours(x, inf),
            }, repeats, inner)
        base = t['k-diffusion']
        rows.append(['×'.join(map(str, shape)), base * 1e6, t['ours (ZTSNR table)'] * 1e6,
                     t['ours (ZTSNR table)'] / base, t['ours (SDXL table)'] / base, t['ours at σ=∞'] / base])
        raw.append({'shape': shape, **{k: v for k, v in t.items()}})
    cols = ['x shape', 'k-diffusion µs/call', 'ours µs/call', 'ratio (ZTSNR table)', 'ratio (SDXL table)',
            'ratio at σ=∞']
    return md_table(cols, rows), raw


def profile_wrapper(sizes=((1, 4, 32, 32), (2, 4, 104, 152)), repeats=61, inner=100, profiled_calls=500):
    """What costs what in one DiscreteVDenoiser call at a finite σ, against k-diffusion's DiscreteVDDPMDenoiser:
    (a) wall time of the pieces and of hybrids (k-diffusion's forward with one of our pieces swapped in; ours
    without its dtype handling), interleaved medians; (b) torch.profiler's count and self time of the aten ops
    per call."""
    theirs = external.DiscreteVDDPMDenoiser(Null(), schedules.sdxl_alphas_cumprod().float(), False)
    ours = DiscreteVDenoiser(Null(), schedules.ztsnr_alphas_cumprod())
    rows, raw = wrapper_pieces(theirs, ours, sizes, repeats, inner)
    parts = ['(a) wall time, interleaved medians\n\n' + md_table(['x shape', 'what', 'µs', '× k-diffusion call'], rows)]
    rows, raw_ops = wrapper_ops(theirs, ours, sizes[0], profiled_calls)
    raw.update(raw_ops)
    parts.append(f'(b) aten ops per call (torch.profiler, {profiled_calls} calls, x {"×".join(map(str, sizes[0]))}; '
                 'op self times include the profiler\'s own per-op cost)\n\n' +
                 md_table(['wrapper', 'wall µs (no profiler)', 'aten ops/call', 'aten self µs/call (profiled)',
                           'top ops: count, µs'], rows))
    return '\n\n'.join(parts), raw


def wrapper_pieces(theirs, ours, sizes, repeats: int, inner: int) -> tuple[list, dict]:
    """(a): interleaved median wall time of each wrapper, its pieces and hybrids, per x shape."""
    from k_diffusion import utils

    def forward(scalings, sigma_to_t, net):        # k-diffusion's DiscreteVDDPMDenoiser.forward, pieces given
        def f(x, sigma):
            c_skip, c_out, c_in = [utils.append_dims(c, x.ndim) for c in scalings(sigma)]
            return net(x * c_in, sigma_to_t(sigma)) * c_out + x * c_skip
        return f
    kd_inline = forward(theirs.get_scalings, theirs.sigma_to_t, theirs.inner_model)
    ours_inline = forward(ours.get_scalings, ours.sigma_to_t, ours.inner_model)     # = ours minus dtype handling
    kd_our_t = forward(theirs.get_scalings, ours.sigma_to_t, theirs.inner_model)
    kd_our_scalings = forward(ours.get_scalings, theirs.sigma_to_t, theirs.inner_model)
    raw, rows = {}, []
    for shape in sizes:
        x, sig = torch.randn(shape), torch.full((shape[0],), 5.)
        fns = {
            'k-diffusion call': lambda: theirs(x, sig),
            'ours call': lambda: ours(x, sig),
            "k-diffusion's forward inlined (no nn.Module call)": lambda: kd_inline(x, sig),
            'ours inlined, no dtype handling (same ops as the line above, our pieces)': lambda: ours_inline(x, sig),
            'k-diffusion inlined, our sigma_to_t': lambda: kd_our_t(x, sig),
            'k-diffusion inlined, our get_scalings': lambda: kd_our_scalings(x, sig),
            'k-diffusion sigma_to_t alone': lambda: theirs.sigma_to_t(sig),
            'ours sigma_to_t alone': lambda: ours.sigma_to_t(sig),
            'k-diffusion get_scalings alone': lambda: theirs.get_scalings(sig),
            'ours get_scalings alone': lambda: ours.get_scalings(sig),
        }
        with torch.no_grad():
            t = common.interleaved(fns, repeats, inner)
        base = t['k-diffusion call']
        raw[str(shape)] = t
        rows += [['×'.join(map(str, shape)), k, v * 1e6, v / base] for k, v in t.items()]
    return rows, raw


def wrapper_ops(theirs, ours, shape, profiled_calls: int) -> tuple[list, dict]:
    """(b): torch.profiler's count and self time of the aten ops per call of each wrapper."""
    from torch.profiler import ProfilerActivity, profile
    x, sig = torch.randn(shape), torch.full((shape[0],), 5.)
    rows, raw = [], {}
    for name, m in (('k-diffusion', theirs), ('ours', ours)):
        with torch.no_grad():
            for _ in range(20):
                m(x, sig)
            wall = common.interleaved({name: lambda: m(x, sig)}, 5, profiled_calls // 5)[name]
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(profiled_calls):
                    m(x, sig)
        ev = prof.key_averages()
        ops = sum(e.count for e in ev) / profiled_calls
        aten = sum(e.self_cpu_time_total for e in ev) / profiled_calls
        top = sorted(ev, key=lambda e: -e.self_cpu_time_total)[:6]
        rows.append([name, wall * 1e6, ops, aten,
                     ', '.join(f'{e.key[6:]} {e.count / profiled_calls:g}× {e.self_cpu_time_total / profiled_calls:.1f}'
                               for e in top)])
        raw[f'ops {name}'] = {'wall': wall, 'ops': ops, 'aten_us': aten}
    return rows, raw


# ------------------------------------------------------------------------------------------ 2. calls

def calls_per_sampler(steps):
    images = torch.linspace(-1, 1, 8).view(8, 1) * torch.ones(8, 8)
    model = oracle.exact_model(lambda x, s, c: oracle.mixture_denoiser(images, x, s))
    sigmas = model.get_sigmas(steps)
    rows = []
    for name, fn in sampling.SAMPLERS.items():
        if name in ('dpm_fast', 'dpm_adaptive'):
            continue
        n = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
        counter = {'n': 0}

        def counted(x, s, **kw):
            counter['n'] += 1
            return model(x, s, **kw)
        torch.manual_seed(0)
        fn(counted, n, sigmas, disable=True)
        ours, counter['n'] = counter['n'], 0
        torch.manual_seed(0)
        getattr(K, 'sample_' + name)(counted, n * sigmas[1], sigmas[1:], disable=True)
        rows.append([name, ours, counter['n'], ours - counter['n']])
    return md_table(['sampler', f'calls from ∞ ({steps} steps)', 'k-diffusion on sigmas[1:]', 'difference'],
                    rows), rows


# ------------------------------------------------------------------------------------------ 3. CFG

def guided_forwards(steps, batch=3):
    null = Null()
    model = DiscreteVDenoiser(null, schedules.ztsnr_alphas_cumprod())
    cfg = CFGDenoiser(model, cond_scale=5.)
    x = torch.randn(batch, 4, 8, 8)
    extra = {'cond': torch.ones(batch, 7), 'uncond': torch.zeros(batch, 7)}
    calls = {'n': 0}

    def counted(x, s, **kw):
        calls['n'] += 1
        return cfg(x, s, **kw)
    sampling.sample_euler(counted, x, model.get_sigmas(steps), extra_args=extra, disable=True)
    rows = [['euler', steps, calls['n'], null.calls, null.calls / calls['n'], sorted(set(null.batches))]]
    return md_table(['sampler', 'steps', 'guided denoiser calls', 'network forwards', 'forwards per step',
                     'network batch sizes'], rows), rows


# ------------------------------------------------------------------------------------------ 4. buckets

def epoch_planning(n, repeats, batch_size=16):
    try:
        from kdiff_ztsnr.training.data import buckets
    except ImportError:
        return 'TODO: kdiff_ztsnr.buckets not present yet', None
    rng = np.random.default_rng(0)
    aspect = np.exp(rng.uniform(np.log(0.4), np.log(2.5), n))
    area = rng.uniform(0.3e6, 4e6, n)
    sizes = np.stack([np.sqrt(area * aspect), np.sqrt(area / aspect)], 1).astype(np.int64)
    bk = buckets.make_buckets()
    t0 = time.perf_counter()
    idx, pruned = buckets.assign_buckets(sizes, bk)
    t_assign = time.perf_counter() - t0
    idx = np.where(pruned, -1, idx)
    unit_name = f'permutation of {n:,} (unit)'
    times = {unit_name: [], 'plan_epoch world 1': [], 'plan_epoch world 256': []}
    for r in range(repeats):
        t = time.perf_counter()
        np.random.default_rng(r).permutation(n)
        times[unit_name].append(time.perf_counter() - t)
        t = time.perf_counter()
        plan = buckets.plan_epoch(idx, batch_size, epoch=r, seed=0, rank=0, world_size=1)
        times['plan_epoch world 1'].append(time.perf_counter() - t)
        t = time.perf_counter()
        buckets.plan_epoch(idx, batch_size, epoch=r, seed=0, rank=3, world_size=256)
        times['plan_epoch world 256'].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    unit = med[unit_name]
    rows = [['assign_buckets (once)', t_assign, t_assign / unit]] + [[k, v, v / unit] for k, v in med.items()]
    info = {'n': n, 'batch_size': batch_size, 'batches': len(plan), 'pruned': int(pruned.sum()), **med,
            'assign': t_assign}
    return md_table(['operation', 'seconds (median)', '× the permutation'], rows) + \
        f'\n\n{n:,} sizes, batch {batch_size}, {len(bk)} buckets, {int(pruned.sum()):,} pruned, ' \
        f'{len(plan):,} batches (world 1)', info


# ------------------------------------------------------------------------------------------ 5. trainer

def trainer_overhead(repeats, model_cfg, side, batch):
    try:
        from kdiff_ztsnr import training
        from kdiff_ztsnr.losses import v_loss
        from k_diffusion import utils as k_utils
    except ImportError as e:
        return f'TODO: trainer not present yet ({e})', None
    with tempfile.TemporaryDirectory() as tmp:
        buckets = {'max_area': side * side, 'max_side': 2 * side, 'min_side': side, 'step': side, 'extra': [[side, side]]}
        cfg = {'model': dict(model_cfg),
               'dataset': {'type': 'synthetic', 'location': str(Path(tmp) / 'data'), 'buckets': buckets,
                           'synthetic': {'n': 64, 'sizes': [[side, side]], 'seed': 0, 'solid_fraction': 0.25}},
               'training': {'steps': 10 ** 6, 'batch_size': batch, 'out_dir': tmp, 'cpu': True,
                            'log_every': 10 ** 6, 'checkpoint_every': 10 ** 6}}
        tr = training.Trainer(cfg)
        tc = tr.config['training']
        batch_data = tr.data.next()
        x0 = batch_data['x0']
        cond = tr.encode(batch_data['prompts'], 'cpu') if tr.encode is not None else {}
        g = torch.Generator().manual_seed(0)

        def bare():
            tr.inner.train()
            tr.opt.zero_grad()
            t = torch.randint(0, len(tr.model.sigmas), (len(x0),), generator=g)
            noise = torch.randn(x0.shape, generator=g)
            loss = v_loss(tr.model, x0, noise, t, tc['min_snr_gamma'], tc['terminal_weight'], **cond).mean()
            loss.backward()
            tr.opt.step()
            k_utils.ema_update(tr.unwrapped, tr.inner_ema, 0.999)
            return loss.item()
        for _ in range(3):
            tr.train_step()
        t = common.interleaved({'bare loop': bare, 'Trainer.train_step': tr.train_step}, repeats)
        n_params = sum(p.numel() for p in tr.inner.parameters())
    ratio = t['Trainer.train_step'] / t['bare loop']
    row = [f'{n_params / 1e6:.2f}M params, {batch}×3×{side}×{side}', t['bare loop'] * 1e3,
           t['Trainer.train_step'] * 1e3, ratio]
    return row, {'params': n_params, 'side': side, 'batch': batch, **t, 'ratio': ratio}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--smoke', action='store_true')
    p.add_argument('--threads', type=int, default=1, help='torch threads while timing (1: least noise)')
    p.add_argument('--out', default=None)
    p.add_argument('--profile', action='store_true', help='also time ablations of the wrapper (what costs what)')
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    out = common.out_dir(a.out)
    t0 = time.perf_counter()
    sizes = [(1, 4, 32, 32), (1, 4, 128, 128), (2, 4, 104, 152), (8, 4, 128, 128)]
    rep, inner, n_plan, plan_rep, tr_rep = 61, 100, 6_000_000, 3, 10
    tiny = {'type': 'image_v1', 'input_channels': 3, 'mapping_out': 32, 'depths': [1, 1], 'channels': [16, 32],
            'self_attn_depths': [False, True]}
    small = {'type': 'image_v1', 'input_channels': 3, 'mapping_out': 128, 'depths': [2, 2, 2],
             'channels': [64, 128, 256], 'self_attn_depths': [False, False, True]}
    trainer_cases = [(tiny, 16, 4), (small, 32, 8)]
    if a.smoke:
        sizes, rep, inner, n_plan, plan_rep, tr_rep = sizes[:1], 3, 5, 200_000, 1, 2
        trainer_cases = [(tiny, 16, 2)]
    print(f'performance: {common.machine_line()}')
    parts, payload = [], {'args': vars(a)}
    tab, raw = wrapper_overhead(sizes, rep, inner)
    parts.append('**1. Wrapper overhead per call, null network (median of interleaved runs)**\n\n' + tab)
    payload['wrapper'] = raw
    print(parts[-1])
    if a.profile:
        tab, payload['profile'] = profile_wrapper(*(((sizes[0],), 3, 5, 20) if a.smoke else ()))
        parts.append('**1b. Where the wrapper time goes (ablations, --profile)**\n\n' + tab)
        print(parts[-1])
    tab, raw = calls_per_sampler(10)
    parts.append('**2. Model calls per sampler from ∞ (native 10-step schedule)**\n\n' + tab)
    payload['calls'] = raw
    print(parts[-1])
    tab, raw = guided_forwards(10)
    parts.append('**3. Network forwards per guided step (CFGDenoiser, batch 3)**\n\n' + tab)
    payload['cfg'] = raw
    print(parts[-1])
    tab, raw = epoch_planning(n_plan, plan_rep)
    parts.append(f'**4. Bucket epoch planning, {n_plan:,} sizes (one core)**\n\n' + tab)
    payload['buckets'] = raw
    print(parts[-1])
    tab, payload['trainer'] = trainer_table(trainer_cases, tr_rep)
    parts.append(tab)
    print(parts[-1])
    table = '\n\n'.join(parts)
    plot(payload, out / 'performance.png')
    payload['seconds'] = time.perf_counter() - t0
    common.write_outputs(out, 'performance', table, payload)
    print(f'wrote {out / "performance.png"} ({time.perf_counter() - t0:.0f}s)')
    return payload


def trainer_table(cases, repeats: int) -> tuple[str, list]:
    """Section 5: the Trainer's step time against a bare loop, per (model config, side, batch) case."""
    rows, raws = [], []
    for cfg, side, batch in cases:
        row, raw = trainer_overhead(repeats, cfg, side, batch)
        if raw is None:
            return '**5. Trainer step overhead**\n\n' + row, raws
        rows.append(row)
        raws.append(raw)
    return ('**5. Trainer step vs bare loop (same model, batch, conditioning, optimizer; EMA in both)**\n\n' +
            md_table(['model / batch', 'bare ms/step', 'Trainer ms/step', 'ratio'], rows)), raws


def plot(payload, path):
    plt = common.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    w = payload['wrapper']
    labels = ['×'.join(map(str, r['shape'])) for r in w]
    for key in ('ours (ZTSNR table)', 'ours (SDXL table)', 'ours at σ=∞'):
        axes[0].plot(labels, [r[key] / r['k-diffusion'] for r in w], 'o-', label=key)
    axes[0].axhline(1.05, color='r', ls='--', lw=0.8, label='target 1.05×')
    axes[0].axhline(1.0, color='k', lw=0.5)
    axes[0].set_ylabel('time per call / k-diffusion')
    axes[0].set_title('wrapper overhead, null network', fontsize=9)
    axes[0].legend(fontsize=7)
    axes[0].tick_params(axis='x', labelsize=7)
    tr = payload.get('trainer') or []
    if tr:
        axes[1].bar([f'{r["params"] / 1e6:.2f}M, {r["batch"]}×{r["side"]}²' for r in tr], [r['ratio'] for r in tr])
        axes[1].axhline(1.05, color='r', ls='--', lw=0.8)
        axes[1].set_ylabel('Trainer step / bare loop')
        axes[1].set_title('trainer overhead', fontsize=9)
    common.save_figure(fig, path)


if __name__ == '__main__':
    main()
