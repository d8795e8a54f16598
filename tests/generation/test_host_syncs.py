"""The sampling loop of `generate` reads nothing back from the device and copies nothing to it per step.

Counted on the CPU with tests/syncs.py (a TorchFunctionMode that treats every tensor not made on the host as a
device tensor). Per step = the difference between two step counts, so what happens once per image (model
wrapper construction, the schedule read once, the noise moved once, the final finiteness check) is separated
from the loop.
"""

import math

import pytest
import torch

from kdiff_ztsnr import sampling as S
from kdiff_ztsnr.generation.generate import generate
from kdiff_ztsnr.generation.lookup import EMBEDDED, load_pipeline
from kdiff_ztsnr.generation.params import GenerationParams

from tests.syncs import SyncCounter

embedded = pytest.mark.skipif(not (EMBEDDED / 'ema.safetensors').is_file(), reason='embedded model not built')


@pytest.fixture(scope='module')
def pipe():
    return load_pipeline('embedded')


def counts(pipe, steps: int, **params) -> SyncCounter:
    with SyncCounter() as c:
        generate(pipe, GenerationParams(prompt='red circle, blue background', steps=steps, n_samples=2, seed=3,
                                        **params))
    return c


def per_step(pipe, **params) -> tuple[dict, SyncCounter]:
    a, b = counts(pipe, 4, **params), counts(pipe, 8, **params)
    return {k: (b.counts[k] - a.counts[k]) / 4 for k in b.counts | a.counts if b.counts[k] != a.counts[k]}, a


@embedded
@pytest.mark.parametrize('params', [{}, {'sampler': 'dpmpp_2m'}, {'sampler': 'dpmpp_2m_sde'},
                                    {'sampler': 'euler_ancestral', 'cfg_rescale': 0.7, 'regime': 'clamp'}])
def test_no_host_sync_per_step(pipe, params):
    steps, at_4 = per_step(pipe, **params)
    package = {k: v for k, v in steps.items() if k[0] == 'package'}
    assert not package, package
    assert not [k for k in at_4.counts if k[1] == 'mixed devices'], dict(at_4.counts)
    once = sum(n for (o, _), n in at_4.counts.items() if o == 'package')
    assert once <= 40, dict(at_4.counts)   # per image, not per step: 29–34, mostly wrapper construction and checks
    # What is left per step is k-diffusion's own loop: euler_ancestral's `if sigmas[i + 1] > 0` and
    # get_ancestral_step's min(); dpmpp_2m and 2m_sde run on a host schedule and read nothing.
    assert sum(steps.values()) == (2 if params.get('sampler', 'euler_ancestral') == 'euler_ancestral' else 0), steps


def test_counter_sees_each_kind_of_sync():
    """The instrument itself: each kind of read, the host→device copy and the mixed-device op are counted."""
    w = torch.nn.Linear(2, 2).weight.detach()              # made before the mode: a device tensor
    with SyncCounter() as c:
        x = w.sum()
        x.item(), bool(x > 0), float(x), w.tolist(), w.cpu(), w[w > 0], f'{x:.3g}'
        h = torch.randn(2, 2)                              # host
        y = h.to(w) + w                                    # copy, then a device op
        w + h                                              # a non-scalar host tensor in a device op
        w * torch.tensor(2.)                               # a host scalar: fine on a GPU
        h.sum().item()                                     # host read: free
    kinds = {k for (_, k) in c.counts}
    assert kinds == {'item', '__bool__', '__float__', 'tolist', 'cpu', 'boolean index', '__format__',
                     'host→device copy', 'mixed devices'}, c.counts
    assert sum(c.counts.values()) == 9 and not c.is_host(y)


def test_deferred_finiteness_check_names_the_first_bad_sigma(exact):
    """NaN at one middle step only: the error after the loop names that σ and its element count."""
    n = torch.randn(2, 4, 16, 16)
    sigmas = exact.get_sigmas(6)
    bad_sigma = sigmas[3]
    calls = []

    def model(x, sigma):
        calls.append(float(sigma[0]))
        out = exact(x, sigma)
        return out * math.nan if float(sigma[0]) == float(bad_sigma) else out
    with pytest.raises(FloatingPointError, match=f'sigma={bad_sigma.item():.6g} \\(2048 elements\\)'):
        S.sample_euler(model, n, sigmas, disable=True)
    assert len(calls) == 6                           # the loop ran to its end; the check read once, after it
