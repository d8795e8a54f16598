"""The training state beside a checkpoint's weights: optimizer, schedulers, data position and RNGs.

Written with torch.save but holding only tensors and plain Python values (the numpy RNG state is converted),
so it is read back with ``torch.load(weights_only=True)``: a shared checkpoint cannot run code.
"""

import pickle
import random
from pathlib import Path

import numpy as np
import torch

from ..files import atomic_write
from ..untrusted import torch_load_weights


def atomic_torch_save(obj, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def safe_torch_load(path: Path) -> dict:
    """A state file through torch.load(weights_only=True); anything else is one ValueError naming the file."""
    if not Path(path).is_file():
        raise FileNotFoundError(f'{path}: no such file (an incomplete checkpoint?)')
    try:
        state = torch_load_weights(path)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise ValueError(f'{path}: not a safe training-state file (only tensors and plain values are loaded; '
                         f'{type(e).__name__}: {str(e)[:200]})') from None
    if not isinstance(state, dict):
        raise ValueError(f'{path}: a training-state file holds a dict, got {type(state).__name__}')
    return state


def rng_state() -> dict:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {'python': random.getstate(), 'numpy': [name, torch.from_numpy(keys.astype(np.int64)), int(pos),
                                                   int(has_gauss), float(gauss)],
             'torch': torch.get_rng_state()}
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, gauss = state['numpy']
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])
