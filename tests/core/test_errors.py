"""Library errors name parameters; the command line says them as its options, from one table (cli.words.FLAGS)."""

import ast
from pathlib import Path

import pytest

from kdiff_ztsnr import cli
from kdiff_ztsnr.cli import words
from kdiff_ztsnr.errors import PLACE, ParamError, ParamFileError, quote, spell

PACKAGE = Path(__file__).resolve().parents[2] / 'kdiff_ztsnr'
FRONT_END = 'cli'                              # kdiff_ztsnr/cli/: the command line's modules say flags
ERRORS = {'ValueError', 'FileNotFoundError', 'OSError', 'ParamError', 'ParamFileError', 'ParamOSError',
          'CheckpointError'}


def test_python_and_command_line_spellings():
    e = ParamError("{prediction_type='eps'}: v only; pass {zero_terminal_snr=True}, not {steps} or " + quote('{x}'))
    assert str(e) == "prediction_type='eps': v only; pass zero_terminal_snr=True, not steps or {x}"
    assert e.spell(words.option_name) == '--prediction eps: v only; pass --ztsnr-table on, not steps (--steps) or {x}'
    assert isinstance(ParamFileError('{config_dir}'), FileNotFoundError) and isinstance(e, ValueError)
    assert spell('{{out} {out}') == '{out} out'


def error_messages():
    """(file, line, the constant text) of every error raised in a library module."""
    for path in sorted(PACKAGE.rglob('*.py')):
        if path.relative_to(PACKAGE).parts[0] == FRONT_END:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and node.exc.args and \
                    getattr(node.exc.func, 'id', None) in ERRORS:
                parts = [n.value for n in ast.walk(node.exc.args[0])
                         if isinstance(n, ast.Constant) and isinstance(n.value, str)]
                yield path.relative_to(PACKAGE), node.lineno, ''.join(parts)


def test_the_walk_finds_the_library_errors():
    found = list(error_messages())
    assert len(found) > 50 and any("{prediction_type=" in text for _, _, text in found)


def test_library_errors_spell_no_command_line_option():
    flags = [(f, n, t) for f, n, t in error_messages() if any(w.startswith('--') for w in t.split())]
    assert not flags


def test_every_named_parameter_has_an_option():
    named = {m.group(1) for _, _, t in error_messages() for m in PLACE.finditer(t) if m.group(1)}
    assert named and named <= set(words.FLAGS)


def test_load_errors_name_parameters(tmp_path):
    from kdiff_ztsnr.generation.lookup import load_pipeline
    with pytest.raises(ParamError) as e:
        load_pipeline('embedded', prediction_type='epsilon')
    assert str(e.value).startswith("prediction_type='epsilon': ") and '--' not in str(e.value)
    assert e.value.spell(words.option_name).startswith('--prediction epsilon: ')
    with pytest.raises(FileNotFoundError) as e:
        load_pipeline('embedded', config_dir=tmp_path / 'none')
    assert str(e.value).startswith(f"config_dir={tmp_path / 'none'}: not a directory")


def test_cli_says_options(tmp_path, capsys):
    assert cli.main(['sample', 'x', '--out', str(tmp_path), '--steps', '0']) == 2
    assert capsys.readouterr().err.startswith('error: steps (--steps) must be an integer in [1, 10000], got 0')
    assert cli.main(['sample', 'x', '--out', str(tmp_path), '--prediction', 'eps']) == 2
    assert capsys.readouterr().err.startswith("error: --prediction eps: kdiff-ztsnr samples v-prediction")
