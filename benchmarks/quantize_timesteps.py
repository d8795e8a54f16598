"""Integer timesteps (``quantize_timesteps``, as ComfyUI and A1111 feed the network) vs the package's
interpolated ones, on a trained witness (the embedded model by default): does rounding t change the images?

For each sampler, `generate` runs with its own default schedule ('recommended' for that sampler, 28 steps)
both ways on the same seeds. Reported per task (``completely black`` / ``completely white`` at CFG 5,
unconditional at CFG 1): brightness statistics against the training data (subjects.TrainedSubject.measure:
mean, bias, spread, W1, W1 colour) for each setting, and the relative image difference ‖x_q − x‖/‖x‖ (per sample, then
the mean and max over samples).

    python benchmarks/quantize_timesteps.py              # benchmarks/results/quantize_timesteps.{md,json}
    python benchmarks/quantize_timesteps.py --smoke      # a few samples and steps
    python benchmarks/quantize_timesteps.py --samplers euler --out A; … --samplers dpmpp_2m --out B
    python benchmarks/quantize_timesteps.py --merge A/quantize_timesteps.json B/quantize_timesteps.json
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ''):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common, subjects  # noqa: E402

from kdiff_ztsnr.generation import generate as gen  # noqa: E402
from kdiff_ztsnr.generation.params import GenerationParams  # noqa: E402

SAMPLERS = ('euler', 'euler_ancestral', 'dpmpp_2m', 'dpmpp_2m_sde')


def images(subject, task, sampler: str, steps: int, seed: int, quantize: bool) -> torch.Tensor:
    """`generate` with its own schedule for this sampler; sample i seeded with seed + i."""
    p = GenerationParams(prompt=task.prompt, scale=task.scale, n_samples=task.n, seed=seed, width=subject.width,
                         height=subject.height, sampler=sampler, steps=steps, quantize_timesteps=quantize)
    return gen.generate(subject.pipe, p).double()


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """‖a − b‖/‖b‖ per sample [n]."""
    return (a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)


def run(subject, tasks, samplers, steps: int, seed: int, log) -> list:
    rows = []
    for sampler in samplers:
        for task in tasks:
            got = {q: images(subject, task, sampler, steps, seed, q) for q in (False, True)}
            rd = relative_difference(got[True], got[False])
            for q in (False, True):
                colours = ((got[q] + 1) / 2).mean((2, 3))
                m = subject.measure(task, colours)
                rows.append({'sampler': sampler, 'task': task.label, 'quantize': q, **m,
                             'rel_diff_mean': rd.mean().item() if q else 0.,
                             'rel_diff_max': rd.max().item() if q else 0.})
            log(f'{sampler:16s} {task.label:34s} rel diff mean {rd.mean():.2e} max {rd.max():.2e}; '
                f'W1 {rows[-2]["w1"]:.4f} -> {rows[-1]["w1"]:.4f}')
    return rows


def table(rows: list) -> str:
    cols = ['sampler', 'task', 'integer t', 'mean brightness', 'bias', 'spread', 'W1 brightness', 'W1 colour',
            '‖x_q − x‖/‖x‖ mean', 'max']
    body = [[r['sampler'], r['task'], 'yes' if r['quantize'] else 'no', r['mean'], r['bias'], r['spread'], r['w1'],
             r['w1_colour'], r['rel_diff_mean'] if r['quantize'] else '', r['rel_diff_max'] if r['quantize'] else '']
            for r in rows]
    return common.md_table(cols, body)


def main(argv=None) -> dict:
    a = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    a.add_argument('--model', default='embedded', help='a trained model on the synthetic data (default: embedded)')
    a.add_argument('--n', type=int, default=32, help='samples per solid-colour task')
    a.add_argument('--n-uncond', type=int, default=64, help='samples of the unconditional task')
    a.add_argument('--steps', type=int, default=28)
    a.add_argument('--seed', type=int, default=0)
    a.add_argument('--smoke', action='store_true', help='2 samples, 4 steps, 2 samplers')
    a.add_argument('--samplers', nargs='+', default=list(SAMPLERS), choices=SAMPLERS)
    a.add_argument('--merge', nargs='+', default=None, metavar='JSON',
                   help='write one table from the rows of these runs (e.g. one per sampler, run in parallel)')
    a.add_argument('--out', default=None, help='output folder (default: benchmarks/results)')
    args = a.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out)
    if args.smoke:
        args.n, args.n_uncond, args.steps = 2, 2, 4
    torch.set_num_threads(max(1, torch.get_num_threads()))
    subject, tasks, floors = subjects.subject_and_tasks(args.model, args.n, args.n_uncond, (5.,))
    samplers = SAMPLERS[:2] if args.smoke else args.samplers
    t0 = time.perf_counter()
    rows = run(subject, tasks, samplers, args.steps, args.seed, print)
    head = (f'Integer vs interpolated timesteps on {subject.describe()}; {args.steps} steps, the recommended '
            f'schedule per sampler, seeds {args.seed}…, n = {args.n} per solid colour, {args.n_uncond} '
            f'unconditional. Unconditional floor: a perfect sampler with n={args.n_uncond} scores W1 '
            + ', '.join(f'{f["w1"]:.4f}' for f in floors.values()) + '.')
    payload = {'args': vars(args), 'head': head, 'seconds': time.perf_counter() - t0, 'rows': rows,
               'floors': {t.label: f for t, f in floors.items()}}
    write(payload, args.out)
    return payload


def write(payload: dict, out) -> None:
    text = payload['head'] + '\n\n' + table(payload['rows'])
    print(text)
    common.write_outputs(common.out_dir(out), 'quantize_timesteps', text, payload)


def merge(paths, out) -> dict:
    """One table from the rows of several runs with the same settings but different --samplers."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    payload = {'args': runs[0]['args'], 'head': runs[0]['head'] + f' Merged from {len(runs)} runs (samplers '
               + '; '.join(', '.join(r['args']['samplers']) for r in runs) + ', run in parallel: '
               + ', '.join(f'{r["seconds"]:.0f}' for r in runs) + ' s).',
               'seconds': [r['seconds'] for r in runs], 'rows': [row for r in runs for row in r['rows']],
               'floors': runs[0]['floors']}
    write(payload, out)
    return payload


if __name__ == '__main__':
    main()
