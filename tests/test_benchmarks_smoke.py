"""Smoke runs of every benchmark (``python benchmarks/NAME.py --smoke``), in-process: each completes and
writes its table (NAME.md, NAME.json) and plot (NAME.png) — into a temporary folder, not benchmarks/results."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / 'benchmarks'


def load(name):
    spec = importlib.util.spec_from_file_location(f'bench_{name}', BENCH / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(BENCH))
    spec.loader.exec_module(module)
    return module


@pytest.mark.filterwarnings('ignore:Should have tb')      # torchsde round-off inside k-diffusion's Brownian tree
@pytest.mark.parametrize('name', ['regimes', 'resolution', 'schedules', 'performance'])
def test_benchmark_smoke(name, tmp_path, capsys):
    payload = load(name).main(['--smoke', '--out', str(tmp_path)])
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
    from kdiff_ztsnr.oracle import brightness_dataset
    images = brightness_dataset(8, (4, 8, 8))
    sigmas = common.exact_model(lambda x, s, c: x).get_sigmas(6)
    assert common.verify_reduction(images, sampling.sample_dpmpp_2m, sigmas) < 1e-5


def test_mixture_denoiser_is_the_package_oracle():
    import torch
    common = load('common')
    from kdiff_ztsnr.oracle import brightness_dataset, optimal_denoiser
    data = brightness_dataset(8, (4, 8, 8))
    x = torch.randn(6, 4, 8, 8) * 3
    sigma = torch.tensor([0.05, 0.5, 3., 50., 4096., float('inf')])
    assert torch.allclose(common.mixture_denoiser(data, x, sigma), optimal_denoiser(data, x, sigma), atol=1e-5)


@pytest.mark.filterwarnings('ignore:Should have tb')
def test_performance_calls_and_guidance():
    perf = load('performance')
    _, rows = perf.calls_per_sampler(5)
    assert all(r[3] == 1 for r in rows)                   # exactly one extra call: the step from ∞
    _, rows = perf.guided_forwards(5, batch=2)
    assert rows[0][4] == 1 and rows[0][5] == [4]           # one batched forward per guided step
