"""Time from `kdiff-ztsnr …` to its usage error, before and after the torch-free checks, against `--help`.

    python -m benchmarks.time_to_error [--before DIR] [--repeats 7] [--smoke] [--out DIR]

Each case is a fresh `python -m kdiff_ztsnr.cli` process (wall time, median of --repeats, runs interleaved so
load changes hit both checkouts alike). "before" runs the checkout at --before (default /work/main: the code
before the change, when it is there), "after" this checkout. The row also says whether the process imported
torch before it stopped. Writes results/time_to_error.{md,json,png}.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import md_table, out_dir, pyplot, save_figure, write_outputs

ROOT = Path(__file__).resolve().parents[1]
PROBE = ('import sys, runpy\nsys.argv = ["kdiff-ztsnr", *sys.argv[1:]]\n'
         'try:\n    runpy.run_module("kdiff_ztsnr.cli", run_name="__main__")\nexcept SystemExit:\n    pass\n'
         'print("torch imported:", "torch" in sys.modules, file=sys.stderr)')


def cases(tmp: str) -> dict:
    return {
        '--help': ['sample', '--help'],
        'missing --init-image': ['sample', 'red circle, blue background', '--init-image', f'{tmp}/missing.png'],
        "typo'd --model path": ['sample', 'completely black', '--model', f'{tmp}/no-such-model.safetensors'],
        '--steps 0': ['sample', 'completely black', '--steps', '0'],
        '--out on /proc': ['sample', 'completely black', '--out', '/proc/forbidden'],
        '--strength without --init-image': ['sample', 'completely black', '--strength', '0.5'],
    }


def run_once(checkout: Path, argv: list) -> tuple:
    env = {**os.environ, 'PYTHONPATH': str(checkout)}
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, '-c', PROBE, *argv], capture_output=True, text=True, env=env,
                          timeout=600, cwd=tempfile.gettempdir())
    wall = time.perf_counter() - t
    err = proc.stderr.strip().splitlines()
    message = next((line for line in err if line.startswith('error') or ': error:' in line), '(usage)')
    return wall, 'torch imported: True' in proc.stderr, message


def measure(checkouts: dict, repeats: int, tmp: str) -> dict:
    rows = {}
    for name, argv in cases(tmp).items():
        times = {k: [] for k in checkouts}
        info = {}
        for _ in range(repeats):                        # interleaved: before, after, before, after, …
            for k, path in checkouts.items():
                wall, torch_imported, message = run_once(path, argv)
                times[k].append(wall)
                info[k] = {'torch': torch_imported, 'message': message}
        rows[name] = {k: {'median_s': statistics.median(v), 'runs_s': v, **info[k]} for k, v in times.items()}
    return rows


def plot(rows: dict, path: Path) -> None:
    plt = pyplot()
    names = list(rows)
    fig, ax = plt.subplots(figsize=(8, 3.8))
    keys = list(next(iter(rows.values())))
    for j, k in enumerate(keys):
        ax.barh([i + 0.4 * j for i in range(len(names))], [rows[n][k]['median_s'] for n in names], height=0.4,
                label=k)
    ax.axvline(0.5, color='k', lw=0.8, ls='--', label='target 0.5 s')
    ax.set_yticks([i + 0.2 for i in range(len(names))], names)
    ax.set_xlabel('seconds to the error (median, wall)')
    ax.legend()
    save_figure(fig, path, 'kdiff-ztsnr: time to a usage error')


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--before', default='/work/main', help='checkout of the code before the change')
    ap.add_argument('--repeats', type=int, default=7)
    ap.add_argument('--smoke', action='store_true', help='one run each, this checkout only')
    ap.add_argument('--out', default=None)
    args = ap.parse_args(argv)
    checkouts = {'after': ROOT} if args.smoke or not Path(args.before, 'kdiff_ztsnr').is_dir() else \
        {'before': Path(args.before), 'after': ROOT}
    with tempfile.TemporaryDirectory() as tmp:
        rows = measure(checkouts, 1 if args.smoke else args.repeats, tmp)
    keys = list(checkouts)
    table = md_table(['case', *[f'{k} (s, median)' for k in keys], *[f'{k}: torch imported' for k in keys],
                      'error (after)'],
                     [[n, *[f"{r[k]['median_s']:.2f}" for k in keys], *[str(r[k]['torch']) for k in keys],
                       r[keys[-1]]['message'][:90]] for n, r in rows.items()])
    print(table)
    out = out_dir(args.out)
    if not args.smoke:
        plot(rows, out / 'time_to_error.png')
    load = os.getloadavg()[0]
    write_outputs(out, 'time_to_error', f'Load average at the end: {load:.1f} (2 cores).\n\n{table}\n',
                  {'rows': rows, 'checkouts': {k: str(v) for k, v in checkouts.items()}, 'load_average': load},
                  'time_to_error')


if __name__ == '__main__':
    main()
