"""Count host synchronisations on the CPU, as if every tensor not made on the host lived on an accelerator.

A `TorchFunctionMode` tracks which tensors are host tensors: made from Python numbers or CPU generators with no
device argument, from host tensors only, or by `.cpu()` / `.to('cpu')`; every other tensor (model weights,
buffers, whatever derives from them or is created with `device=`) counts as a device tensor, as PyTorch would
place it on a GPU. It counts, by the code that asked:

* reads of a device tensor's value into Python (`item`, `bool`, `float`, `int`, `tolist`, `numpy`, formatting,
  `.cpu()`, data-dependent shapes: `nonzero`, boolean-mask indexing, `unique`, `masked_select`), and
* copies of a host tensor to the device (`.to(device)`, `.to(tensor)`): pageable host→device copies wait too,
* 'mixed devices': a non-scalar host tensor in an op with a device tensor, which fails on a GPU (only 0-d CPU
  tensors may join a device op, as scalars).

Each event is attributed to the innermost frame of the package, k-diffusion or torchsde on the stack. Syncs
inside torch's C++ kernels are invisible to it (none of the ops used per sampling step makes one).
"""

import collections
import sys
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree
from torch.utils.weak import WeakIdKeyDictionary

READS = {'item', '__bool__', '__float__', '__int__', '__index__', '__complex__', '__format__', 'tolist', 'numpy',
         '__array__', 'cpu', 'nonzero', 'argwhere', 'masked_select', 'unique', 'unique_consecutive', 'bincount'}
PLACEMENT_FREE = {'to', 'cpu', 'copy_', '__getitem__', '__setitem__', 'index_put_', 'new_tensor', 'as_tensor',
                  'tensor', '__get__', '__set__'}
ORIGINS = {'kdiff_ztsnr': 'package', 'k_diffusion': 'k_diffusion', 'torchsde': 'torchsde'}


def origin() -> tuple[str, str]:
    """The innermost package / k-diffusion / torchsde frame on the stack: (its origin, file:line)."""
    f = sys._getframe(2)
    while f is not None:
        parts = Path(f.f_code.co_filename).parts
        for folder, name in ORIGINS.items():
            if folder in parts:
                return name, f'{"/".join(parts[parts.index(folder):])}:{f.f_lineno}'
        f = f.f_back
    return 'other', '?'


def _is_host_device(d) -> bool:
    return isinstance(d, str) and d.split(':')[0] == 'cpu'


class SyncCounter(TorchFunctionMode):
    """Counts device→host reads and host→device copies (see the module docstring) per origin and kind."""

    def __init__(self):
        super().__init__()
        self.host = WeakIdKeyDictionary()
        self.counts = collections.Counter()      # (origin, what) -> n
        self.sites = collections.Counter()       # (origin, what, file:line) -> n

    def is_host(self, t) -> bool:
        return t in self.host

    def count(self, what: str) -> None:
        o, site = origin()
        self.counts[o, what] += 1
        self.sites[o, what, site] += 1

    def by_origin(self) -> collections.Counter:
        out = collections.Counter()
        for (o, _), n in self.counts.items():
            out[o] += n
        return out

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, '__name__', '')
        tensors = [t for t in _pytree.tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        device_in = [t for t in tensors if not self.is_host(t)]
        out = func(*args, **kwargs)
        if device_in and name not in PLACEMENT_FREE and any(self.is_host(t) and t.ndim for t in tensors):
            self.count('mixed devices')            # a non-scalar host tensor in a device op: an error on a GPU
        if name in READS and device_in and tensors and tensors[0] is device_in[0]:
            self.count(name)
        elif name == '__getitem__' and device_in and any(t.dtype == torch.bool for t in tensors[1:]):
            self.count('boolean index')
        host_out = self.host_output(name, args, kwargs, tensors, device_in)
        if name in ('tensor', 'as_tensor') and not device_in and not host_out:
            self.count('host→device copy')
        if name == 'to' and tensors and self.is_host(tensors[0]) and not host_out:
            self.count('host→device copy')
        elif name == 'to' and device_in and tensors[0] is device_in[0] and host_out:
            self.count('to cpu')
        if tensors and out is tensors[0] and host_out != self.is_host(out):
            out = out.view_as(out)                  # a move that is a no-op on the CPU: a new tensor, as on a GPU
        for t in _pytree.tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and host_out:
                self.host[t] = True
            elif isinstance(t, torch.Tensor) and t in self.host and t is not (tensors[0] if tensors else None):
                del self.host[t]
        return out

    def host_output(self, name, args, kwargs, tensors, device_in) -> bool:
        """Whether func's outputs live on the host under the placement rules of the module docstring."""
        if name == 'cpu':
            return True
        if name == 'to':
            target = kwargs.get('device', next((a for a in args[1:] if isinstance(a, (str, torch.device, int))),
                                               None))
            other = next((a for a in args[1:] if isinstance(a, torch.Tensor)), kwargs.get('other'))
            if isinstance(other, torch.Tensor):
                return self.is_host(other)
            if target is not None and not isinstance(target, torch.dtype):
                return _is_host_device(target)
            return not device_in
        device = kwargs.get('device')
        if device is not None and not _is_host_device(device):
            return False
        return not device_in
