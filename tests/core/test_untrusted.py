"""kdiff_ztsnr.untrusted: text from files escaped before a terminal sees it, and only regular, bounded files read."""

import json
import os
import unicodedata

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kdiff_ztsnr import untrusted
from kdiff_ztsnr.untrusted import printable

BAD_TEXT = 'a\x1b]0;owned\x07b\x1b[31mc\nerror: forged\r\u009b2J\u202eevil\u2066x\u2069\u200b\x00\x7f\u0085'


# ------------------------------------------------------------------------------------- escaping

def test_printable_escapes_every_terminal_active_character():
    out = printable(BAD_TEXT)
    assert all(c.isprintable() for c in out) and '\n' not in out and '\x1b' not in out
    for c in ['\x1b', '\x07', '\n', '\r', '\u009b', '\u202e', '\u2066', '\u2069', '\u200b', '\x00', '\x7f']:
        assert c not in out
    for c in list(range(0x20)) + list(range(0x7f, 0xa0)) + list(range(0x202a, 0x202f)) + list(range(0x2066, 0x206a)):
        assert printable(chr(c)) != chr(c)
    assert printable('plain, 日本語 ok é') == 'plain, 日本語 ok é'


def test_printable_escapes_are_json_escapes():
    assert printable('a\nb\tc\rd') == 'a\\nb\\tc\\rd'
    assert printable('\x1b') == '\\u001b' and printable('\u202e') == '\\u202e'
    assert printable('\U000f0000') == '\\udb80\\udc00' == json.dumps('\U000f0000')[1:-1]   # private use: a pair
    assert printable('a\u00a0b\u3000c') == 'a\u00a0b\u3000c'                           # spaces (Zs) are kept
    assert printable(12) == '12'


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_printable_keeps_json_valid(s):
    """Escapes are JSON escapes: escaped JSON text reads back to the same value."""
    out = printable(json.dumps({'k': s}, ensure_ascii=False))
    assert all(c.isprintable() or unicodedata.category(c) == 'Zs' for c in out) and json.loads(out) == {'k': s}


# ------------------------------------------------------------------------------------- regular files only

def test_regular_file_accepts_files_and_links_to_them(tmp_path):
    (tmp_path / 'f.json').write_text('{}')
    (tmp_path / 'link').symlink_to(tmp_path / 'f.json')
    assert untrusted.regular_file(str(tmp_path / 'f.json')) == tmp_path / 'f.json'
    assert untrusted.regular_file(tmp_path / 'link') == tmp_path / 'link'


def test_regular_file_refuses_the_rest_naming_path_and_kind(tmp_path):
    os.mkfifo(tmp_path / 'fifo')
    (tmp_path / 'dangling').symlink_to(tmp_path / 'gone')
    with pytest.raises(FileNotFoundError, match=r'/missing: no such file$'):
        untrusted.regular_file(tmp_path / 'missing')
    with pytest.raises(FileNotFoundError, match='dangling: no such file'):
        untrusted.regular_file(tmp_path / 'dangling')
    for path, kind in [(tmp_path, 'a directory'), (tmp_path / 'fifo', r'a FIFO \(named pipe\)'),
                       ('/dev/null', 'a device')]:
        with pytest.raises(ValueError, match=f'^{path}: is {kind}, expected a LoRA file'):
            untrusted.regular_file(path, 'LoRA file')                       # a FIFO is refused, not opened


def test_read_json_object_round_trip_and_every_failure_named(tmp_path, monkeypatch):
    value = {'a': [1, 2.5, None], 'b': {'c': 'é'}}
    (tmp_path / 'ok.json').write_text(json.dumps(value))
    assert untrusted.read_json_object(tmp_path / 'ok.json') == value
    cases = {'list.json': ('[1, 2]', 'a unet config must be a JSON object, got list'),
             'bad.json': ('{"a": ', r'not a valid unet config \(JSONDecodeError: '),
             'latin1.json': (b'{"a": "\xe9"}', r'not a valid unet config \(UnicodeDecodeError: '),
             'deep.json': ('[' * 100_000 + ']' * 100_000, r'not a valid unet config \(RecursionError: ')}
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content if isinstance(content, bytes) else content.encode())
        with pytest.raises(ValueError, match=f'^{tmp_path / name}: {message}'):
            untrusted.read_json_object(tmp_path / name, 'unet config')
    monkeypatch.setattr(untrusted, 'MAX_JSON', 64)
    (tmp_path / 'big.json').write_text(json.dumps({'k': 'x' * 64}))
    with pytest.raises(ValueError, match='big.json: a JSON config of more than 64 bytes'):
        untrusted.read_json_object(tmp_path / 'big.json')
    (tmp_path / 'edge.json').write_text(json.dumps({'k': 'x' * 55}))          # exactly 64 bytes: read
    assert untrusted.read_json_object(tmp_path / 'edge.json') == {'k': 'x' * 55}


def test_check_folder_files_refuses_special_files_within_depth(tmp_path):
    (tmp_path / 'unet').mkdir()
    (tmp_path / 'unet' / 'config.json').write_text('{}')
    (tmp_path / 'dangling').symlink_to(tmp_path / 'gone')          # left to the library that needs it
    untrusted.check_folder_files(tmp_path)
    os.mkfifo(tmp_path / 'unet' / 'weights.bin')
    with pytest.raises(ValueError, match=r'unet/weights.bin: is a FIFO'):
        untrusted.check_folder_files(tmp_path)
    untrusted.check_folder_files(tmp_path, depth=1)                # unet/ is below the depth looked at
    (tmp_path / 'link').symlink_to('/dev/null')
    with pytest.raises(ValueError, match='link: is a device'):
        untrusted.check_folder_files(tmp_path, depth=1)


def test_check_folder_files_bounds_the_count(tmp_path):
    for i in range(5):
        (tmp_path / f'{i}.json').write_text('{}')
    untrusted.check_folder_files(tmp_path, limit=5)
    with pytest.raises(ValueError, match=f'^{tmp_path}: more than 4 files in the model folder'):
        untrusted.check_folder_files(tmp_path, limit=4)


def test_torch_load_weights_round_trip_and_refuses_objects(tmp_path):
    import argparse
    import pickle
    weights = {'w': torch.arange(6.).view(2, 3), 'step': 3, 'names': ['a', 'b']}
    torch.save(weights, tmp_path / 'w.pt')
    got = untrusted.torch_load_weights(tmp_path / 'w.pt')
    assert got.keys() == weights.keys() and torch.equal(got['w'], weights['w']) and got['names'] == ['a', 'b']
    torch.save({'args': argparse.Namespace(lr=1)}, tmp_path / 'object.pt')      # not plain weights
    with pytest.raises(pickle.UnpicklingError):
        untrusted.torch_load_weights(tmp_path / 'object.pt')
    os.mkfifo(tmp_path / 'fifo.pt')
    with pytest.raises(ValueError, match='fifo.pt: is a FIFO'):
        untrusted.torch_load_weights(tmp_path / 'fifo.pt')
