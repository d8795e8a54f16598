"""How a command ends: `run_command` turns a user error (ValueError, OSError) into one ``error: …`` line and exit
status 2, SIGINT / SIGTERM (`Terminated`) into one line and 130 / 143, with no traceback; `show_warning` prints
a warning as one escaped line.
"""

import signal
import sys
from typing import Callable

from ..untrusted import printable


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like KeyboardInterrupt for SIGINT (unwinds: temporary files go)."""


def _terminate(signum, frame):
    raise Terminated()


def run_command(name: str, command: Callable[[], int], say: Callable[[Exception], str] = str) -> int:
    """Run a command as the CLI does: a user error (ValueError, OSError) is one ``error:`` line (its message as
    `say` words it, escaped) and exit 2; SIGINT / SIGTERM one line and exit 130 / 143, no traceback."""
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return command()
    except (ValueError, OSError) as e:       # user errors (CheckpointError is a ValueError): one line
        print(f'error: {printable(say(e))}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f'interrupted (SIGINT): {name} stopped', file=sys.stderr)
        return 130
    except Terminated:
        print(f'terminated (SIGTERM): {name} stopped', file=sys.stderr)
        return 143
    finally:
        signal.signal(signal.SIGTERM, previous)


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings on the command line: one escaped line (their text may quote a file's content)."""
    print(f'warning: {printable(message)}', file=sys.stderr if file is None else file)
