"""Files the package writes and reads: atomic writes (a temporary name, flushed to disk, then renamed into
place) and safetensors weights, every failure naming the file."""

import os
from pathlib import Path
from typing import Callable, Union

from safetensors.torch import load_file, save_file
from torch import nn

PathLike = Union[str, os.PathLike]


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """write(tmp) to a temporary sibling, fsync it, then os.replace it onto path (never a half-written path)."""
    path = Path(path)
    tmp = path.with_name(f'.{path.name}.tmp{os.getpid()}')
    write(tmp)
    with open(tmp, 'rb+') as f:
        os.fsync(f.fileno())
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)                   # as any file the user creates (safetensors writes 0600)
    os.replace(tmp, path)


def save_weights(module: nn.Module, path: Path, metadata: dict) -> None:
    """A module's state dict as safetensors (contiguous CPU copies), string metadata, atomically."""
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={k: str(v) for k, v in metadata.items()}))


def load_safetensors(path: PathLike) -> dict:
    """A safetensors file's tensors; a missing, truncated or corrupt file is one ValueError naming it."""
    if not Path(path).is_file():
        raise FileNotFoundError(f'{path}: no such file')
    try:
        return load_file(str(path))
    except Exception as e:                       # SafetensorError, or OSError from a short read
        raise ValueError(f'{path}: not a readable .safetensors file (truncated or corrupt: {str(e)[:200]})') from None


def load_weights(module: nn.Module, path: PathLike) -> None:
    """load_state_dict from a safetensors file; a file that does not fit the module names the file."""
    try:
        module.load_state_dict(load_safetensors(path))
    except RuntimeError as e:
        raise ValueError(f'{path}: weights do not fit the model of its config ({str(e)[:300]})') from None
