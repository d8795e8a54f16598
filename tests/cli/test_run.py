"""`cli.run`: how a command ends. A user error is one escaped ``error:`` line and exit 2, SIGINT / SIGTERM one
line and 130 / 143 with no traceback, and the SIGTERM handler is put back afterwards."""

import os
import signal

import pytest

from kdiff_ztsnr.cli.run import Terminated, run_command, show_warning
from kdiff_ztsnr.cli.words import said
from kdiff_ztsnr.errors import ParamError


def raising(error: BaseException):
    def command() -> int:
        raise error
    return command


def test_a_param_error_is_one_line_in_the_command_lines_words(capsys):
    rc = run_command('sample', raising(ParamError('{steps} must be an integer in [1, 10000], got 0')), say=said)
    assert rc == 2
    assert capsys.readouterr().err == 'error: steps (--steps) must be an integer in [1, 10000], got 0\n'


def test_without_say_the_message_is_the_pythons(capsys):
    assert run_command('sample', raising(ParamError('{steps} bad'))) == 2
    assert capsys.readouterr().err == 'error: steps bad\n'


def test_os_errors_are_user_errors_and_their_text_is_escaped(capsys):
    assert run_command('inspect', raising(FileNotFoundError('x.png: no such file\x1b[2J\nnext'))) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: x.png: no such file') and err.count('\n') == 1 and '\x1b' not in err


def test_a_command_returns_its_own_status(capsys):
    assert run_command('demo', lambda: 0) == 0 and run_command('demo', lambda: 3) == 3
    assert capsys.readouterr().err == ''


def test_interrupt_and_terminate_are_one_line_each(capsys):
    assert run_command('train', raising(KeyboardInterrupt())) == 130
    assert capsys.readouterr().err == 'interrupted (SIGINT): train stopped\n'
    assert run_command('train', raising(Terminated())) == 143
    assert capsys.readouterr().err == 'terminated (SIGTERM): train stopped\n'


def test_sigterm_unwinds_the_command_and_the_handler_is_restored(capsys):
    unwound = []

    def command() -> int:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            return 0
        finally:
            unwound.append(True)

    before = signal.getsignal(signal.SIGTERM)
    assert run_command('sample', command) == 143
    assert unwound == [True] and signal.getsignal(signal.SIGTERM) is before
    assert capsys.readouterr().err == 'terminated (SIGTERM): sample stopped\n'


def test_other_errors_are_not_swallowed():
    with pytest.raises(RuntimeError, match='a bug'):
        run_command('sample', raising(RuntimeError('a bug')))


def test_a_warning_is_one_escaped_line(capsys):
    show_warning(UserWarning('bad\x1b[31m value\nsecond line'), UserWarning, 'f.py', 1)
    err = capsys.readouterr().err
    assert err.startswith('warning: bad') and err.count('\n') == 1 and '\x1b' not in err
