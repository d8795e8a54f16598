"""kdiff_ztsnr.files: atomic writes and safetensors weights, every failure naming the file."""

import pytest
import torch
from torch import nn

from kdiff_ztsnr.files import atomic_write, load_safetensors, load_weights, save_weights


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    path = tmp_path / 'a.txt'
    atomic_write(path, lambda tmp: tmp.write_text('first'))
    atomic_write(path, lambda tmp: tmp.write_text('second'))
    assert path.read_text() == 'second'
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith('.')) == ['a.txt']

    def broken(tmp):
        tmp.write_text('half')
        raise OSError('disk full')
    with pytest.raises(OSError, match='disk full'):
        atomic_write(path, broken)
    assert path.read_text() == 'second'                       # the old file is intact


def test_weights_round_trip_bit_exactly(tmp_path):
    torch.manual_seed(0)
    a, b = nn.Linear(3, 4), nn.Linear(3, 4)
    save_weights(a, tmp_path / 'w.safetensors', {'step': 7})
    load_weights(b, tmp_path / 'w.safetensors')
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert set(load_safetensors(tmp_path / 'w.safetensors')) == {'weight', 'bias'}


def test_failures_name_the_file(tmp_path):
    save_weights(nn.Linear(3, 4), tmp_path / 'w.safetensors', {})
    with pytest.raises(ValueError, match='w.safetensors: weights do not fit'):
        load_weights(nn.Linear(3, 5), tmp_path / 'w.safetensors')
    data = (tmp_path / 'w.safetensors').read_bytes()
    (tmp_path / 'short.safetensors').write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match='short.safetensors: not a valid .safetensors file'):
        load_safetensors(tmp_path / 'short.safetensors')
    with pytest.raises(FileNotFoundError, match='none.safetensors: no such file'):
        load_safetensors(tmp_path / 'none.safetensors')
