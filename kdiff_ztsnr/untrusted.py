"""Helpers for input that comes from files (checkpoints, PNGs, configs): every such file is treated as hostile.

``printable`` escapes a string before it reaches a terminal (errors, warnings, ``inspect``); ``regular_file``
refuses what is not a regular file (a FIFO would block ``open`` forever, a device reads without end) before
anything opens it.
"""

import json
import os
import stat
import unicodedata
from pathlib import Path
from typing import Union

_NAMED = {'\n': '\\n', '\r': '\\r', '\t': '\\t'}


def _escape(c: str) -> str:
    if c in _NAMED:
        return _NAMED[c]
    if ord(c) <= 0xFFFF:
        return f'\\u{ord(c):04x}'
    high, low = divmod(ord(c) - 0x10000, 0x400)              # a UTF-16 surrogate pair, as JSON writes it
    return f'\\u{0xD800 + high:04x}\\u{0xDC00 + low:04x}'


def printable(text) -> str:
    """str(text) with every character a terminal could act on escaped: C0/C1 controls (ESC, CSI U+009B, …),
    newlines, bidi overrides and isolates (U+202A–202E, U+2066–2069) and other format / unassigned / private
    characters, as JSON-style ``\\n`` / ``\\uXXXX`` (so escaped JSON stays valid JSON). Spaces are kept."""
    text = str(text)
    if text.isprintable():                   # the common case: nothing to escape
        return text
    return ''.join(c if c.isprintable() or unicodedata.category(c) == 'Zs' else _escape(c) for c in text)


def regular_file(path: Union[str, os.PathLike], what: str = 'file') -> Path:
    """path, if it is a regular file (symlinks followed); else FileNotFoundError / ValueError naming it —
    checked with os.stat before any open, so a FIFO, a device or a directory is refused without blocking."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f'{path}: no such file') from None
    except OSError as e:
        raise ValueError(f'{path}: cannot read this {what} ({e.strerror})') from None
    if not stat.S_ISREG(mode):
        kind = ('a directory' if stat.S_ISDIR(mode) else 'a FIFO (named pipe)' if stat.S_ISFIFO(mode) else
                'a device' if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else 'a socket' if stat.S_ISSOCK(mode)
                else 'not a regular file')
        raise ValueError(f'{path}: is {kind}, expected a {what} (a regular file)')
    return path


MAX_JSON = 1 << 20                   # bytes of a JSON config file read from a model folder


def read_json_object(path: Union[str, os.PathLike], what: str = 'JSON config') -> dict:
    """A JSON object from a (regular, at most MAX_JSON bytes) file; anything else is one ValueError naming it."""
    path = regular_file(path, what)
    with open(path, 'rb') as f:
        data = f.read(MAX_JSON + 1)
    if len(data) > MAX_JSON:
        raise ValueError(f'{path}: a {what} of more than {MAX_JSON} bytes')
    try:
        value = json.loads(data.decode('utf-8'))
    except (ValueError, RecursionError) as e:          # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f'{path}: not a valid {what} ({type(e).__name__}: {str(e)[:160]})') from None
    if not isinstance(value, dict):
        raise ValueError(f'{path}: a {what} must be a JSON object, got {type(value).__name__}')
    return value


def check_folder_files(root: Union[str, os.PathLike], depth: int = 2, limit: int = 10_000) -> None:
    """Refuse a folder holding a FIFO, device or socket (followed symlinks included) within depth levels, before
    a library opens its files (diffusers / transformers would block on a FIFO)."""
    todo, seen = [(Path(root), 0)], 0
    while todo:
        folder, level = todo.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                seen += 1
                if seen > limit:
                    raise ValueError(f'{root}: more than {limit} files in the model folder')
                try:
                    mode = os.stat(entry.path).st_mode
                except OSError:
                    continue                               # a dangling link: the library reports it if it needs it
                if stat.S_ISDIR(mode):
                    if level + 1 < depth:
                        todo.append((Path(entry.path), level + 1))
                elif not stat.S_ISREG(mode):
                    regular_file(entry.path)               # raises, naming the kind


def torch_load_weights(path: Union[str, os.PathLike]):
    """torch.load(weights_only=True) of a regular file, without torch's pickle-protocol warning (a hostile file's
    protocol is not the user's concern: what it may hold is, and weights_only bounds that)."""
    import warnings
    import torch
    path = regular_file(path)
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='Detected pickle protocol')
        return torch.load(path, map_location='cpu', weights_only=True)
