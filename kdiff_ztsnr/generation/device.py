"""Where and in what precision a pipeline runs: `--device auto|cpu|cuda[:N]|mps`, `--dtype auto|fp32|fp16|bf16`.

auto device: CUDA if available, else MPS, else CPU. auto dtype: fp16 on CUDA, fp32 elsewhere. The network runs in
the chosen dtype; the σ/noise arithmetic stays float32 (`denoisers`) and per-sample generators stay on the CPU,
so a seed gives the same starting noise on every device. fp16 and bf16 both run on CPU (torch ≥ 2.1 has the
kernels; tested on the tiny SDXL model), only slowly.
"""

import re
from typing import Optional

import torch
from torch import Tensor, nn

from ..errors import ParamError, quote

DEVICES = ('auto', 'cpu', 'cuda', 'cuda:N', 'mps')
DTYPES = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}
ALIASES = {'float32': 'fp32', 'float16': 'fp16', 'half': 'fp16', 'bfloat16': 'bf16'}


def resolve_device(name: str = 'auto') -> torch.device:
    """A torch.device for a device name, checked to exist (ParamError naming the valid values)."""
    name = (name or 'auto').strip().lower()
    if name == 'auto':
        if torch.cuda.is_available():
            return torch.device('cuda')
        return torch.device('mps' if torch.backends.mps.is_available() else 'cpu')
    if name == 'cpu':
        return torch.device('cpu')
    if name == 'mps':
        if not torch.backends.mps.is_available():
            raise ParamError("{device='mps'}: MPS is not available on this machine; use auto or cpu")
        return torch.device('mps')
    m = re.fullmatch(r'cuda(?::(\d+))?', name)
    if m is None:
        raise ParamError(f'unknown {{device}} {quote(repr(name))}; choose from {", ".join(DEVICES)}')
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(m.group(1) or 0)
    if index >= n:
        have = f'{n} CUDA device(s): cuda:0..cuda:{n - 1}' if n else 'no CUDA device'
        raise ParamError(f'{{device={quote(repr(name))}}}: this machine has {have}; use auto or cpu')
    return torch.device('cuda', index)


def resolve_dtype(name: Optional[str], device: torch.device, what: str = 'dtype') -> torch.dtype:
    """The network dtype for a dtype name on device (auto: fp16 on CUDA, fp32 elsewhere); `what` names the
    parameter in errors."""
    name = ALIASES.get((name or 'auto').strip().lower(), (name or 'auto').strip().lower())
    if name == 'auto':
        return torch.float16 if torch.device(device).type == 'cuda' else torch.float32
    if name not in DTYPES:
        raise ParamError(f'{{{what}={quote(repr(name))}}}: choose from auto, {", ".join(DTYPES)}')
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in DTYPES.items()}.get(dtype, str(dtype))


class CastInner(nn.Module):
    """An inner network run in its parameters' dtype: the float32 input is cast down, the output back up,
    so the wrapper's σ scaling stays float32 (pixel-space models; SDXL's adaptor casts by itself)."""

    def __init__(self, inner_model: nn.Module):
        super().__init__()
        self.inner_model = inner_model

    def forward(self, x_in: Tensor, *args, **kwargs) -> Tensor:
        dtype = next(self.inner_model.parameters()).dtype
        return self.inner_model(x_in.to(dtype), *args, **kwargs).float()
