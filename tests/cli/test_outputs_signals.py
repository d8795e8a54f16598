"""Outputs and signals: an --out that cannot hold the images is refused before any model loads, with its real
cause; a failed write leaves no partial or empty PNG (the images are rescued); SIGINT / SIGTERM stop sample,
train and demo with one line and exit 130 / 143, no traceback."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kdiff_ztsnr import cli
from kdiff_ztsnr.generation import image_io as images_module
from kdiff_ztsnr.generation import metadata
from kdiff_ztsnr.generation.image_io import save_images
from kdiff_ztsnr.generation.params import GenerationParams
from tests.cli.test_validation import expect_error, no_model  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize('make, match', [
    (lambda t: '', ["--out ''", 'is empty']),
    (lambda t: '   ', ['is empty']),
    (lambda t: os.symlink(t / 'gone', t / 'link') or t / 'link', ['is a symbolic link to', 'gone', 'does not exist']),
    (lambda t: os.symlink(t / 'gone', t / 'link') or t / 'link' / 'sub', ['link is a symbolic link to']),
    (lambda t: (t / 'f').write_text('x') and t / 'f', ['is a file; give a folder']),
    (lambda t: (t / 'f').write_text('x') and t / 'f' / 'sub', ['f is a file, so the folder cannot be created']),
    (lambda t: '/proc/kdiff-out', ['/proc is on the proc pseudo-filesystem']),
    (lambda t: '/sys/kernel/kdiff-out', ['sysfs pseudo-filesystem']),
    (lambda t: t / ('n' * 300) / 'x', ['longer than the 255 bytes']),
])
def test_bad_out_found_before_the_model(tmp_path, capsys, no_model, make, match):   # noqa: F811
    out = make(tmp_path)
    expect_error(['sample', 'a cat', '--steps', '2', '--out', out], match, capsys)
    expect_error(['demo', '--out', out], match, capsys)


def params(n: int = 2) -> GenerationParams:
    return GenerationParams(prompt='a cat', seed=7, n_samples=n, width=8, height=8)


def failing_save_png(fail_calls: set):
    """save_png that writes half a file then hits a full disk on the given call numbers."""
    real, calls = metadata.save_png, []

    def save(image, f, *a, **k):
        calls.append(1)
        if len(calls) in fail_calls:
            f.write(b'\x89PNG\r\n')
            raise OSError(errno.ENOSPC, 'No space left on device')
        return real(image, f, *a, **k)
    return save


@pytest.mark.parametrize('fail, kept', [({1}, []), ({2}, ['00000-7.png'])])
def test_full_disk_leaves_no_partial_png(tmp_path, monkeypatch, fail, kept):
    monkeypatch.setattr(metadata, 'save_png', failing_save_png(fail))
    imgs = torch.rand(2, 3, 8, 8) * 2 - 1
    with pytest.raises(OSError, match='No space left on device.*they were saved to') as e:
        save_images(imgs, params(), str(tmp_path / 'out'))
    assert sorted(os.listdir(tmp_path / 'out')) == kept                 # nothing partial, empty or hidden
    for name in kept:
        assert metadata.read_metadata(str(tmp_path / 'out' / name))['seed'] == 7
    rescue = Path(str(e.value).rsplit('saved to ', 1)[1])
    assert sorted(os.listdir(rescue)) == ['00000-7.png', '00001-8.png']
    assert [metadata.read_metadata(str(rescue / n))['seed'] for n in sorted(os.listdir(rescue))] == [7, 8]


def test_written_files_never_replace_existing_ones(tmp_path):
    out = tmp_path / 'out'
    out.mkdir()
    (out / '00000-7.png').write_bytes(b'mine')
    os.symlink(tmp_path / 'target', out / '00001-7.png')                   # a dangling link is not followed
    paths = save_images(torch.zeros(1, 3, 8, 8), params(1), str(out))
    assert (out / '00000-7.png').read_bytes() == b'mine' and not (tmp_path / 'target').exists()
    assert [Path(p).name for p in paths] == ['00002-7.png']
    assert sorted(os.listdir(out)) == ['00000-7.png', '00001-7.png', '00002-7.png']


def test_no_hard_links_falls_back_to_an_exclusive_replace(tmp_path, monkeypatch):
    def no_link(a, b):
        raise OSError(errno.EPERM, 'Operation not permitted')
    monkeypatch.setattr(images_module.os, 'link', no_link)
    paths = save_images(torch.zeros(2, 3, 8, 8), params(), str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ['00000-7.png', '00001-8.png']
    assert metadata.read_metadata(paths[1])['seed'] == 8


# ------------------------------------------------------------------------------------------------ signals
# Each command runs in a subprocess; the signal is sent once the command printed that it is working.
STARTED = '<<started>>'
SLOW_SAMPLE = '''
import sys, time
from kdiff_ztsnr.generation import generate as g
real = g.generate
def slow(pipe, p, **kw):
    print(%r, flush=True)
    p.steps, p.n_samples = 10_000, 1
    return real(pipe, p, **kw)
g.generate = slow
from kdiff_ztsnr import cli
sys.exit(cli.main(sys.argv[1:]))
''' % STARTED
SLOW_DEMO = SLOW_SAMPLE.replace('from kdiff_ztsnr.generation import generate as g',
                                'from kdiff_ztsnr.generation import demo as g').replace(
    'g.generate', 'g.regime_table').replace('def slow(pipe, p, **kw)', 'def slow(pipe, **kw)').replace(
    "p.steps, p.n_samples = 10_000, 1", "kw['steps'] = 10_000").replace('real(pipe, p, **kw)', 'real(pipe, **kw)')


def run_until_started(args, marker, sig, tmp_path, code='from kdiff_ztsnr import cli; import sys; '
                                                          'sys.exit(cli.main(sys.argv[1:]))'):
    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'OMP_NUM_THREADS': '1', 'PYTHONUNBUFFERED': '1'}
    proc = subprocess.Popen([sys.executable, '-c', code, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        seen, t0 = '', time.time()
        while marker not in seen:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, f'exited {proc.returncode}: {proc.stderr.read()}'
            seen += line
            assert time.time() - t0 < 240, seen
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, err


@pytest.mark.parametrize('sig, rc, word', [(signal.SIGINT, 130, 'interrupted (SIGINT)'),
                                           (signal.SIGTERM, 143, 'terminated (SIGTERM)')])
def test_sample_signals(tmp_path, sig, rc, word):
    code, err = run_until_started(['sample', 'a cat', '--out', tmp_path / 'out', '--quiet'], STARTED, sig, tmp_path,
                                  SLOW_SAMPLE)
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == rc and 'Traceback' not in err and lines[-1] == f'{word}: sample stopped', err
    assert not (tmp_path / 'out').exists() or not os.listdir(tmp_path / 'out')


def test_demo_signal(tmp_path):
    code, err = run_until_started(['demo', '--out', tmp_path / 'demo'], STARTED, signal.SIGTERM, tmp_path, SLOW_DEMO)
    assert code == 143 and 'Traceback' not in err and err.strip().splitlines()[-1] == 'terminated (SIGTERM): demo ' \
                                                                                      'stopped', err
    assert not (tmp_path / 'demo').exists() or not os.listdir(tmp_path / 'demo')


def test_train_signal_then_resume(tmp_path, sig=signal.SIGINT, rc=130):
    """SIGINT mid-run (SIGTERM takes the same path, tested on sample): the latest checkpoint is whole and resumes."""
    from tests.training.test_training import tiny_config
    config = tiny_config(tmp_path / 'out', steps=100_000, checkpoint_every=2, log_every=1)
    config['training']['threads'] = 1
    (tmp_path / 'cfg.json').write_text(json.dumps(config))
    code, err = run_until_started(['train', '--config', tmp_path / 'cfg.json'], 'step 3,', sig, tmp_path)
    assert code == rc and 'Traceback' not in err, err
    assert err.strip().splitlines()[-1].endswith('train stopped'), err
    out = tmp_path / 'out'
    assert (out / (out / 'latest').read_text()).is_dir()                 # the latest checkpoint is whole
    assert not [p for p in out.iterdir() if p.name.startswith('.')]
    step = int((out / 'latest').read_text().split('-')[1])
    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'OMP_NUM_THREADS': '1'}
    done = subprocess.run([sys.executable, '-m', 'kdiff_ztsnr.cli', 'train', '--resume', str(out), '--steps',
                           str(step + 1)], capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0 and f'resumed from {out / f"checkpoint-{step:08d}"}' in done.stdout, done.stderr


def test_export_config_never_overwrites(tmp_path, capsys):
    out = tmp_path / 'cfg'
    (out / 'unet').mkdir(parents=True)
    (out / 'unet' / 'config.json').write_text('{"mine": 1}')
    (out / 'model_index.json').write_text('{"mine": 2}')
    expect_error(['export-diffusers-config', out], ['already holds', 'unet/config.json', 'model_index.json',
                                                    '--overwrite'], capsys)
    assert json.loads((out / 'unet' / 'config.json').read_text()) == {'mine': 1}
    assert sorted(p.name for p in out.iterdir()) == ['model_index.json', 'unet']      # nothing else written
    (tmp_path / 'file').write_text('x')
    expect_error(['export-diffusers-config', tmp_path / 'file'], 'is a file', capsys)
    assert cli.main(['export-diffusers-config', str(out), '--overwrite']) == 0
    assert json.loads((out / 'model_index.json').read_text())['unet'] == ['diffusers', 'UNet2DConditionModel']


def test_img2img_png_without_init_image_is_not_silently_txt2img(tmp_path, capsys, no_model):  # noqa: F811
    from PIL import Image
    png = tmp_path / 'i2i.png'
    meta = {**params(1).to_dict(), 'strength': 0.6, 'n_samples': 1}
    with open(png, 'wb') as f:
        metadata.save_png(Image.new('RGB', (8, 8)), f, meta)
    expect_error(['sample', '--from-image', png, '--out', tmp_path / 'o'],
                 ['made by img2img (strength 0.6)', '--init-image FILE', '--strength 1'], capsys)
    expect_error(['sample', '--from-image', png, '--strength', '0.5', '--out', tmp_path / 'o'],
                 '--strength needs --init-image', capsys)
    # explicit text-to-image: reaches the model (stopped here by the no_model fixture)
    with pytest.raises(AssertionError, match='model touched'):
        cli.main(['sample', '--from-image', str(png), '--strength', '1', '--out', str(tmp_path / 'o')])
