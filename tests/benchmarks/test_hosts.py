"""Smoke run of benchmarks/hosts.py (``python -m benchmarks.hosts --smoke``): the host-clamp vs exact table."""

import importlib
import json
import math

import pytest

pytest.importorskip('diffusers')


def test_hosts_benchmark_smoke(tmp_path, capsys):
    payload = importlib.import_module('benchmarks.hosts').main(['--smoke', '--out', str(tmp_path)])
    for ext in ('md', 'json', 'png'):
        assert (tmp_path / f'hosts.{ext}').stat().st_size > 0
    assert '|---|' in capsys.readouterr().out and json.loads((tmp_path / 'hosts.json').read_text())['rows']
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
