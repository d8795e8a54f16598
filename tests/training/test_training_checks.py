"""Training configs whose keys are each inside the schema but whose combination cannot train are refused before
set-up (one `error:` line naming the keys); a non-finite loss stops the run at that step keeping the last good
checkpoint; a run killed before its first checkpoint says what works."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from kdiff_ztsnr import cli, training
from kdiff_ztsnr.training import runs
from kdiff_ztsnr.training.config import load_training_config
from kdiff_ztsnr.training.trainer import Trainer
from tests.cli.test_validation import expect_error
from tests.training.test_training import tiny_config
from tests.training.test_training_validation import no_trainer, train_args  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures('fresh_process_state')

SDXL = {'type': 'sdxl', 'path': '/nowhere'}


@pytest.mark.parametrize('section, patch, match', [
    ('model', {'sigma_data': 1e-300}, ["'model.sigma_data'", '[0.001, 1000]']),
    ('model', {'sigma_data': 0}, ["'model.sigma_data'"]),
    ('model', {'depths': [0, 0]}, ["'model.depths[0]'", '[1, 64]']),
    ('model', {'patch_size': 64}, ['model.patch_size (64)', 'must divide every bucket side', '16x16']),
    ('model', {'depths': [1] * 6, 'channels': [16] * 6, 'self_attn_depths': [False] * 6},
     ['= 32 must divide every bucket side', '16x16']),
    ('model', {'skip_stages': 2}, ["'model.skip_stages' (2)", 'len(model.depths) = 2']),
    ('model', {'mapping_out': 33}, ["'model.mapping_out' must be even"]),
    ('model', {'channels': [16, 65]}, ["'model.channels[1]' = 65", '2 norm groups']),
    ('model', {'channels': [16, 129]}, ["'model.channels[1]' = 129"]),
    ('model', {'input_channels': 1}, ["'model.input_channels' must be 3", "'synthetic'"]),
    ('model', {'num_timesteps': 2}, ["'model.num_timesteps' must be 1000"]),
    ('dataset', {'buckets': {'min_side': 64, 'max_side': 32}}, ["'dataset.buckets.min_side' (64)", "max_side' (32)"]),
    ('dataset', {'buckets': {'min_side': 32, 'max_side': 32, 'max_area': 16, 'step': 16, 'extra': []}},
     ["'dataset.buckets' makes no bucket"]),
    ('dataset', {'tag_weights': {'clip': [1e6, 0]}}, ["'dataset.tag_weights.clip[0]'", '[0, 100]']),
    ('dataset', {'tag_weights': {'clip': [1, 0.5]}}, ["'dataset.tag_weights.clip'", '[1, 0.5]']),
    ('dataset', {'tag_weights': {'clip': [2, 3]}}, ["'dataset.tag_weights.clip'", '0 <= w_min <= 1 <= w_max']),
    ('text', {'layer': 64}, ["'text.layer' (64)", '[-3, 2]']),
    ('text', {'layer': -64}, ["'text.layer' (-64)"]),
    ('text', {'layer': -4}, ["'text.layer' (-4)"]),
    ('text', {'encoders': [{'hidden_size': 32, 'intermediate_size': 64, 'num_hidden_layers': 2,
                            'num_attention_heads': 3}]}, ["'text.encoders[0].hidden_size' (32)", 'num_attention_heads (3)']),
    ('optimizer', {'betas': [1, 0.5]}, ["'optimizer.betas'", '[0, 1)']),
    ('ema_sched', {'min_value': 0.9, 'max_value': 0.5}, ["'ema_sched.min_value' (0.9)"]),
    ('training', {'preview_every': 5}, ["'training.preview_every'", "need model.type 'sdxl'", "'image_v1'"]),
    ('training', {'preview': {'steps': 4}}, ["need model.type 'sdxl'"]),
])
def test_cross_field_errors(tmp_path, capsys, no_trainer, section, patch, match):   # noqa: F811
    config = tiny_config(tmp_path / 'out')
    for k, v in patch.items():
        config.setdefault(section, {})[k] = v
    err = expect_error(train_args(tmp_path, config), match, capsys)
    assert 'cfg.json' in err


@pytest.mark.parametrize('preview, match', [
    ({'sampler': 'euler_a'}, ["'training.preview'", 'sampler', 'euler_ancestral']),
    ({'width': 100}, ["'training.preview.width'", 'multiple of 8']),
    ({'scale': 100, 'steps': 1000, 'sampler': 'dpmpp_2m'}, None),
])
def test_preview_settings_checked_like_generation(preview, match):
    config = {'model': dict(SDXL), 'text': {'type': 'none'},
              'dataset': {'type': 'synthetic', 'location': '/tmp/x'},
              'training': {'preview_every': 1, 'preview': preview}}
    if match is None:
        load_training_config(config)
        return
    with pytest.raises(ValueError) as e:
        load_training_config(config)
    assert all(m in str(e.value) for m in match), str(e.value)


def test_valid_edges_still_train(tmp_path):
    """Values at the edges the cross-checks allow build and train: a zero-depth-free deep net whose canvases
    its stages can halve, text.layer at both ends, tag weights clipped at [0, 1]."""
    config = tiny_config(tmp_path, steps=1)
    config['model'].update(channels=[16, 32], patch_size=2)
    config['dataset']['tag_weights'] = {'clip': [0, 1]}
    config['text'] = {'layer': -3}
    Trainer(config).run()
    assert (tmp_path / 'checkpoint-00000001').is_dir()


def poison_after(step: int):
    """A train_step that fills the model's weights with NaN once `step` steps are done (a diverging run)."""
    real = Trainer.train_step

    def train_step(self):
        if self.step == step:
            with torch.no_grad():
                for p in self.unwrapped.parameters():
                    p.fill_(math.nan)
        return real(self)
    return train_step


def test_non_finite_loss_stops_keeping_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(Trainer, 'train_step', poison_after(2))
    config = tiny_config(tmp_path / 'out', steps=5, checkpoint_every=1)
    err = expect_error([*train_args(tmp_path, config), '--quiet'], ['training stopped at step 3', 'the loss is nan',
                                                      'checkpoint-00000002 is kept'], capsys)
    out = tmp_path / 'out'
    assert (out / 'latest').read_text() == 'checkpoint-00000002', err
    assert sorted(runs.checkpoints(out)) == [1, 2]                       # nothing saved for step 3
    assert not list(out.glob('*.tmp'))
    w = load_file(str(out / 'checkpoint-00000002' / 'model.safetensors'))
    assert all(torch.isfinite(t).all() for t in w.values())
    rows = [json.loads(r) for r in (out / 'metrics.jsonl').read_text().splitlines()]
    assert [r['step'] for r in rows] == [1, 2] and all(math.isfinite(r['loss']) for r in rows)


def test_non_finite_loss_at_the_first_step_says_no_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(Trainer, 'train_step', poison_after(0))
    with pytest.raises(runs.NonFiniteLoss, match='step 1.*no checkpoint was written before it'):
        training.Trainer(tiny_config(tmp_path, steps=2)).run()
    assert not runs.checkpoints(tmp_path)


def test_killed_before_first_checkpoint_says_what_works(tmp_path, capsys):
    """A run killed (-9) before its first checkpoint leaves config.json and metrics.jsonl: a new run names
    --overwrite, not --resume; --resume says the same; --overwrite then trains."""
    out = tmp_path / 'out'
    config = tiny_config(out, steps=1)
    out.mkdir()
    (out / 'config.json').write_text(json.dumps(config))
    (out / 'metrics.jsonl').write_text('{"step": 1, "loss": 0.3}\n{"step": 2, "lo')
    err = expect_error(train_args(tmp_path, config), ['wrote no checkpoint', '--overwrite'], capsys)
    assert '--resume' not in err.replace('nothing to --resume', '')
    expect_error(['train', '--resume', out], ['wrote no checkpoint', '--overwrite'], capsys)
    expect_error(train_args(tmp_path, config, '--resume', out), ['wrote no checkpoint', '--overwrite'], capsys)
    (out / 'latest').write_text('checkpoint-00000007')                     # latest naming a missing folder
    expect_error(['train', '--resume', out], ["'checkpoint-00000007'", 'not a checkpoint folder'], capsys)
    (out / 'latest').unlink()
    assert cli.main([str(a) for a in train_args(tmp_path, config, '--overwrite')]) == 0
    assert (out / 'latest').read_text() == 'checkpoint-00000001'
