"""Bad training input and faults: config keys against the schema, out_dir rules, safe resume, datasets that
cannot train. Each user error is one `error: …` line (exit 2) before a Trainer is built, or works correctly."""

import json
import os
import pickle
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from kdiff_ztsnr import cli
from kdiff_ztsnr.training import runs, trainer as trainer_module
from kdiff_ztsnr.training.schema import SCHEMA, validate_config
from kdiff_ztsnr.training.data.synthetic import make_synthetic_dataset
from tests.helpers import train_tiny_checkpoint
from tests.training.test_training import tiny_config
from tests.cli.test_validation import expect_error

pytestmark = pytest.mark.usefixtures('fresh_process_state')   # conftest: a fresh accelerate state per test


@pytest.fixture
def no_trainer(monkeypatch):
    class Boom:
        def __init__(self, *a, **k):
            raise AssertionError('a Trainer was built before the error')
    monkeypatch.setattr(trainer_module, 'Trainer', Boom)


def train_args(tmp_path, config: dict, *extra):
    path = tmp_path / 'cfg.json'
    path.write_text(json.dumps(config))
    return ['train', '--config', path, *extra]


@pytest.mark.parametrize('section, patch, match', [
    ('training', {'stpes': 3}, ["'training.stpes'", "did you mean 'steps'"]),
    ('training', {'steps': '3'}, ["'training.steps'", 'integer', "'3'"]),
    ('training', {'batch_size': 0}, ["'training.batch_size'", '[1, 65536]']),
    ('training', {'checkpoint_every': 0}, ["'training.checkpoint_every'", 'integer in [1, ']),
    ('training', {'min_snr_gamma': -1}, ["'training.min_snr_gamma'", '(0, ']),
    ('dataset', {'cond_dropout_rate': 5}, ["'dataset.cond_dropout_rate'", '[0, 1]']),
    ('dataset', {'synthetic': {'n': 8, 'sizes': [[16]]}}, ["'dataset.synthetic.sizes[0]'", '2-2 items']),
    ('optimizer', {'lr': float('nan')}, ["'optimizer.lr'", 'finite']),
    ('optimizer', {'type': 'adam'}, ["'optimizer.type'", "'adamw'"]),
    ('model', {'depths': [1, 1, 1]}, ["'model.channels'", 'one entry per stage']),
    ('lr_sched', {'type': 'inverse'}, ["'lr_sched.inv_gamma' is required"]),
])
def test_config_errors(tmp_path, capsys, no_trainer, section, patch, match):
    config = tiny_config(tmp_path / 'out')
    config.setdefault(section, {}).update(patch)
    err = expect_error(train_args(tmp_path, config), match, capsys)
    assert 'cfg.json' in err


def test_config_file_errors(tmp_path, capsys, no_trainer):
    (tmp_path / 'bad.json').write_text('{"training": ')
    expect_error(['train', '--config', tmp_path / 'bad.json'], ['bad.json', 'not a valid JSON config'], capsys)
    expect_error(['train', '--config', tmp_path / 'none.json'], 'none.json', capsys)
    expect_error(train_args(tmp_path, {'modle': {}}), "did you mean 'model'", capsys)
    expect_error(train_args(tmp_path, tiny_config(tmp_path), '--steps', '0'), "'training.steps'", capsys)


def test_missing_and_empty_datasets(tmp_path, capsys):
    config = tiny_config(tmp_path / 'out')
    config['dataset'].update(type='imagefolder', location=str(tmp_path / 'nowhere'))
    expect_error(train_args(tmp_path, config), ['dataset.location', 'nowhere: no such folder'], capsys)
    (tmp_path / 'empty').mkdir()
    config['dataset']['location'] = str(tmp_path / 'empty')
    expect_error(train_args(tmp_path, config), ['nothing to train on', 'no image files'], capsys)
    for i in range(3):
        (tmp_path / 'empty' / f'{i}.png').write_bytes(b'not a png')
    expect_error(train_args(tmp_path, config), ['nothing to train on', 'skipped 3 with an unreadable header'],
                 capsys)


def test_undecodable_dataset_fails_instead_of_hanging(tmp_path, capsys):
    root = make_synthetic_dataset(tmp_path / 'data', n=8, sizes=[[16, 16]])
    for p in root.glob('*.png'):                      # valid header, truncated pixel data
        p.write_bytes(p.read_bytes()[:60])
    config = tiny_config(tmp_path / 'out')
    config['dataset'].update(type='imagefolder', location=str(root))
    expect_error(train_args(tmp_path, config), 'could be decoded', capsys)


@pytest.fixture
def run_dir(tmp_path):
    return train_tiny_checkpoint(tmp_path / 'run')


def test_previous_run_refused_then_overwrite(run_dir, tmp_path, capsys):
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob('*')}
    config = tiny_config(run_dir, steps=1)
    expect_error(train_args(tmp_path, config), ['holds a previous run', '--resume', '--overwrite'], capsys)
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob('*')} == before          # untouched
    assert cli.main([str(a) for a in train_args(tmp_path, config, '--overwrite')]) == 0
    assert sorted(p.name for p in run_dir.glob('checkpoint-*')) == ['checkpoint-00000001']
    assert len((run_dir / 'metrics.jsonl').read_text().splitlines()) == 1


def test_resume_refuses_changed_settings(run_dir, tmp_path, capsys):
    config = json.loads((run_dir / 'config.json').read_text())
    config['optimizer']['lr'] = 0.5
    expect_error(train_args(tmp_path, config, '--resume', run_dir), ['optimizer.lr', '0.5', 'may change'], capsys)
    assert json.loads((run_dir / 'config.json').read_text())['optimizer']['lr'] != 0.5     # not recorded


class Payload:
    def __reduce__(self):
        return (os.system, (f'touch {MARKER}',))


MARKER = Path('/tmp/kdiff-ztsnr-pwned')


def test_resume_never_unpickles_code(run_dir, tmp_path, capsys):
    MARKER.unlink(missing_ok=True)
    ckpt = run_dir / (run_dir / 'latest').read_text()
    (ckpt / 'state.pt').write_bytes(pickle.dumps({'step': Payload()}))
    expect_error(['train', '--resume', run_dir, '--steps', '3'], ['state.pt', 'not a safe training-state file'],
                 capsys)
    assert not MARKER.exists()


def test_truncated_safetensors_named(run_dir, tmp_path, capsys):
    ckpt = run_dir / (run_dir / 'latest').read_text()
    data = (ckpt / 'ema.safetensors').read_bytes()
    (ckpt / 'ema.safetensors').write_bytes(data[:len(data) // 2])
    expect_error(['sample', 'x', '--model', run_dir, '--out', tmp_path / 'o'],
                 ['ema.safetensors', 'truncated'], capsys)
    (ckpt / 'ema.safetensors').write_bytes(b'\xff' * 7)
    expect_error(['sample', 'x', '--model', run_dir, '--out', tmp_path / 'o'], 'ema.safetensors', capsys)


def test_prune_by_step_keeps_the_new_checkpoint(tmp_path):
    for step in (2, 4, 6, 100_000_000):
        (tmp_path / f'checkpoint-{step:08d}').mkdir()
    runs.prune(tmp_path, keep=2, current=6)          # by name, 100000000 sorts before 00000006's neighbours
    assert sorted(runs.checkpoints(tmp_path)) == [4, 6, 100_000_000]
    runs.prune(tmp_path, keep=1, current=4)          # resumed at 4: the stale later ones are not "newer"
    assert 4 in runs.checkpoints(tmp_path)


def test_trim_metrics_drops_later_and_torn_lines(tmp_path):
    path = tmp_path / 'metrics.jsonl'
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"st')
    runs.trim_metrics(path, 2)
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'
    assert [p.name for p in tmp_path.iterdir()] == ['metrics.jsonl']      # no temporary left


# ------------------------------------------------------------------------------------------ properties
def leaf_keys():
    out = []
    for section, rows in SCHEMA.items():
        out += [(section, name) for name in rows]
    return out


VALUES = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 66, 2 ** 66), st.floats(allow_nan=True),
                   st.text(max_size=20), st.lists(st.integers(-3, 3), max_size=3),
                   st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(leaf_keys()), VALUES)
def test_any_value_valid_or_error_naming_key(key, value):
    section, name = key
    try:
        validate_config({section: {name: value}})
    except ValueError as e:
        assert f"'{section}.{name}" in str(e), str(e)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=12), st.dictionaries(st.text(max_size=12), VALUES, max_size=3),
                       max_size=3))
def test_random_configs(config):
    """Random sections and keys: valid, or a ValueError naming the first bad key."""
    try:
        validate_config(config)
    except ValueError as e:
        assert 'config key' in str(e) or 'unknown config key' in str(e), str(e)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200) | st.binary(max_size=200).map(lambda b: b.decode('latin-1')))
def test_fuzz_json_config_files(tmp_path_factory, text):
    from kdiff_ztsnr.training.config import load_training_config
    path = tmp_path_factory.mktemp('fz') / 'c.json'
    path.write_text(text)
    try:
        load_training_config(path)
    except ValueError as e:
        assert 'c.json' in str(e)


def test_resaving_a_step_keeps_a_checkpoint(tmp_path):
    from kdiff_ztsnr import training
    tr = training.Trainer(tiny_config(tmp_path, steps=1)).run()
    import torch
    from safetensors.torch import load_file
    first = load_file(str(tmp_path / 'checkpoint-00000001' / 'model.safetensors'))
    tr.save()                                           # the same step again
    assert (tmp_path / 'latest').read_text() == 'checkpoint-00000001'
    again = load_file(str(tmp_path / 'checkpoint-00000001' / 'model.safetensors'))
    assert again.keys() == first.keys() and all(torch.equal(first[k], again[k]) for k in first)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith('checkpoint')) == ['checkpoint-00000001']
