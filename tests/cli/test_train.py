"""`cli.train`: the train command's options are checked before any dataset or model work, each refusal naming
the option (or the config file) and what would be valid; a valid run trains and leaves its checkpoint."""

import argparse
import json

import pytest

from kdiff_ztsnr.cli.options import add_train_args
from kdiff_ztsnr.cli.train import train_from_args
from tests.helpers import tiny_train_config


def args_of(*argv) -> argparse.Namespace:
    return add_train_args(argparse.ArgumentParser()).parse_args([str(a) for a in argv])


@pytest.mark.parametrize('argv,words', [
    ((), 'give --config, --resume, or both'),
    (('--resume', 'r', '--overwrite'), '--resume and --overwrite exclude each other'),
    (('--resume', 'r', '--trust-code'), '--trust-code applies to the --config file'),
])
def test_option_combinations_refused(argv, words):
    with pytest.raises(ValueError, match=words):
        train_from_args(args_of(*argv))


def test_a_missing_config_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r'--config .*nope\.json: no such file'):
        train_from_args(args_of('--config', tmp_path / 'nope.json'))


def test_code_in_a_config_needs_trust_code(tmp_path):
    cfg = tmp_path / 'c.json'
    config = tiny_train_config(tmp_path)
    config['model'] = {'type': 'module', 'target': 'os.system'}
    cfg.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="refused model.target 'os.system'"):
        train_from_args(args_of('--config', cfg, '--out-dir', tmp_path / 'run'))
    assert not (tmp_path / 'run').exists()                       # refused before any work


def test_overrides_are_validated_and_out_dir_required(tmp_path):
    cfg = tmp_path / 'c.json'
    config = tiny_train_config(tmp_path)
    config['training']['out_dir'] = ''
    cfg.write_text(json.dumps(config))
    with pytest.raises(ValueError, match='training.steps'):
        train_from_args(args_of('--config', cfg, '--steps', 0))
    with pytest.raises(ValueError, match='training.out_dir is not set'):
        train_from_args(args_of('--config', cfg))


def test_a_run_from_options(tmp_path):
    from accelerate.state import AcceleratorState, GradientState
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    cfg = tmp_path / 'c.json'
    cfg.write_text(json.dumps(tiny_train_config(tmp_path / 'unused')))
    trainer = train_from_args(args_of('--config', cfg, '--steps', 1, '--out-dir', tmp_path / 'run'))
    assert trainer.step == 1 and any((tmp_path / 'run').rglob('model.safetensors'))
    assert not (tmp_path / 'unused' / 'checkpoint-00000002').exists()     # the options override the config
