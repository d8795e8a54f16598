"""kdiff_ztsnr.generation.device: --device / --dtype names to torch objects (errors name the parameter and the
valid values), and CastInner running a network in its own dtype behind a float32 wrapper."""

import pytest
import torch
from torch import nn

from kdiff_ztsnr.errors import ParamError
from kdiff_ztsnr.generation import device as D

CPU = torch.device('cpu')


def test_auto_device_is_cuda_then_mps_then_cpu():
    want = 'cuda' if torch.cuda.is_available() else 'mps' if torch.backends.mps.is_available() else 'cpu'
    assert D.resolve_device('auto').type == want
    assert D.resolve_device(None) == D.resolve_device('') == D.resolve_device(' AUTO ') == D.resolve_device()


def test_named_devices():
    assert D.resolve_device('cpu') == D.resolve_device(' CPU ') == CPU
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for name in ('cuda', 'cuda:0', f'cuda:{n}'):
        index = int(name.partition(':')[2] or 0)
        if index < n:
            assert D.resolve_device(name) == torch.device('cuda', index)
        else:
            have = f'{n} CUDA device(s): cuda:0..cuda:{n - 1}' if n else 'no CUDA device'
            with pytest.raises(ParamError, match=f"^device='{name}': this machine has {have}; use auto or cpu$"):
                D.resolve_device(name)
    if not torch.backends.mps.is_available():
        with pytest.raises(ParamError, match="^device='mps': MPS is not available"):
            D.resolve_device('mps')


@pytest.mark.parametrize('name', ['tpu', 'cuda:x', 'cuda0', 'gpu'])
def test_unknown_device_names_the_choices(name):
    with pytest.raises(ParamError) as e:
        D.resolve_device(name)
    assert str(e.value) == f"unknown device '{name}'; choose from auto, cpu, cuda, cuda:N, mps"
    assert e.value.spell(lambda p, v: f'--{p}') == f"unknown --device '{name}'; choose from auto, cpu, cuda, " \
                                                  f"cuda:N, mps"                   # a front end's spelling


def test_dtypes_and_aliases():
    assert D.resolve_dtype('auto', CPU) == D.resolve_dtype(None, CPU) == torch.float32
    assert D.resolve_dtype('auto', torch.device('cuda')) == D.resolve_dtype('auto', 'cuda:1') == torch.float16
    for name, dtype in D.DTYPES.items():
        assert D.resolve_dtype(name, CPU) == D.resolve_dtype(f' {name.upper()} ', CPU) == dtype
        assert D.dtype_name(dtype) == name                                           # the name round-trips
    for alias, name in D.ALIASES.items():
        assert D.resolve_dtype(alias, CPU) == D.DTYPES[name]
    assert D.dtype_name(torch.float64) == 'torch.float64'


def test_unknown_dtype_names_the_parameter_and_the_choices():
    with pytest.raises(ParamError, match=r"^dtype='fp8': choose from auto, fp32, fp16, bf16$"):
        D.resolve_dtype('fp8', CPU)
    with pytest.raises(ParamError, match=r"^vae_dtype='int8': choose from auto, fp32, fp16, bf16$"):
        D.resolve_dtype('int8', CPU, what='vae_dtype')


class Recorder(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.5))
        self.seen = None

    def forward(self, x, t, *, shift):
        self.seen = x.dtype
        return x * self.scale + t + shift


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16, torch.float32])
def test_cast_inner_runs_in_the_parameters_dtype_and_returns_float32(dtype):
    inner = Recorder().to(dtype)
    x = torch.linspace(-3, 3, 12).view(3, 4)
    out = D.CastInner(inner)(x, torch.tensor(0.25, dtype=dtype), shift=torch.tensor(1., dtype=dtype))
    assert inner.seen == dtype and out.dtype == torch.float32
    assert torch.equal(out, (x.to(dtype) * inner.scale + 0.25 + 1).float())        # args and kwargs passed on
