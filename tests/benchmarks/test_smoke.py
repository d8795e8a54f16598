"""Smoke runs of every benchmark entry point (``python -m benchmarks.NAME --smoke``: ``benchmarks.regimes``,
``benchmarks.schedule_study``, ``benchmarks.hosts``, ``benchmarks.train_sdxl --part a``, …), in-process, from one
registry (`SMOKE`): each completes and writes its table (NAME.md, NAME.json) and plot (NAME.png) — into a temporary
folder, not benchmarks/results — and its numbers pass the run's own check. A benchmarks/*.py with a
``__main__`` entry and no registry entry fails `test_every_benchmark_entry_point_has_a_smoke_run`. Then unit
tests of the benchmarks' instruments (benchmarks/common.py, benchmarks/subjects.py)."""

import importlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / 'benchmarks'


def load(name):
    return importlib.import_module(f'benchmarks.{name}')


def reset_accelerate():
    from accelerate.state import AcceleratorState, GradientState
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@dataclass(frozen=True)
class Smoke:
    """One smoke run: `python -m benchmarks.<module> <argv>` ({out}: the temporary folder, {checkpoint}: a
    2-step trainer checkpoint), the files it must write into {out}, and a check(payload, out, printed)."""
    module: str
    argv: tuple
    outputs: tuple = ()
    check: Optional[Callable] = None
    needs: tuple = ()                   # modules the run imports that the test environment may lack


def check_table(stem):
    def check(payload, out, printed):
        table = (out / f'{stem}.md').read_text()
        assert '|---|' in table and 'cores' in table and '|---|' in printed       # written and printed
        assert json.loads((out / f'{stem}.json').read_text())['machine']['torch'] and payload
    return check


def check_trained(name):
    def check(payload, out, printed):
        assert '**"completely black" scale 5**' in printed and '**unconditional "" scale 1**' in printed
        recs = payload['records']
        assert {r['prompt'] for r in recs} == {'completely black', 'completely white', ''}
        assert all(0 <= r['mean'] <= 1 and r['w1'] >= 0 for r in recs)
        if name == 'regimes':
            assert sorted({round(r['sigma0'], 2) for r in recs}) == [14.61, 20000., float('inf')]
    return check


def check_study(payload, out, printed):
    assert '|---|' in printed and all(r['score'] > 0 and r['w1'] >= 0 for r in payload['rows'])
    assert all(0 < f['p90']['w1'] < 1 for f in payload['floors'].values())


def check_search(payload, out, printed):
    assert '|---|' in printed and set(payload['best']) == {'euler', 'euler_ancestral'}


def check_gpu(payload, out, printed):
    """The package and diffusers' SDXL pipeline on the tiny model, on the CPU; the package clamped at diffusers'
    4096 agrees with it, and the table says these are not GPU numbers."""
    table = (out / 'gpu.md').read_text()
    assert 'CPU-smoke numbers' in table and '|---|' in table
    rows = payload['rows']
    assert [r['batch'] for r in rows] == [1, 4] and rows[0]['clamp_4096_vs_diffusers'] < 1e-3
    assert all(r['package (from ∞)']['median_s'] > 0 and r['diffusers']['median_s'] > 0 for r in rows)


def check_defaults(payload, out, printed):
    """Rows for every sampler × schedule on the embedded witness, its data statistics recomputed from its config."""
    rows = payload['rows']
    assert {(r['sampler'], r['schedule']) for r in rows} == {(s, k) for s in ('euler', 'dpmpp_2m_sde')
                                                              for k in ('recommended', 'native', 'karras ρ=7')}
    assert all(0 <= r['black'] <= 1 and 0 <= r['white'] <= 1 and len(r['uncond']) == 4 for r in rows)
    assert all('dspread_lo' in r and r['dspread_lo'] <= r['dspread_hi'] for r in rows)
    data = payload['data']['embedded']
    assert data['n'] == 2048 and 0 < data['spread'] < 0.5
    assert data['solid']['completely black']['mean'] == 0 and data['solid']['completely white']['mean'] == 1


def check_time_to_error(payload, out, printed):
    """Each usage error is reached without importing torch."""
    rows = json.loads((out / 'time_to_error.json').read_text())['rows']
    assert '--steps 0' in rows and all(not r['after']['torch'] for r in rows.values())
    assert rows['--steps 0']['after']['message'].startswith('error: steps (--steps)') and '|---|' in printed


def check_train_sdxl(part):
    def check(res, out, printed):
        if part == 'a':                  # the trainer-overhead table
            assert set(res['a']['seconds']) == {'trainer', 'bare', 'bare+ema'} and res['a']['ratio_vs_bare'] > 0
        else:                            # the ε → v run, sampled through the CLI
            assert res['c']['steps'] == 2
            assert set(res['c']['cli_brightness']) == {'completely black', 'completely white'}
    return check


def check_quantize(payload, out, printed):
    """Both settings measured per sampler and task; --merge of two runs' JSON concatenates their rows."""
    rows = payload['rows']
    assert {r['quantize'] for r in rows} == {False, True} and len({r['sampler'] for r in rows}) == 2
    assert all(0 <= r['rel_diff_mean'] <= r['rel_diff_max'] for r in rows)
    assert '|---|' in (out / 'quantize_timesteps.md').read_text() and '|---|' in printed
    saved = str(out / 'quantize_timesteps.json')
    merged = load('quantize_timesteps').main(['--merge', saved, saved, '--out', str(out / 'merged')])
    assert merged['rows'] == rows + rows and 'Merged from 2 runs' in merged['head']


def check_hosts(payload, out, printed):
    """The host-clamp vs exact table: diffusers' emulation and ZTSNRScheduler agree with their references."""
    assert '|---|' in printed and json.loads((out / 'hosts.json').read_text())['rows']
    checks = payload['checks']
    assert checks['euler_4096']['sigma_0'] == pytest.approx(4096, rel=1e-4)
    # emulation = diffusers, ZTSNRScheduler = the package, to float32 rounding (the 3-step smoke schedule's Euler
    # step from σ₁ = 2254 to 0.03 cancels x₁ ≈ σ₁·n: up to 1e-4 relative with one CPU thread, 1e-7 with two)
    assert checks['euler_4096']['rel'] < 1e-3 and checks['ztsnr']['rel'] < 1e-3
    for r in payload['rows']:
        assert r['first_rel'] > 1e-5 and r['final_rel'] > 0              # every clamp moves the sample
        if r['sampler'] == 'euler':                                       # x₁ − x₁* ≈ (σ₁F + n)/σ₀
            assert r['first_rel'] == pytest.approx(r['predicted_first_rel'], rel=0.05)
        else:
            assert math.isnan(r['predicted_first_rel'])


def check_witnesses(payload, out, printed):
    """A 2-step photos witness from the package's trainer, and its data statistics recomputed from its config."""
    assert payload['checkpoint'].is_dir() and payload['checkpoint'].name.startswith('checkpoint-')
    st = payload['stats']
    assert st['n'] == 16 and 0 < st['spread'] < 0.5 and "'n': 16" in printed


def files(stem, exts=('md', 'json', 'png')):
    return tuple(f'{stem}.{e}' for e in exts)


OUT = ('--out', '{out}')
SMOKE = {
    'regimes': Smoke('regimes', ('--smoke', *OUT), files('regimes'), check_table('regimes')),
    'regimes --model': Smoke('regimes', ('--smoke', '--model', '{checkpoint}', *OUT), files('regimes_ckpt'),
                             check_trained('regimes')),
    'resolution': Smoke('resolution', ('--smoke', *OUT), files('resolution'), check_table('resolution')),
    'schedules': Smoke('schedules', ('--smoke', *OUT), files('schedules'), check_table('schedules')),
    'schedules --model': Smoke('schedules', ('--smoke', '--model', '{checkpoint}', *OUT), files('schedules_ckpt'),
                               check_trained('schedules')),
    'schedule_study': Smoke('schedule_study', ('--smoke', *OUT), files('schedules_study'), check_study),
    'schedule_study --search': Smoke('schedule_study', ('--smoke', '--search', *OUT),
                                     files('schedules_search', ('md',)), check_search),
    'performance': Smoke('performance', ('--smoke', '--profile', *OUT), files('performance'),
                         check_table('performance')),
    'gpu': Smoke('gpu', ('--smoke', '--repeats', '1', '--steps', '3', *OUT), files('gpu', ('md', 'json')), check_gpu,
                 ('diffusers',)),
    'hosts': Smoke('hosts', ('--smoke', *OUT), files('hosts'), check_hosts, ('diffusers',)),
    'defaults': Smoke('defaults', ('--smoke', *OUT, '--schedules', 'recommended', 'native', 'karras ρ=7'),
                      files('defaults_study'), check_defaults),
    'witnesses': Smoke('witnesses', ('--smoke', '--work', '{out}/work'), (), check_witnesses),
    'time_to_error': Smoke('time_to_error', ('--smoke', *OUT), files('time_to_error', ('md', 'json')),
                           check_time_to_error),
    'train_sdxl --part a': Smoke('train_sdxl', ('--part', 'a', '--smoke', '--work', '{out}/work', *OUT),
                                 files('train_sdxl_a', ('md',)), check_train_sdxl('a')),
    'train_sdxl --part c': Smoke('train_sdxl', ('--part', 'c', '--smoke', '--work', '{out}/work', *OUT),
                                 files('train_sdxl_c', ('md',)), check_train_sdxl('c')),
    'quantize_timesteps': Smoke('quantize_timesteps', ('--smoke', *OUT), files('quantize_timesteps', ('md', 'json')),
                                check_quantize),
}


@pytest.fixture(scope='module')
def tiny_checkpoint(tmp_path_factory):
    """A trainer checkpoint after 2 steps: plumbing only, its samples are noise. Its 12-image synthetic set
    (seed 0, solid_fraction 0.5) holds a 'completely black' and a 'completely white'."""
    from tests.helpers import train_tiny_checkpoint
    out = tmp_path_factory.mktemp('bench') / 'ckpt'        # its outputs are named regimes_ckpt.*, schedules_ckpt.*
    out.mkdir()
    return train_tiny_checkpoint(out, n=12, solid_fraction=0.5)


@pytest.mark.filterwarnings('ignore:Should have tb')      # torchsde round-off inside k-diffusion's Brownian tree
@pytest.mark.parametrize('key', list(SMOKE))
def test_benchmark_smoke(key, tmp_path, capsys, request):
    run = SMOKE[key]
    for module in run.needs:
        pytest.importorskip(module)
    checkpoint = request.getfixturevalue('tiny_checkpoint') if '{checkpoint}' in run.argv else None
    argv = [a.format(out=tmp_path, checkpoint=checkpoint) for a in run.argv]
    reset_accelerate()
    try:
        payload = load(run.module).main(argv)
    finally:
        reset_accelerate()
    for name in run.outputs:
        assert (tmp_path / name).stat().st_size > 0, name
    run.check(payload, tmp_path, capsys.readouterr().out)


def test_every_benchmark_entry_point_has_a_smoke_run():
    """Each ``python -m benchmarks.NAME`` (a benchmarks/*.py with a __main__ entry) is in SMOKE, every SMOKE run
    is a --smoke run of an entry point, and train_sdxl's parts are each smoke-run."""
    entry = {p.stem for p in BENCHMARKS.glob('*.py') if "if __name__ == '__main__'" in p.read_text()}
    assert len(entry) >= 12 and {run.module for run in SMOKE.values()} == entry
    assert all('--smoke' in run.argv and run.check for run in SMOKE.values())
    parts = {run.argv[run.argv.index('--part') + 1] for run in SMOKE.values() if '--part' in run.argv}
    assert parts == set(load('train_sdxl').PARTS) - {'all'}


# ---------------------------------------------------------------------------------------------- instruments

def test_regimes_reduced_coordinates_are_exact():
    """The benchmarks' reduced-coordinate oracle reproduces the full-dimensional run (common.ReducedSpace)."""
    common = load('common')
    from kdiff_ztsnr import sampling
    from kdiff_ztsnr.oracle import brightness_dataset, exact_model
    images = brightness_dataset(8, (4, 8, 8))
    sigmas = exact_model(lambda x, s, c: x).get_sigmas(6)
    assert common.verify_reduction(images, sampling.sample_dpmpp_2m, sigmas) < 1e-5


def test_mixture_denoiser_is_the_posterior_mean():
    """oracle.mixture_denoiser (softmax of x·μ − |μ|²/2 over σ² + s²) against the posterior written out term by
    term: Gaussian likelihoods N(x; μ_k, (σ² + s²)I), weights normalised, E[y | x, k] = μ_k + s²/(σ² + s²)(x − μ_k)."""
    import torch
    from kdiff_ztsnr.oracle import brightness_dataset, mixture_denoiser
    data = brightness_dataset(8, (2, 3, 3)).double()
    x = torch.randn(6, 2, 3, 3, dtype=torch.float64) * 3
    sigma = torch.tensor([0.3, 0.5, 3., 50., 4096., math.inf], dtype=torch.float64)
    for s in (0., 0.4):
        for b in range(6):
            v = sigma[b] ** 2 + s ** 2
            if math.isinf(sigma[b]):
                want = data.mean(0)
            else:
                logp = torch.stack([-((x[b] - mu) ** 2).sum() / (2 * v) for mu in data])
                w = (logp - logp.max()).exp()
                w = w / w.sum()
                want = sum(wk * (mu + s ** 2 / v * (x[b] - mu)) for wk, mu in zip(w, data))
            got = mixture_denoiser(data, x[b:b + 1], sigma[b:b + 1], s)[0]
            assert torch.allclose(got, want, atol=1e-9), (s, b)


@pytest.mark.filterwarnings('ignore:Should have tb')
def test_performance_calls_and_guidance():
    perf = load('performance')
    _, rows = perf.calls_per_sampler(5)
    assert all(r[3] == 1 for r in rows)                   # exactly one extra call: the step from ∞
    _, rows = perf.guided_forwards(5, batch=2)
    assert rows[0][4] == 1 and rows[0][5] == [4]           # one batched forward per guided step


def test_trained_reference_data():
    """The metrics' reference: the embedded config's training images, rendered from their captions."""
    subjects = load('subjects')
    caps, colours = subjects.training_colours({'n': 300, 'sizes': [[8, 8]], 'seed': 0, 'solid_fraction': 0.3})
    black = colours[[c == 'completely black' for c in caps]]
    white = colours[[c == 'completely white' for c in caps]]
    assert len(black) and len(white) and black.abs().max() == 0 and (white == 1).all()


def test_perfect_sampler_floor_is_met_by_data_draws():
    """The floors are what i.i.d. data draws score: ~90 % of fresh draws fall under the p90."""
    import torch
    subjects = load('subjects')
    subj = subjects.study_subjects((4, 8, 8))[1]
    ref = subjects.PerfectSampler(subj, 256, trials=200)
    g = torch.Generator().manual_seed(123)
    below = sum(ref.stats(subj.draw(256, g))['w1'] <= ref.floor['w1'] for _ in range(100))
    assert 75 <= below <= 99


def test_photo_witness_data_is_a_function_of_its_config():
    """The held-out witness's crops are reproducible from (seed, index) and span dark to bright photographs."""
    import numpy as np
    w = load('witnesses')
    a, cap_a = w.photo_item(7)
    b, cap_b = w.photo_item(7)
    assert np.array_equal(a, b) and cap_a == cap_b and a.shape == (32, 32, 3)
    cfg = w.photo_config(n=64)
    ims, caps = w.data_images('photos', cfg)
    assert len(ims) == 64 and set(caps) & set(w.SOLID) and set(caps) - set(w.SOLID)
    bright = ims.mean(axis=(1, 2, 3))
    assert bright.min() == 0 and bright.max() == 1 and 0.1 < bright.std() < 0.5
