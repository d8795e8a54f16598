"""Files the package writes and reads: atomic writes (a temporary name, flushed to disk, then renamed into
place) and safetensors weights, every failure naming the file.

Reading treats every file as a stranger's: `SafetensorsReader(path)` refuses a non-regular file (FIFO, device,
directory) before opening it, then lets `safetensors.safe_open` validate the header (at most 100 MB, a JSON
object of entries with a known dtype, integer shape, offsets that tile the data exactly and match each
tensor's size, data covering the rest of the file). Only names, dtypes and shapes are kept, so declared shapes
can be checked against a model (`check_fits`) before anything is read; `read` fetches chosen tensors with
`get_tensor`, cast to a target dtype/device one at a time, re-opening the file every READ_CHUNK bytes so the
memory map never holds more than that many touched pages. Every refusal is one ValueError naming the file.
"""

import json
import math
import os
from pathlib import Path
from typing import Callable, Iterable, Optional, Union

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from .untrusted import regular_file

PathLike = Union[str, os.PathLike]


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """write(tmp) to a temporary sibling, fsync it, then os.replace it onto path (never a half-written path)."""
    path = Path(path)
    tmp = path.with_name(f'.{path.name}.tmp{os.getpid()}')
    try:
        write(tmp)
        with open(tmp, 'rb+') as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)               # as any file the user creates (safetensors writes 0600)
        os.replace(tmp, path)
    finally:                                        # a full disk or a signal leaves no partial temporary
        if os.path.lexists(tmp):
            os.unlink(tmp)


def save_weights(module: nn.Module, path: Path, metadata: dict) -> None:
    """A module's state dict as safetensors (contiguous CPU copies), string metadata, atomically."""
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={k: str(v) for k, v in metadata.items()}))


MAX_HEADER = 100_000_000             # safetensors' own limit on the header length
READ_CHUNK = 256 << 20               # bytes read between re-openings of the memory map
# dtypes whose tensors can be loaded into a model (cast to its dtype); others are refused by name
ST_DTYPES = {'F64': torch.float64, 'F32': torch.float32, 'F16': torch.float16, 'BF16': torch.bfloat16,
             'F8_E4M3': torch.float8_e4m3fn, 'F8_E5M2': torch.float8_e5m2, 'I64': torch.int64, 'I32': torch.int32,
             'I16': torch.int16, 'I8': torch.int8, 'U8': torch.uint8, 'BOOL': torch.bool}
DTYPE_BYTES = {name: dt.itemsize for name, dt in ST_DTYPES.items()}


def _parse_header(path: Path, size: int) -> Optional[dict]:
    """The header as JSON, only to explain a refusal the library made (its length is already bounded)."""
    try:
        with open(path, 'rb') as f:
            n = int.from_bytes(f.read(8), 'little')
            if n > min(MAX_HEADER, size - 8):
                return None
            header = json.loads(f.read(n))
        return header if isinstance(header, dict) else None
    except (ValueError, RecursionError, OSError):
        return None


def _entries(header: dict):
    for name, e in header.items():
        if name != '__metadata__' and isinstance(e, dict):
            yield name, e


def _size_mismatch(header: dict) -> Optional[str]:
    for name, e in _entries(header):
        try:
            need = math.prod(e['shape']) * DTYPE_BYTES.get(e['dtype'], 0)
            span = e['data_offsets'][1] - e['data_offsets'][0]
        except (KeyError, TypeError, IndexError):
            continue
        if e['dtype'] in DTYPE_BYTES and need != span:
            return (f'tensor {name!r}: dtype {e["dtype"]} with shape {e["shape"]} is {need} bytes, its '
                    f'data_offsets span {span} bytes (dtype/size mismatch)')
    return None


def explain(error: Exception, path: Path, size: int) -> str:
    """One line saying why safetensors refused a file, in terms of what the file declares."""
    msg = str(error)
    if 'unable to mmap' in msg:
        return f'its {size} bytes cannot be mapped into memory ({msg.partition(": ")[2][:120]})'
    with open(path, 'rb') as f:
        head = f.read(8)
    declared = int.from_bytes(head, 'little') if len(head) == 8 else None
    if 'header too small' in msg or declared is None:
        return f'{size} bytes, too short to be a .safetensors file'
    if 'header too large' in msg or declared > MAX_HEADER:
        return (f'its first 8 bytes declare a {declared}-byte header, more than safetensors\' limit of {MAX_HEADER} '
                f'bytes: not a .safetensors file')
    if declared > size - 8:
        return (f'its first 8 bytes declare a {declared}-byte header, the file has {size} bytes: truncated, or not '
                f'a .safetensors file')
    header = _parse_header(path, size) or {}
    if 'invalid shape, data type, or offset' in msg:
        return _size_mismatch(header) or f'a tensor\'s dtype, shape and data_offsets disagree ({msg[:160]})'
    if 'invalid offset' in msg:
        return (f'{msg.rpartition(": ")[2][:120]}: data_offsets reversed, overlapping or leaving a gap (each tensor '
                f'must start where the previous one ends)')
    if 'not fully covered' in msg:
        end = max((e['data_offsets'][1] for _, e in _entries(header)
                   if isinstance(e.get('data_offsets'), list) and len(e['data_offsets']) == 2
                   and isinstance(e['data_offsets'][1], int)), default=0)
        return (f'its tensors declare {end} bytes of data, the file holds {size - 8 - declared} after the header '
                f'(truncated, or not the file its header describes)')
    if 'UTF-8' in msg:
        return 'its header is not UTF-8 text (not a .safetensors file)'
    return f'invalid header ({msg.removeprefix("Error while deserializing header: ")[:200]})'


class SafetensorsReader:
    """A validated .safetensors file: ``metadata`` (str → str), ``info`` (name → (dtype, shape)), ``size``."""

    def __init__(self, path: PathLike, what: str = '.safetensors file'):
        self.path = regular_file(path, what)
        self.size = os.stat(self.path).st_size
        try:
            with safe_open(str(self.path), 'pt') as f:
                self.metadata = dict(f.metadata() or {})
                self.info = {k: (f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape())) for k in f.keys()}
        except (SafetensorError, OSError, RuntimeError) as e:      # RuntimeError: the memory map failed
            raise ValueError(f'{self.path}: not a valid .safetensors file: {explain(e, self.path, self.size)}') \
                from None
        bad = [(k, dt) for k, (dt, _) in self.info.items() if dt not in DTYPE_BYTES]
        if bad:
            raise ValueError(f'{self.path}: tensor {bad[0][0]!r} has dtype {bad[0][1]}, which kdiff-ztsnr does not '
                             f'load (supported: {", ".join(DTYPE_BYTES)})')

    @property
    def keys(self) -> list[str]:
        return list(self.info)

    def nbytes(self, key: str) -> int:
        dtype, shape = self.info[key]
        return math.prod(shape) * DTYPE_BYTES[dtype]

    def meta_tensors(self, keys: Iterable[str]) -> dict[str, Tensor]:
        """Empty meta-device tensors of the declared dtypes and shapes: checked against a model, nothing read."""
        return {k: torch.empty(self.info[k][1], dtype=ST_DTYPES[self.info[k][0]], device='meta') for k in keys}

    def read(self, keys: Iterable[str], dtype: Optional[torch.dtype] = None, device='cpu') -> dict[str, Tensor]:
        """The tensors of keys, floating ones cast to dtype (None: as stored), each moved to device as read."""
        keys, out, i = list(keys), {}, 0
        try:
            while i < len(keys):
                with safe_open(str(self.path), 'pt') as f:      # re-validated on every open
                    budget = READ_CHUNK
                    while i < len(keys) and budget > 0:
                        t = f.get_tensor(keys[i])
                        out[keys[i]] = t.to(device, dtype) if dtype is not None and t.is_floating_point() \
                            else t.to(device)
                        budget -= self.nbytes(keys[i])
                        i += 1
        except (SafetensorError, OSError, RuntimeError) as e:  # changed or unreadable since it was validated
            raise ValueError(f'{self.path}: could not read its tensors ({type(e).__name__}: {str(e)[:200]})') \
                from None
        return out

    def read_all(self) -> dict[str, Tensor]:
        return self.read(self.keys)


def load_safetensors(path: PathLike) -> dict:
    """A safetensors file's tensors, read through the safetensors library; a missing, special, truncated or
    corrupt file is one error naming it (`SafetensorsReader`)."""
    return SafetensorsReader(path).read_all()


def check_fits(module: nn.Module, reader: SafetensorsReader) -> None:
    """The file's declared names and shapes against the module's, before a byte of tensor data is read."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in reader.info]
    unexpected = [k for k in reader.info if k not in expected]
    shapes = [f'{k} {reader.info[k][1]} (config: {tuple(v.shape)})' for k, v in expected.items()
              if k in reader.info and reader.info[k][1] != tuple(v.shape)]
    parts = [f'{len(xs)} {what}: {", ".join(xs[:3])}' for what, xs in
             (('missing', missing), ('unexpected', unexpected), ('with wrong shapes', shapes)) if xs]
    if parts:
        raise ValueError(f'{reader.path}: weights do not fit the model of its config ({"; ".join(parts)})')


def load_weights(module: nn.Module, path: PathLike) -> None:
    """load_state_dict from a safetensors file, its declared shapes checked against the module first."""
    reader = SafetensorsReader(path)
    check_fits(module, reader)
    module.load_state_dict(reader.read_all())
