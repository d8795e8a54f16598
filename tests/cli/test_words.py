"""`cli.words`: library parameters (and their values, as Python writes them) in the command line's words, from
one table that the parser really accepts."""

import pytest

from kdiff_ztsnr.cli import build_parser
from kdiff_ztsnr.cli.words import FLAGS, VALUES, option_name, said
from kdiff_ztsnr.errors import ParamError, ParamFileError
from kdiff_ztsnr.generation.params import FIELDS


def accepted() -> dict:
    """Every sub-command's option strings (and positional dests), by sub-command."""
    commands = build_parser().commands
    return {name: {o for a in p._actions for o in a.option_strings or [a.dest]} for name, p in commands.items()}


def test_a_field_is_named_by_its_key_and_option():
    assert option_name('steps', None) == 'steps (--steps)'
    assert option_name('noise_schedule', None) == 'noise_schedule (--schedule)'
    assert option_name('loras', None) == 'loras (--lora FILE[:WEIGHT])'
    assert option_name('device', None) == '--device'                 # not a metadata key: the option alone


def test_a_value_is_said_as_the_option_takes_it():
    assert option_name('steps', '0') == '--steps 0'
    assert option_name('prediction_type', "'eps'") == '--prediction eps'
    assert option_name('zero_terminal_snr', 'True') == '--ztsnr-table on'
    assert option_name('zero_terminal_snr', 'False') == '--ztsnr-table off'
    assert option_name('limits', 'False') == '--no-size-limit'         # a switch: the flag alone
    assert option_name('loras', "'a.safetensors'") == '--lora a.safetensors'
    assert option_name('not_a_parameter', None) == 'not_a_parameter'


def test_said_spells_param_errors_and_leaves_other_errors_alone():
    assert said(ParamError('{steps} must be an integer in [1, 10000], got 0')) == \
        'steps (--steps) must be an integer in [1, 10000], got 0'
    assert said(ParamFileError("{config_dir='x'}: not a directory")) == '--config x: not a directory'
    assert said(ValueError('{steps} stays as written')) == '{steps} stays as written'
    assert said(OSError('disk full')) == 'disk full'


def test_every_field_has_a_flag_the_sample_command_accepts():
    sample = accepted()['sample']
    assert set(FIELDS) <= set(FLAGS)
    for key in FIELDS:
        flag = FLAGS[key]
        if flag.isupper():                                             # a positional argument: PROMPT
            assert flag.lower() in sample, key
        else:
            assert set(flag.split()[0].split('/')) <= sample, (key, flag)


@pytest.mark.parametrize('param', sorted(set(FLAGS) - set(FIELDS)))
def test_every_other_flag_is_an_option_of_some_command(param):
    flag = FLAGS[param].split()[0]
    assert any(flag in options for options in accepted().values()), (param, flag)


def test_value_words_belong_to_known_parameters():
    assert set(VALUES) <= set(FLAGS)
    assert all(isinstance(word, str) for words in VALUES.values() for word in words.values())
