"""Bad input to `kdiff-ztsnr sample` and friends: one `error: …` line (exit 2) naming the input and what would be
valid, raised before any model call; outputs never overwritten; finished images never lost."""

import json
import os
import shutil

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from PIL import Image, PngImagePlugin

from kdiff_ztsnr import cli
from kdiff_ztsnr.generation import generate as generate_module, lookup
from kdiff_ztsnr.generation.params import FIELDS, GenerationParams, check_value


def expect_error(args, match, capsys):
    capsys.readouterr()
    assert cli.main([str(a) for a in args]) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and err.count('\n') == 1 and 'Traceback' not in err, err
    for m in [match] if isinstance(match, str) else match:
        assert m in err, err
    return err


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if a model would be loaded or called: errors must come first."""
    def boom(*a, **k):
        raise AssertionError('model touched before the error')
    monkeypatch.setattr(lookup, 'load_pipeline', boom)
    monkeypatch.setattr(generate_module, 'generate', boom)


@pytest.fixture
def no_sampling(monkeypatch):
    def boom(*a, **k):
        raise AssertionError('sampling started before the error')
    monkeypatch.setattr(generate_module, 'generate', boom)


@pytest.mark.parametrize('opts, match', [
    (['--steps', '0'], ['--steps', '[1, 10000]']),
    (['--steps', '1000000000'], ['--steps', '[1, 10000]']),
    (['--width', '1048576'], ['--width', '[1, 8192]']),
    (['--scale', 'nan'], ['--scale', 'finite number']),
    (['--scale', 'inf'], ['--scale', 'finite number']),
    (['--cfg-rescale', 'nan'], ['--cfg-rescale', '[0, 1]']),
    (['--cfg-rescale', '2'], ['--cfg-rescale', '[0, 1]']),
    (['--eta', '-3'], ['--eta', '[0, 10]']),
    (['--sigma-max', '1e30'], ['--sigma-max', '100000']),
    (['--sigma-max', 'nan'], ['--sigma-max', 'finite']),
    (['--seed', '-5'], ['--seed', '[0, ']),
    (['--seed', str(2 ** 63)], ['--seed', '[0, ']),
    (['-n', '0'], ['-n/--n-samples', '[1, 256]']),
    (['--uc', 'x' * 100_001], ['--uc', 'at most 100000 characters']),
    (['--strength', '0.5'], ['--strength needs --init-image']),
    (['--mask', 'm.png'], ['--mask and --enhance need --init-image']),
    (['--init-image', 'nowhere.png'], ['--init-image nowhere.png', 'no such file']),
    (['--uc', '(' * 5000 + 'x'], ['--uc: emphasis gives', 'at most 100']),
])
def test_bad_options_refused_before_loading(opts, match, tmp_path, capsys, no_model):
    expect_error(['sample', 'x', '--out', tmp_path / 'o', *opts], match, capsys)
    assert not any(tmp_path.glob('o/*.png'))


def test_missing_prompt_and_bad_out(tmp_path, capsys, no_model):
    expect_error(['sample', '--out', tmp_path], 'give a prompt', capsys)
    (tmp_path / 'file').write_text('')
    expect_error(['sample', 'x', '--out', tmp_path / 'file'], ['--out', 'is a file'], capsys)
    if os.geteuid() != 0:                                   # root writes anywhere
        ro = tmp_path / 'ro'
        ro.mkdir(mode=0o500)
        expect_error(['sample', 'x', '--out', ro], ['--out', 'not a writable folder'], capsys)


def test_size_limits_after_load(tmp_path, capsys, no_sampling):
    expect_error(['sample', 'x', '--out', tmp_path, '--width', '8192', '--height', '8192', '-n', '2'],
                 ['exceeds the limit', '--no-size-limit'], capsys)
    expect_error(['sample', 'x', '--out', tmp_path, '--alpha-metadata'], ['--alpha-metadata', '32x32'], capsys)
    expect_error(['sample', 'x', '--out', tmp_path, '--width', '33'], 'multiples of', capsys)


def test_regime_errors_name_the_options(tmp_path, capsys, no_sampling):
    """The library's regime / sigma_start are the command line's --ztsnr / --sigma-max."""
    expect_error(['sample', 'x', '--out', tmp_path, '--ztsnr', 'sigma_max'],
                 '--ztsnr sigma_max needs a finite positive sigma_start (--sigma-max), got none', capsys)
    prompts = tmp_path / 'p.jsonl'
    prompts.write_text('{"prompt": "x", "ztsnr": "finite"}\n')      # the earlier key, as a prompt file may say
    expect_error(['sample', '--prompt-file', prompts, '--out', tmp_path / 'o'],
                 ['line 1: regime (--ztsnr) must be one of exact, clamp, sigma_max', "'finite'"], capsys)


def png_with(path, text: dict, mode='RGB', size=(32, 32), alpha=None):
    info = PngImagePlugin.PngInfo()
    for k, v in text.items():
        info.add_text(k, v)
    im = Image.new(mode, size)
    if alpha is not None:
        im.putalpha(alpha)
    im.save(path, pnginfo=info)
    return path


@pytest.mark.parametrize('meta, match', [
    ({'prompt': 'x', 'steps': '28'}, ["steps (--steps) must be an integer", "'28'"]),
    ({'prompt': 'x', 'n_samples': 10 ** 9}, ['n_samples', '[1, 256]']),
    ({'prompt': 'x', 'width': 10 ** 7}, ['width', '[1, 8192]']),
    ({'prompt': 'x', 'sampler': 'rm -rf'}, ['sampler', 'one of']),
    ({'prompt': 3}, ['prompt', 'string']),
    ({'prompt': 'x', 'ztsnr': 'finite'}, ['regime (--ztsnr) must be one of exact, clamp, sigma_max', "'finite'"]),
    ({'prompt': 'x', 'sigma_max': -1.}, ['sigma_start (--sigma-max) must be a finite number in [0.001, 100000]']),
])
def test_from_image_metadata_validated_like_options(meta, match, tmp_path, capsys, no_model):
    src = png_with(tmp_path / 'm.png', {'Comment': json.dumps(meta)})
    err = expect_error(['sample', '--from-image', src, '--out', tmp_path / 'o'], match, capsys)
    assert '--from-image' in err and 'm.png' in err


def test_metadata_not_an_object_and_a1111_garbage(tmp_path, capsys):
    expect_error(['inspect', png_with(tmp_path / 'a.png', {'Comment': '[1, 2]'})], 'JSON object', capsys)
    expect_error(['inspect', png_with(tmp_path / 'b.png', {'parameters': 'p\nSteps: 4, Seed: 1, Size: 12'})],
                 ['b.png', 'unreadable generation metadata', 'not WIDTHxHEIGHT'], capsys)


def test_alpha_gzip_bomb_is_capped(tmp_path, capsys):
    """A few KB of gzip that inflates to 64 MB: refused at MAX_METADATA bytes, not decompressed."""
    import gzip
    from kdiff_ztsnr.generation.metadata import STEALTH_MAGIC
    data = gzip.compress(b' ' * (64 << 20), 9)
    payload = STEALTH_MAGIC + (len(data) * 8).to_bytes(4, 'big') + data
    bits = np.unpackbits(np.frombuffer(payload, np.uint8))
    side = int(np.ceil(np.sqrt(len(bits))))
    alpha = np.full(side * side, 255, np.uint8)
    alpha[:len(bits)] = 254 | bits
    path = tmp_path / 'bomb.png'
    Image.fromarray(np.dstack([np.zeros((side, side, 3), np.uint8), alpha.reshape(side, side).T])).save(path)
    expect_error(['inspect', path], ['bomb.png', 'more than 1048576 bytes'], capsys)


def test_outputs_never_overwritten(tmp_path, capsys):
    args = ['sample', 'x', '--steps', '1', '-n', '2', '--out', str(tmp_path), '--quiet']
    assert cli.main(args) == 0 and cli.main(args) == 0
    names = sorted(p.name for p in tmp_path.glob('*.png'))
    assert names == ['00000-0.png', '00001-1.png', '00002-0.png', '00003-1.png']


def test_failed_save_keeps_images(tmp_path):
    import torch
    from kdiff_ztsnr.generation.image_io import save_images
    (tmp_path / 'file').write_text('')
    with pytest.raises(OSError, match='they were saved to') as e:
        save_images(torch.zeros(2, 3, 8, 8), GenerationParams(prompt='x', width=8, height=8), str(tmp_path / 'file'))
    rescue = str(e.value).rsplit(' ', 1)[1]
    try:
        assert sorted(os.listdir(rescue)) == ['00000-0.png', '00001-1.png']
    finally:
        shutil.rmtree(rescue)


@pytest.mark.parametrize('args, match', [
    (['tokenize', 'a cat', '--max-chunks', '0'], '--max-chunks must be an integer in [1, 1000]'),
    (['demo', '--samples', '1'], '--samples must be an integer in [2, 256]'),
])
def test_other_commands(args, match, capsys, no_model):
    expect_error(args, match, capsys)


VALUES = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70), st.floats(allow_nan=True),
                   st.text(max_size=30), st.lists(st.integers(), max_size=2), st.dictionaries(st.text(), st.none()))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(FIELDS)), VALUES)
def test_every_field_valid_or_named_error(key, value):
    """Any value of any type: accepted only if it fits the row, else a ValueError naming the key."""
    f = FIELDS[key]
    try:
        check_value(key, value)
    except ValueError as e:
        assert str(e).startswith(key) and 'must be' in str(e)
        return
    if value is None:
        assert f.optional
        return
    assert isinstance(value, (int, float) if f.kind is float else f.kind)
    assert not (f.kind is not bool and isinstance(value, bool))
    if f.choices:
        assert value in f.choices
    elif f.kind in (int, float):
        assert f.lo <= value <= f.hi


def test_16bit_grayscale_init_is_scaled(tmp_path):
    from kdiff_ztsnr.generation.image_io import load_image
    ramp = np.linspace(0, 65535, 16 * 16).reshape(16, 16).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / 'g16.png')
    x = load_image(tmp_path / 'g16.png', 16, 16)
    assert abs(x.mean().item()) < 0.02 and x.min() < -0.95 and x.max() > 0.95    # a ramp, not white


def test_checkpoint_files_follow_umask(tmp_path):
    import torch
    from kdiff_ztsnr.files import save_weights
    umask = os.umask(0o022)
    try:
        save_weights(torch.nn.Linear(2, 2), tmp_path / 'w.safetensors', {})
    finally:
        os.umask(umask)
    assert (tmp_path / 'w.safetensors').stat().st_mode & 0o777 == 0o644


def test_long_prompt_output_is_bounded(capsys):
    assert cli.main(['tokenize', 'cat ' * 5000]) == 0
    out = capsys.readouterr().out
    dropped = [ln for ln in out.splitlines() if ln.startswith('dropped')]
    assert len(dropped) == 1 and len(dropped[0]) < 400 and 'more characters)' in dropped[0]


def test_missing_files_of_train_and_export_name_the_option(tmp_path, capsys):
    from kdiff_ztsnr import cli
    for args, want in ((['train', '--config', str(tmp_path / 'no.json')], '--config'),
                       (['export-diffusers-config', str(tmp_path / 'cfg'), '--model', str(tmp_path / 'no.safetensors')],
                        '--model')):
        capsys.readouterr()
        assert cli.main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith(f'error: {want} ') and 'no such file' in err and err.count('\n') == 1
    assert not (tmp_path / 'cfg').exists()                     # nothing written before the check
