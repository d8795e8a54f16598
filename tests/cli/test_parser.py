"""`cli.parser`: an unknown option gets the sub-command's usage and the nearest option, a mistyped sub-command
the nearest command and the list of commands; each as one argparse ``error:`` line and exit status 2."""

import argparse

import pytest

from kdiff_ztsnr.cli import build_parser
from kdiff_ztsnr.cli.parser import Parser, did_you_mean


def test_did_you_mean_names_the_closest_word_or_nothing():
    assert did_you_mean('--stpes', ['--steps', '--seed', '--scale']) == ' (did you mean --steps?)'
    assert did_you_mean('smaple', {'sample': 1, 'inspect': 2}) == ' (did you mean sample?)'
    assert did_you_mean('--zzzz', ['--steps', '--seed']) == ''
    assert did_you_mean('x', []) == ''


def parse_error(argv, capsys) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if 'error:' in line]
    assert len(errors) == 1, err
    return errors[0]


def test_unknown_option_gets_the_sub_commands_error_line_and_the_nearest_option(capsys):
    line = parse_error(['sample', 'x', '--stpes', '3'], capsys)
    assert line == 'kdiff-ztsnr sample: error: unrecognized arguments: --stpes 3 (did you mean --steps?)'
    line = parse_error(['train', '--config', 'c.json', '--resmue', 'r'], capsys)
    assert line == 'kdiff-ztsnr train: error: unrecognized arguments: --resmue r (did you mean --resume?)'


def test_usage_printed_is_the_sub_commands(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(['tokenize', 'a cat', '--max-chnuks', '2'])
    err = capsys.readouterr().err
    assert err.startswith('usage: kdiff-ztsnr tokenize ') and '--max-chunks' in err
    assert err.rstrip().endswith('(did you mean --max-chunks?)')


def test_extra_positional_is_refused_without_a_guess(capsys):
    assert parse_error(['sample', 'x', 'y'], capsys) == 'kdiff-ztsnr sample: error: unrecognized arguments: y'


def test_mistyped_command_names_the_nearest_and_lists_them_all(capsys):
    line = parse_error(['smaple', 'x'], capsys)
    commands = ', '.join(build_parser().commands)
    assert line == f"kdiff-ztsnr: error: unknown command 'smaple' (did you mean sample?); the commands are: {commands}"
    assert 'export-diffusers-config' in commands and 'train' in commands
    assert parse_error(['qqqq'], capsys).startswith("kdiff-ztsnr: error: unknown command 'qqqq'; the commands")


def test_a_parser_without_commands_keeps_argparse_errors(capsys):
    p = Parser(prog='tool')
    p.add_argument('--alpha', type=int)
    assert p.parse_args(['--alpha', '3']) == argparse.Namespace(alpha=3)
    with pytest.raises(SystemExit):
        p.parse_args(['--alpah', '3'])
    assert capsys.readouterr().err.splitlines()[-1] == \
        'tool: error: unrecognized arguments: --alpah 3 (did you mean --alpha?)'
    with pytest.raises(SystemExit):
        p.parse_args(['--alpha', 'x'])
    assert capsys.readouterr().err.splitlines()[-1] == "tool: error: argument --alpha: invalid int value: 'x'"
