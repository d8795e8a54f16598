"""kdiff_ztsnr.progress: bars and phase lines drawn on a terminal only, status lines everywhere, and --quiet or a
rank other than 0 silencing all of them."""

import io
import sys

import pytest

from kdiff_ztsnr import progress


class Terminal(io.StringIO):
    """A stderr that says it is a terminal (where tqdm draws)."""

    def isatty(self) -> bool:
        return True


def on_terminal(monkeypatch) -> Terminal:
    """A fresh terminal as sys.stderr, rank 0, not quiet (restored after the test). Called in the test itself:
    pytest's capture sets sys.stderr again between a fixture's setup and the test."""
    for name in ('RANK', 'LOCAL_RANK'):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(progress, '_QUIET', False)
    term = Terminal()
    monkeypatch.setattr(sys, 'stderr', term)
    return term


@pytest.mark.parametrize('env, main', [({}, True), ({'RANK': '0'}, True), ({'RANK': '1'}, False),
                                       ({'LOCAL_RANK': '2'}, False), ({'RANK': '0', 'LOCAL_RANK': '3'}, True),
                                       ({'RANK': ''}, True)])
def test_main_process_is_rank_zero(monkeypatch, env, main):
    for name in ('RANK', 'LOCAL_RANK'):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert progress.is_main_process() is main
    monkeypatch.setattr(progress, '_QUIET', False)
    assert progress.enabled() is main and progress.enabled(disable=True) is False


def test_set_quiet_silences_and_unsilences(monkeypatch):
    stderr = on_terminal(monkeypatch)
    progress.set_quiet(True)
    assert not progress.enabled() and not progress.enabled(disable=False)
    progress.status('hidden')
    progress.set_quiet(False)
    assert progress.enabled()
    progress.status('shown: /tmp/x.png')
    assert stderr.getvalue() == 'shown: /tmp/x.png\n'


def test_bar_draws_in_the_package_style_on_a_terminal(monkeypatch):
    stderr = on_terminal(monkeypatch)
    assert list(progress.bar(range(3), desc='sampling (euler)', unit='step')) == [0, 1, 2]
    drawn = stderr.getvalue()
    assert 'sampling (euler): 100%|' in drawn and '| 3/3 [' in drawn and 'step/s' in drawn


@pytest.mark.parametrize('how', ['quiet', 'rank', 'disable'])
def test_bar_is_a_no_op_when_silenced(monkeypatch, how):
    stderr = on_terminal(monkeypatch)
    if how == 'quiet':
        progress.set_quiet(True)
    if how == 'rank':
        monkeypatch.setenv('RANK', '1')
    with progress.bar(total=4, desc='images', disable=how == 'disable') as b:
        b.update(4)
    assert b.disable and stderr.getvalue() == ''
    assert list(progress.bar(['a', 'b'], disable=how == 'disable')) == ['a', 'b']   # still iterates
    progress.set_quiet(False)


def test_bar_not_drawn_when_stderr_is_not_a_terminal(monkeypatch):
    monkeypatch.setattr(progress, '_QUIET', False)
    monkeypatch.delenv('RANK', raising=False)
    monkeypatch.delenv('LOCAL_RANK', raising=False)
    pipe = io.StringIO()
    monkeypatch.setattr(sys, 'stderr', pipe)
    assert list(progress.bar(range(2), desc='x')) == [0, 1] and pipe.getvalue() == ''
    progress.status('still printed')
    assert pipe.getvalue() == 'still printed\n'


def test_phase_says_start_and_done_on_a_terminal_only(monkeypatch):
    stderr = on_terminal(monkeypatch)
    with progress.phase('loading model'):
        pass
    start, done = stderr.getvalue().split('\r')
    assert start == 'loading model …' and done.startswith('loading model: done in ') and done.endswith(' s\n')
    float(done.split('done in ')[1][:-3])
    pipe = io.StringIO()
    monkeypatch.setattr(sys, 'stderr', pipe)
    with progress.phase('loading model'):
        pass
    assert pipe.getvalue() == ''
    monkeypatch.setattr(sys, 'stderr', stderr)
    progress.set_quiet(True)
    with progress.phase('quiet'):
        pass
    assert 'quiet' not in stderr.getvalue()
    progress.set_quiet(False)
