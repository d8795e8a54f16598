"""kdiff_ztsnr.training.checkpoint: the training state file (tensors and plain values only, read with
weights_only) and the RNG state it carries."""

import datetime
import random

import numpy as np
import pytest
import torch

from kdiff_ztsnr.training.checkpoint import atomic_torch_save, rng_state, safe_torch_load, set_rng_state


def draws() -> tuple:
    return random.random(), float(np.random.rand()), float(np.random.randn()), torch.rand(3).tolist()


def test_state_round_trip(tmp_path):
    state = {'step': 5, 'opt': {'lr': 1e-3, 'exp_avg': torch.arange(4.)}, 'order': [3, 1, 2], 'name': 'run'}
    atomic_torch_save(state, tmp_path / 'state.pt')
    back = safe_torch_load(tmp_path / 'state.pt')
    assert back['step'] == 5 and back['order'] == [3, 1, 2] and back['name'] == 'run'
    assert torch.equal(back['opt']['exp_avg'], torch.arange(4.))
    assert [p.name for p in tmp_path.iterdir()] == ['state.pt']          # no temporary left


def test_rng_state_restores_every_generator(tmp_path):
    random.seed(1)
    np.random.seed(1)
    np.random.randn()                     # numpy keeps a cached gaussian: part of the state
    torch.manual_seed(1)
    atomic_torch_save({'rng': rng_state()}, tmp_path / 'state.pt')
    expected = draws()
    draws()
    set_rng_state(safe_torch_load(tmp_path / 'state.pt')['rng'])
    assert draws() == expected


def test_unsafe_or_wrong_files_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r'state\.pt: no such file'):
        safe_torch_load(tmp_path / 'state.pt')
    torch.save({'when': datetime.date(2020, 1, 1)}, tmp_path / 'object.pt')   # needs code to unpickle
    with pytest.raises(ValueError, match=r'object\.pt: not a safe training-state file'):
        safe_torch_load(tmp_path / 'object.pt')
    (tmp_path / 'junk.pt').write_bytes(b'not a torch file')
    with pytest.raises(ValueError, match=r'junk\.pt: not a safe training-state file'):
        safe_torch_load(tmp_path / 'junk.pt')
    torch.save([1, 2], tmp_path / 'list.pt')
    with pytest.raises(ValueError, match=r'list\.pt: a training-state file holds a dict, got list'):
        safe_torch_load(tmp_path / 'list.pt')
