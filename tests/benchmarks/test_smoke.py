"""Smoke runs of every benchmark (``python benchmarks/NAME.py --smoke``), in-process: each completes and
writes its table (NAME.md, NAME.json) and plot (NAME.png) — into a temporary folder, not benchmarks/results."""

import importlib
import json

import pytest


def load(name):
    return importlib.import_module(f'benchmarks.{name}')


@pytest.mark.filterwarnings('ignore:Should have tb')      # torchsde round-off inside k-diffusion's Brownian tree
@pytest.mark.parametrize('name', ['regimes', 'resolution', 'schedules', 'performance'])
def test_benchmark_smoke(name, tmp_path, capsys):
    payload = load(name).main(['--smoke', '--out', str(tmp_path)] + (['--profile'] if name == 'performance' else []))
    for ext in ('md', 'json', 'png'):
        assert (tmp_path / f'{name}.{ext}').stat().st_size > 0
    table = (tmp_path / f'{name}.md').read_text()
    assert '|---|' in table and 'cores' in table
    saved = json.loads((tmp_path / f'{name}.json').read_text())
    assert saved['machine']['torch'] and payload
    assert '|---|' in capsys.readouterr().out            # the table is printed too


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
    import math
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


@pytest.fixture(scope='module')
def tiny_checkpoint(tmp_path_factory):
    """A trainer checkpoint after 2 steps: plumbing only, its samples are noise. Its 12-image synthetic set
    (seed 0, solid_fraction 0.5) holds a 'completely black' and a 'completely white'."""
    from tests.helpers import train_tiny_checkpoint
    return train_tiny_checkpoint(tmp_path_factory.mktemp('bench_ckpt'), n=12, solid_fraction=0.5)


@pytest.mark.filterwarnings('ignore:Should have tb')
@pytest.mark.parametrize('name', ['regimes', 'schedules'])
def test_benchmark_smoke_trained_model(name, tiny_checkpoint, tmp_path, capsys):
    """``--model PATH``: the trained-model path of regimes.py / schedules.py (the same code as --model embedded)."""
    payload = load(name).main(['--smoke', '--model', str(tiny_checkpoint), '--out', str(tmp_path)])
    stem = f'{name}_{tiny_checkpoint.name}'
    for ext in ('md', 'json', 'png'):
        assert (tmp_path / f'{stem}.{ext}').stat().st_size > 0
    printed = capsys.readouterr().out
    assert '**"completely black" scale 5**' in printed and '**unconditional "" scale 1**' in printed
    recs = payload['records']
    assert {r['prompt'] for r in recs} == {'completely black', 'completely white', ''}
    assert all(0 <= r['mean'] <= 1 and r['w1'] >= 0 for r in recs)
    if name == 'regimes':
        assert sorted({round(r['sigma0'], 2) for r in recs}) == [14.61, 20000., float('inf')]


def test_trained_reference_data():
    """The metrics' reference: the embedded config's training images, rendered from their captions."""
    subjects = load('subjects')
    caps, colours = subjects.training_colours({'n': 300, 'sizes': [[8, 8]], 'seed': 0, 'solid_fraction': 0.3})
    black = colours[[c == 'completely black' for c in caps]]
    white = colours[[c == 'completely white' for c in caps]]
    assert len(black) and len(white) and black.abs().max() == 0 and (white == 1).all()


@pytest.mark.filterwarnings('ignore:Should have')
@pytest.mark.parametrize('search', [False, True])
def test_schedule_study_smoke(search, tmp_path, capsys):
    """benchmarks/schedule_study.py: the per-sample statistics against the data with their perfect-sampler floors."""
    study = load('schedule_study')
    payload = study.main(['--smoke', '--out', str(tmp_path)] + (['--search'] if search else []))
    stem = 'schedules_search' if search else 'schedules_study'
    assert (tmp_path / f'{stem}.md').stat().st_size > 0 and '|---|' in capsys.readouterr().out
    if search:
        assert set(payload['best']) == {'euler', 'euler_ancestral'}
    else:
        assert (tmp_path / f'{stem}.png').stat().st_size > 0
        assert all(r['score'] > 0 and r['w1'] >= 0 for r in payload['rows'])
        assert all(0 < f['p90']['w1'] < 1 for f in payload['floors'].values())


def test_perfect_sampler_floor_is_met_by_data_draws():
    """The floors are what i.i.d. data draws score: ~90 % of fresh draws fall under the p90."""
    import torch
    subjects = load('subjects')
    subj = subjects.study_subjects((4, 8, 8))[1]
    ref = subjects.PerfectSampler(subj, 256, trials=200)
    g = torch.Generator().manual_seed(123)
    below = sum(ref.stats(subj.draw(256, g))['w1'] <= ref.floor['w1'] for _ in range(100))
    assert 75 <= below <= 99


def test_gpu_benchmark_smoke(tmp_path, capsys):
    """benchmarks/gpu.py --smoke: the package and diffusers' SDXL pipeline on the tiny model, on the CPU; the
    package clamped at diffusers' 4096 agrees with it, and the table says these are not GPU numbers."""
    payload = load('gpu').main(['--smoke', '--repeats', '1', '--steps', '3', '--out', str(tmp_path)])
    table = (tmp_path / 'gpu.md').read_text()
    assert 'CPU-smoke numbers' in table and '|---|' in table
    rows = payload['rows']
    assert [r['batch'] for r in rows] == [1, 4] and rows[0]['clamp_4096_vs_diffusers'] < 1e-3
    assert all(r['package (from ∞)']['median_s'] > 0 and r['diffusers']['median_s'] > 0 for r in rows)


def test_defaults_study_smoke(tmp_path):
    """benchmarks/defaults.py --smoke on the embedded witness: rows for every sampler × schedule, the tables and
    the plot, the witness's data statistics recomputed from its config."""
    payload = load('defaults').main(['--smoke', '--out', str(tmp_path), '--schedules', 'recommended', 'native',
                                     'karras ρ=7'])
    for ext in ('md', 'json', 'png'):
        assert (tmp_path / f'defaults_study.{ext}').stat().st_size > 0
    rows = payload['rows']
    assert {(r['sampler'], r['schedule']) for r in rows} == {(s, k) for s in ('euler', 'dpmpp_2m_sde')
                                                              for k in ('recommended', 'native', 'karras ρ=7')}
    assert all(0 <= r['black'] <= 1 and 0 <= r['white'] <= 1 and len(r['uncond']) == 4 for r in rows)
    assert all('dspread_lo' in r and r['dspread_lo'] <= r['dspread_hi'] for r in rows)
    data = payload['data']['embedded']
    assert data['n'] == 2048 and 0 < data['spread'] < 0.5
    assert data['solid']['completely black']['mean'] == 0 and data['solid']['completely white']['mean'] == 1


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


def test_time_to_error_smoke(tmp_path, capsys):
    """benchmarks/time_to_error.py --smoke: each usage error is reached without importing torch."""
    load('time_to_error').main(['--smoke', '--out', str(tmp_path)])
    saved = json.loads((tmp_path / 'time_to_error.json').read_text())
    rows = saved['rows']
    assert '--steps 0' in rows and all(not r['after']['torch'] for r in rows.values())
    assert rows['--steps 0']['after']['message'].startswith('error: steps (--steps)')
    assert '|---|' in capsys.readouterr().out


@pytest.mark.parametrize('part', ['a', 'c'])
def test_train_sdxl_smoke(part, tmp_path, capsys):
    """``python -m benchmarks.train_sdxl --part a|c --smoke``: the trainer-overhead table and the ε → v run."""
    from accelerate.state import AcceleratorState, GradientState
    res = load('train_sdxl').main(['--part', part, '--smoke', '--work', str(tmp_path / 'work'),
                                    '--out', str(tmp_path)])
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    assert (tmp_path / f'train_sdxl_{part}.md').is_file()
    if part == 'a':
        assert set(res['a']['seconds']) == {'trainer', 'bare', 'bare+ema'} and res['a']['ratio_vs_bare'] > 0
    else:
        assert res['c']['steps'] == 2 and set(res['c']['cli_brightness']) == {'completely black', 'completely white'}


def test_every_benchmark_entry_point_has_a_smoke_run():
    """Each ``python -m benchmarks.NAME`` is smoke-run by a test of this folder (its name beside '--smoke')."""
    from pathlib import Path
    root = Path(__file__).resolve().parents[2] / 'benchmarks'
    entry = {p.stem for p in root.glob('*.py') if "if __name__ == '__main__'" in p.read_text()}
    tests = '\n'.join(p.read_text() for p in Path(__file__).parent.glob('test_*.py'))
    smoked = {name for name in entry if f"'{name}'" in tests or f'benchmarks.{name}' in tests}
    assert len(entry) >= 8 and '--smoke' in tests and smoked == entry


def test_quantize_timesteps_smoke(tmp_path, capsys):
    """benchmarks/quantize_timesteps.py --smoke on the embedded model: both settings measured per sampler/task."""
    quantize_timesteps = load('quantize_timesteps')
    payload = quantize_timesteps.main(['--smoke', '--out', str(tmp_path)])
    rows = payload['rows']
    assert {r['quantize'] for r in rows} == {False, True} and len({r['sampler'] for r in rows}) == 2
    assert all(0 <= r['rel_diff_mean'] <= r['rel_diff_max'] for r in rows)
    assert '|---|' in (tmp_path / 'quantize_timesteps.md').read_text() and '|---|' in capsys.readouterr().out
    saved = str(tmp_path / 'quantize_timesteps.json')
    merged = quantize_timesteps.main(['--merge', saved, saved, '--out', str(tmp_path / 'merged')])
    assert merged['rows'] == rows + rows and 'Merged from 2 runs' in merged['head']
