"""One style of progress bar for everything long (loading, sampling, the demo, latent caching, training).

tqdm bars on stderr with ETA, drawn when stderr is a terminal (as tqdm's ``disable=None``), as is the
`phase` line of a step without a count; `status` lines (a checkpoint's path) are printed everywhere.
`set_quiet(True)` (the CLI's ``--quiet``) silences all of them. Only rank 0 of a multi-process run draws
(``RANK``/``LOCAL_RANK`` from the launcher). Imports nothing heavy.
"""

import contextlib
import os
import sys
import time
from typing import Iterable, Iterator, Optional

_QUIET = False
BAR_FORMAT = '{desc}: {percentage:3.0f}%|{bar:24}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]'


def set_quiet(quiet: bool = True) -> None:
    global _QUIET
    _QUIET = bool(quiet)


def is_main_process() -> bool:
    return int(os.environ.get('RANK', os.environ.get('LOCAL_RANK', '0')) or 0) == 0


def enabled(disable: Optional[bool] = None) -> bool:
    """Whether a bar is drawn: not quiet, rank 0, and not disabled by the caller."""
    return not (_QUIET or disable or not is_main_process())


def bar(iterable: Optional[Iterable] = None, total: Optional[int] = None, desc: str = '', unit: str = 'it',
        disable: Optional[bool] = None, leave: bool = True, position: Optional[int] = None):
    """A tqdm bar in the package's style (on stderr, ETA, rate); a no-op bar when quiet or not rank 0."""
    from tqdm import tqdm
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=None if enabled(disable) else True, leave=leave,
                position=position, bar_format=BAR_FORMAT, file=sys.stderr, dynamic_ncols=True)


def status(message: str) -> None:
    """One line on stderr (what is happening, where a file went); silent when quiet or not rank 0."""
    if enabled():
        print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def phase(message: str) -> Iterator[None]:
    """`message …` then `message: done in 1.2 s` on stderr, for a step that has no count (loading a model)."""
    t, shown = time.perf_counter(), enabled() and sys.stderr.isatty()
    if shown:
        print(f'{message} …', end='\r', file=sys.stderr, flush=True)
    yield
    if shown:
        print(f'{message}: done in {time.perf_counter() - t:.1f} s', file=sys.stderr, flush=True)
