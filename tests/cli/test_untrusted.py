"""Every file is hostile: no code runs from a checkpoint or a PNG, a PNG's paths are never opened, untrusted text is
escaped before it is printed, special files are refused before they are opened, declared sizes are checked
before anything is allocated, and every malformed file is one `error:` line naming it."""

import importlib
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import unicodedata
from contextlib import contextmanager

import pytest
import torch
from PIL import Image, PngImagePlugin
from safetensors.torch import save_file

from kdiff_ztsnr import cli
from kdiff_ztsnr.cli.run import show_warning
generate_module = importlib.import_module('kdiff_ztsnr.generation.generate')   # the module, not the function
from kdiff_ztsnr.files import save_weights
from kdiff_ztsnr.models import trained
from tests.cli.test_validation import expect_error

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BAD_TEXT = 'a\x1b]0;owned\x07b\x1b[31mc\nerror: forged\r\u009b2J\u202eevil\u2066x\u2069\u200b\x00\x7f\u0085'


@contextmanager
def deadline(seconds: int = 20):
    """Fail instead of hanging (a FIFO opened for reading blocks until a writer comes)."""
    def boom(*_):
        raise TimeoutError(f'still running after {seconds} s')
    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def raw_safetensors(path, header, data: bytes = b'', length=None):
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack('<Q', len(h) if length is None else length) + h + data)
    return path


def png(path, text: dict):
    info = PngImagePlugin.PngInfo()
    for k, v in text.items():
        info.add_text(k, v)
    Image.new('RGB', (32, 32)).save(path, pnginfo=info)
    return path


def assert_clean(text: str, lines: int = 1):
    """Exactly `lines` lines, and no character a terminal could act on."""
    assert text.count('\n') == lines and text.endswith('\n'), text
    assert all(c.isprintable() or unicodedata.category(c) == 'Zs' for c in text.replace('\n', '')), ascii(text)


# ------------------------------------------------------------------------------------- code from files

EXPLOITS = [('kdiff_ztsnr.files:os.system', {'command': 'touch {marker}'}),
            ('torch.nn:functional.torch.os.system', {'command': 'touch {marker}'}),
            ('os:system', {'command': 'touch {marker}'}),
            ('subprocess:run', {'args': ['touch', '{marker}']}),
            ('pathlib:Path.touch', {'self': '{marker}'})]


def exploit_checkpoint(root, target, kwargs, marker):
    """A trainer checkpoint folder whose config names code (what a stranger could share)."""
    root.mkdir()
    kwargs = json.loads(json.dumps(kwargs).replace('{marker}', str(marker)))
    config = {'model': {'type': 'module', 'target': target, 'kwargs': kwargs}, 'text': {'type': 'none'},
              'dataset': {'type': 'synthetic', 'location': str(root / 'data')},
              'training': {'out_dir': str(root.parent / 'run')}}
    meta = {'config': json.dumps(config), 'step': '1', 'base_side': '16'}
    for name in ('ema.safetensors', 'model.safetensors'):
        save_file({'weight': torch.zeros(3, 3, 1, 1)}, str(root / name), metadata=meta)
    (root.parent / 'cfg.json').write_text(json.dumps(config))
    return root


@pytest.mark.parametrize('target, kwargs', EXPLOITS)
def test_no_code_from_a_checkpoint(target, kwargs, tmp_path, capsys):
    marker = tmp_path / 'MARKER'
    ckpt = exploit_checkpoint(tmp_path / 'ckpt', target, kwargs, marker)
    expect_error(['sample', 'x', '--model', ckpt, '--out', tmp_path / 'o'],
                 ['ema.safetensors', 'never imported', 'inner_model'], capsys)
    expect_error(['train', '--resume', ckpt, '--steps', '3'], ['--trust-code', 'never from a checkpoint'], capsys)
    expect_error(['train', '--resume', ckpt, '--trust-code'], '--trust-code applies to the --config file', capsys)
    expect_error(['train', '--config', tmp_path / 'cfg.json'], ['refused model.target', '--trust-code'], capsys)
    png(tmp_path / 'p.png', {'Comment': json.dumps({'prompt': 'x', 'model': str(ckpt)})})
    expect_error(['sample', '--from-image', tmp_path / 'p.png', '--out', tmp_path / 'o'],
                 ['not opened', '--model'], capsys)
    with pytest.raises(ValueError, match='never imported'):
        trained.load_trained(ckpt)
    assert not marker.exists()


def test_custom_network_from_python(tmp_path):
    """A 'module' checkpoint is loadable by handing it the network: its weights go in, nothing is imported."""
    net = torch.nn.Conv2d(3, 3, 1)
    ckpt = exploit_checkpoint(tmp_path / 'ckpt', 'os:system', {}, tmp_path / 'M')
    save_weights(net, ckpt / 'ema.safetensors', {'config': json.dumps(
        {'model': {'type': 'module', 'target': 'os:system'}, 'text': {'type': 'none'}}), 'base_side': 16})
    model, text, _ = trained.load_trained(ckpt, inner_model=torch.nn.Conv2d(3, 3, 1))
    assert text is None and torch.equal(model.inner_model.weight, net.weight)


def test_no_string_imports_reachable_from_files():
    """The one resolve_name is behind trust_code; the package's other import_module calls take fixed names."""
    hits = subprocess.run(['grep', '-rnw', r'resolve_name\|import_module\|__import__', 'kdiff_ztsnr'], cwd=ROOT,
                          capture_output=True, text=True).stdout.splitlines()
    calls = [h for h in hits if '(' in h.split(':', 2)[2] and 'def ' not in h]
    assert [h.split(':')[0] for h in calls if 'resolve_name' in h] == ['kdiff_ztsnr/models/registry.py']
    assert all("f'.{" in h for h in calls if 'import_module' in h), calls   # lazy exports: names from a dict


# ------------------------------------------------------------------------------------- --from-image paths

def test_from_image_never_opens_a_model_or_lora(tmp_path, capsys, monkeypatch):
    fifo = tmp_path / 'fifo.safetensors'
    os.mkfifo(fifo)
    for text in ({'Comment': json.dumps({'prompt': 'x', 'model': str(fifo)})},
                 {'parameters': f'x\nNegative prompt: \nSteps: 2, Sampler: Euler, Model: {fifo}'}):   # A1111 needs 3 pairs
        with deadline():
            expect_error(['sample', '--from-image', png(tmp_path / 'm.png', text), '--out', tmp_path / 'o'],
                         [str(fifo), 'not opened', '--model PATH'], capsys)
    seen = {}

    def record(pipe, p, **kw):
        seen['loras'] = p.loras
        raise ValueError('stop before sampling')
    monkeypatch.setattr(generate_module, 'generate', record)
    src = png(tmp_path / 'l.png', {'Comment': json.dumps({'prompt': 'x', 'steps': 2, 'loras': [[str(fifo), 1.0]]})})
    capsys.readouterr()
    with deadline(120):
        assert cli.main(['sample', '--from-image', str(src), '--out', str(tmp_path / 'o')]) == 2
    err = capsys.readouterr().err
    assert 'LoRAs' in err and 'not applied' in err and '--lora' in err and seen['loras'] == []


# ------------------------------------------------------------------------------------- escaping

def test_untrusted_text_is_escaped_in_errors_warnings_and_inspect(tmp_path, capsys):
    src = png(tmp_path / 'e.png', {'Comment': json.dumps({'prompt': BAD_TEXT, 'model': BAD_TEXT})})
    err = expect_error(['sample', '--from-image', src, '--out', tmp_path / 'o'], 'not opened', capsys)
    assert_clean(err)
    capsys.readouterr()
    src = png(tmp_path / 'w.png', {'Comment': json.dumps({'prompt': BAD_TEXT, 'sampler': BAD_TEXT})})
    assert cli.main(['inspect', str(src)]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)['prompt'] == BAD_TEXT and json.loads(out)['sampler'] == BAD_TEXT
    assert all(c.isprintable() or c in '\n ' for c in out), ascii(out)
    assert err.startswith('warning: ') and 'sampler' in err
    assert_clean(err)
    bad = tmp_path / (BAD_TEXT.replace('\x00', '').replace('/', '') + '.safetensors')
    bad.write_bytes(b'not a model')
    assert_clean(expect_error(['inspect', '--model', bad], 'not a .safetensors file', capsys))
    show_warning(UserWarning(BAD_TEXT), UserWarning, 'f.py', 1)
    assert_clean(capsys.readouterr().err)


# ------------------------------------------------------------------------------------- special files

def special_files(tmp_path):
    fifo = tmp_path / 'fifo.safetensors'
    os.mkfifo(fifo)
    plain_fifo = tmp_path / 'pipe'
    os.mkfifo(plain_fifo)
    folder = tmp_path / 'dir.safetensors'
    folder.mkdir()
    link = tmp_path / 'link.safetensors'
    link.symlink_to(fifo)
    return {'fifo': fifo, 'fifo without suffix': plain_fifo, 'symlink to a fifo': link, 'device': '/dev/zero',
            'directory': folder}


def test_special_files_refused_before_opening(tmp_path, capsys):
    files = special_files(tmp_path)
    for kind, path in files.items():
        with deadline():
            err = expect_error(['sample', 'x', '--model', path, '--out', tmp_path / 'o'], str(path), capsys)
            if kind != 'directory':
                expect_error(['inspect', '--model', path], [str(path), 'expected'], capsys)
                expect_error(['inspect', path], [str(path), 'PNG image'], capsys)
                expect_error(['sample', '--from-image', path, '--out', tmp_path / 'o'], str(path), capsys)
                expect_error(['sample', 'x', '--init-image', path, '--out', tmp_path / 'o'],
                             ['--init-image', 'not a regular file'], capsys)
        assert 'Traceback' not in err


def test_special_files_inside_model_folders(tmp_path, capsys):
    from kdiff_ztsnr.models.sdxl.components import COMPONENTS
    folder = tmp_path / 'sdxl'
    for c in (*COMPONENTS, 'tokenizer', 'tokenizer_2', 'scheduler'):
        (folder / c).mkdir(parents=True)
    os.mkfifo(folder / 'unet' / 'diffusion_pytorch_model.safetensors')
    with deadline():
        expect_error(['sample', 'x', '--model', folder, '--prediction', 'v', '--out', tmp_path / 'o'],
                     ['diffusion_pytorch_model.safetensors', 'FIFO'], capsys)
        expect_error(['inspect', '--model', folder], 'FIFO', capsys)
    out = tmp_path / 'run'
    out.mkdir()
    os.mkfifo(out / 'latest')
    (out / 'ema.safetensors').mkdir()
    with deadline():
        expect_error(['sample', 'x', '--model', out, '--out', tmp_path / 'o'], ['ema.safetensors'], capsys)


# ------------------------------------------------------------------------------------- malformed headers

ENTRY = {'dtype': 'F32', 'shape': [4], 'data_offsets': [0, 16]}
MALFORMED = {        # class → (header, data, declared header length or None, phrase of the error)
    'header length 2^60': (b'{}', b'', 2 ** 60, 'declare a 1152921504606846976-byte header'),
    'header length 2^64-1': (b'{}', b'', 2 ** 64 - 1, 'byte header'),
    'header length past the end': (b'{}', b'', 1000, 'the file has'),
    'header a list': ([1, 2], b'', None, 'invalid header'),
    'header a string': ('abc', b'', None, 'invalid header'),
    'header 100000-deep': (b'[' * 100_000 + b']' * 100_000, b'', None, 'invalid header'),
    'objects 100000-deep': (b'{"a":' * 100_000 + b'1' + b'}' * 100_000, b'', None, 'recursion limit'),
    'entry a number': ({'w': 3}, b'', None, 'invalid header'),
    'entry a list': ({'w': [1]}, b'', None, 'invalid header'),
    'unknown dtype': ({'w': dict(ENTRY, dtype='XX')}, b'\0' * 16, None, 'unknown variant'),
    'unsupported dtype': ({'w': dict(ENTRY, dtype='C64', shape=[2])}, b'\0' * 16, None, 'does not load'),
    'shape -4': ({'w': dict(ENTRY, shape=[-4])}, b'\0' * 16, None, 'invalid header'),
    'shape "4"': ({'w': dict(ENTRY, shape=['4'])}, b'\0' * 16, None, 'invalid header'),
    'shape overflow': ({'w': dict(ENTRY, shape=[2 ** 32] * 3)}, b'\0' * 16, None, 'overflow'),
    'reversed offsets': ({'w': dict(ENTRY, data_offsets=[16, 0])}, b'\0' * 16, None, 'data_offsets reversed'),
    'overlapping offsets': ({'w': ENTRY, 'v': ENTRY}, b'\0' * 16, None, 'overlapping'),
    'gap in offsets': ({'w': dict(ENTRY, shape=[2], data_offsets=[8, 16])}, b'\0' * 16, None, 'leaving a gap'),
    'dtype/size mismatch': ({'w': dict(ENTRY, dtype='F16')}, b'\0' * 16, None, 'dtype/size mismatch'),
    'shape/size mismatch': ({'w': dict(ENTRY, shape=[5])}, b'\0' * 16, None, 'is 20 bytes'),
    'truncated data': ({'w': ENTRY}, b'\0' * 8, None, 'truncated'),
    'trailing data': ({'w': ENTRY}, b'\0' * 32, None, 'declare 16 bytes of data'),
    'declared 4 TiB': ({'w': dict(ENTRY, shape=[2 ** 40], data_offsets=[0, 2 ** 42])}, b'\0' * 16, None,
                       'declare 4398046511104 bytes'),
    'metadata not strings': ({'__metadata__': {'config': {}}}, b'', None, 'invalid header'),
    'bad UTF-8': (b'{"\xff\xfe": 1}', b'', None, 'not UTF-8'),
}
RAW = {'text file': b'hello, this is a text file\n', 'empty file': b'', 'zeros': b'\0' * 100,
       'seven bytes': b'\xff' * 7}


def malformed(tmp_path, name):
    path = tmp_path / 'bad.safetensors'
    if name in RAW:
        path.write_bytes(RAW[name])
        return path, ''
    header, data, length, phrase = MALFORMED[name]
    return raw_safetensors(path, header, data, length), phrase


@pytest.mark.parametrize('name', [*MALFORMED, *RAW])
def test_malformed_model_file_is_one_error_naming_it(name, tmp_path, capsys):
    path, phrase = malformed(tmp_path, name)
    expect_error(['inspect', '--model', path], [str(path), phrase], capsys)
    expect_error(['sample', 'x', '--model', path, '--prediction', 'v', '--out', tmp_path / 'o'],
                 [str(path), phrase], capsys)
    ckpt = tmp_path / 'ckpt'
    ckpt.mkdir()
    os.replace(path, ckpt / 'ema.safetensors')
    expect_error(['sample', 'x', '--model', ckpt, '--out', tmp_path / 'o'], ['ema.safetensors', phrase], capsys)


def test_trainer_weights_and_lora_as_sdxl_model_say_what_they_are(tmp_path, capsys):
    ckpt = exploit_checkpoint(tmp_path / 'ckpt', 'os:system', {}, tmp_path / 'M')
    expect_error(['sample', 'x', '--model', ckpt / 'ema.safetensors', '--out', tmp_path / 'o'],
                 ['trainer weights file', f'as --model {ckpt}'], capsys)
    save_file({'lora_unet_down_blocks_0.lora_up.weight': torch.zeros(2, 2)}, str(tmp_path / 'l.safetensors'))
    expect_error(['sample', 'x', '--model', tmp_path / 'l.safetensors', '--out', tmp_path / 'o'],
                 ['looks like a LoRA', '--lora'], capsys)


@pytest.mark.parametrize('sched, phrase', [
    ('[1, 2]', 'must be a JSON object, got list'),
    ('{"num_train_timesteps": 0}', 'num_train_timesteps must be an integer in [2, 100000]'),
    ('{"num_train_timesteps": 1e12}', "got '1000000000000.0'"),
    ('{"num_train_timesteps": 1000000000000}', 'num_train_timesteps'),
    ('{"beta_start": 0.5, "beta_end": 0.1}', 'beta_start <= beta_end'),
    ('{"beta_end": NaN}', 'beta_end'),
    ('{"prediction_type": ["v"]}', 'prediction_type must be a string'),
    ('not json', 'not a valid scheduler config'),
    ('"v_prediction"', 'got str'),
])
def test_bad_scheduler_config_named(sched, phrase, tmp_path, capsys):
    from kdiff_ztsnr.models.sdxl.components import COMPONENTS
    folder = tmp_path / 'sdxl'
    for c in (*COMPONENTS, 'scheduler'):
        (folder / c).mkdir(parents=True)
    (folder / 'scheduler' / 'scheduler_config.json').write_text(sched)
    expect_error(['sample', 'x', '--model', folder, '--out', tmp_path / 'o'],
                 ['scheduler_config.json', phrase], capsys)
    expect_error(['inspect', '--model', folder], ['scheduler_config.json', phrase], capsys)


def test_bad_component_config_in_a_folder_named(tmp_path, capsys):
    from kdiff_ztsnr.models.sdxl.components import COMPONENTS
    folder = tmp_path / 'sdxl'
    for c in (*COMPONENTS, 'scheduler'):
        (folder / c).mkdir(parents=True)
    for text, phrase in (('[1]', 'got list'), ('{"a": ' * 100_000, 'not a valid unet config'),
                         (' ' * (2 << 20), 'more than 1048576 bytes')):
        (folder / 'unet' / 'config.json').write_text(text)
        expect_error(['sample', 'x', '--model', folder, '--prediction', 'v', '--out', tmp_path / 'o'],
                     ['unet/config.json', phrase], capsys)


def test_trainer_checkpoint_metadata_bounded(tmp_path, capsys):
    """Checkpoint metadata that is not a sampling setup: named, before any network is built."""
    for i, (meta, phrase) in enumerate([
            ({'config': '[]'}, 'JSON object with a "model" object'),
            ({'config': '{"model": 3}'}, 'JSON object with a "model" object'),
            ({'config': '[' * 100_000 + ']' * 100_000}, 'not valid JSON'),
            ({'config': json.dumps({'model': {'type': 'image_v1', 'input_channels': 3, 'mapping_out': 16,
                                              'depths': [2, 2], 'channels': [4096, 4096],
                                              'self_attn_depths': [False, False]}, 'text': {'type': 'none'}})},
             'weights do not fit the model of its config'),
            ({'config': json.dumps({'model': {'type': 'sdxl_v9'}, 'text': {'type': 'none'}})},
             'unknown model type')]):
        ckpt = tmp_path / f'c{i}'
        ckpt.mkdir()
        save_file({'w': torch.zeros(2)}, str(ckpt / 'ema.safetensors'), metadata=meta)
        expect_error(['sample', 'x', '--model', ckpt, '--out', tmp_path / 'o'], ['ema.safetensors', phrase], capsys)
    (tmp_path / 'c0' / 'latest').write_text('../../../etc')
    os.remove(tmp_path / 'c0' / 'ema.safetensors')
    expect_error(['sample', 'x', '--model', tmp_path / 'c0', '--out', tmp_path / 'o'],
                 ['latest', 'must name a checkpoint folder'], capsys)


# ------------------------------------------------------------------------------------- declared sizes

DECLARED_SIZES = textwrap.dedent('''
    import json, os, resource, struct, sys, time
    import torch
    from tests.helpers import TINY_KW
    from kdiff_ztsnr.models import sdxl
    from kdiff_ztsnr.files import load_safetensors
    from kdiff_ztsnr.models.trained import load_trained
    from kdiff_ztsnr.models.sdxl.loading import inspect_model
    root = sys.argv[1]
    def peak():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10       # MiB
    def refused(fn, *args):
        t = time.time()
        try:
            fn(*args, **({} if fn is not sdxl.load_sdxl else TINY_KW))
        except ValueError as e:
            return [round(time.time() - t, 2), str(e)[:300]]
        return [round(time.time() - t, 2), 'ACCEPTED']
    def sparse(name, entries, metadata=None):
        header, end = {}, 0
        for key, shape in entries:
            n = 4 * (shape[0] if shape else 1) if shape != [0] else 0
            header[key] = {'dtype': 'F32', 'shape': shape, 'data_offsets': [end, end + n]}
            end += n
        h = json.dumps({**header, **({'__metadata__': metadata} if metadata else {})}).encode()
        with open(f'{root}/{name}', 'wb') as f:
            f.write(struct.pack('<Q', len(h)) + h)
            f.truncate(8 + len(h) + end)                                    # sparse: GiB declared, KB on disk
        return f'{root}/{name}'
    with open(root + '/header20g.safetensors', 'wb') as f:
        f.write(struct.pack('<Q', 20 << 30))
        f.truncate(8 + (20 << 30))
    huge = sparse('huge.safetensors', [('model.diffusion_model.input_blocks.0.0.bias', [1 << 30]),
                                       ('first_stage_model.encoder.conv_in.bias', [4]),
                                       ('conditioner.embedders.0.transformer.x', [4]),
                                       ('conditioner.embedders.1.model.x', [4]), ('v_pred', [0]), ('ztsnr', [0])])
    os.makedirs(root + '/ckpt')                                             # trainer format: a tensor made huge
    sparse('ckpt/ema.safetensors', [('weight', [1 << 30]), ('bias', [3])],
           {'config': json.dumps({'model': {'type': 'module'}, 'text': {'type': 'none'}}), 'base_side': '16'})
    from diffusers import AutoencoderKL, UNet2DConditionModel               # imported before the baseline
    from diffusers.loaders import single_file_utils
    import transformers
    base = peak()
    out = {'base_mib': base}
    out['header20g'] = [refused(fn, root + '/header20g.safetensors')
                        for fn in (sdxl.load_sdxl, inspect_model, load_safetensors)]
    out['huge'] = [refused(fn, huge) for fn in (sdxl.load_sdxl, inspect_model)]
    out['trainer'] = refused(lambda p: load_trained(p, inner_model=torch.nn.Conv2d(3, 3, 1)), root + '/ckpt')
    out['growth_mib'] = peak() - base
    print(json.dumps(out))
''')


def test_declared_sizes_checked_before_allocation(tmp_path):
    """A 20 GB header, 4 GiB tensors in an SDXL file and in a trainer file (sparse files): refused quickly
    with the peak RSS unchanged (a fresh process, so the peak is this test's)."""
    proc = subprocess.run([sys.executable, '-c', DECLARED_SIZES, str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, 'PYTHONPATH': ROOT})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.splitlines()[-1])
    for seconds, message in out['header20g']:
        assert seconds < 5 and 'header20g.safetensors' in message and "more than safetensors' limit" in message, out
    (seconds, load), (_, inspect) = out['huge']
    assert seconds < 30 and 'huge.safetensors' in load and 'does not fit the unet config' in load, out
    assert inspect == 'ACCEPTED'                         # the header is consistent: inspect reads no tensor
    assert 'weights do not fit' in out['trainer'][1] and 'wrong shapes' in out['trainer'][1], out
    assert out['growth_mib'] < 200, out


def test_sdxl_shapes_checked_against_the_config_before_reading(tmp_path, monkeypatch):
    """A real SDXL file with one tensor declared larger (consistent header): refused by its declared shape,
    no tensor data read."""
    from kdiff_ztsnr import files
    from kdiff_ztsnr.models import sdxl
    from tests.helpers import TINY_KW, write_tiny_sdxl
    from kdiff_ztsnr.models.sdxl.keys import CheckpointError
    from safetensors.torch import load_file
    tiny = write_tiny_sdxl(tmp_path)
    sd = load_file(str(tiny['file']))
    key = sorted(k for k in sd if k.startswith('model.diffusion_model.'))[0]
    sd[key] = torch.zeros(sd[key].numel() * 4 + 1)
    save_file(sd, str(tmp_path / 'grown.safetensors'))

    def no_read(*a, **k):
        raise AssertionError('tensor data read before the shapes were checked')
    monkeypatch.setattr(files.SafetensorsReader, 'read', no_read)
    with pytest.raises(CheckpointError, match=f'wrong shapes: {key}'):
        sdxl.load_sdxl(tmp_path / 'grown.safetensors', **TINY_KW)


# ------------------------------------------------------------------------------------- config as a whole

@pytest.mark.parametrize('patch, phrase', [
    ({'dataset': {'buckets': {'step': 4, 'max_side': 65536, 'min_side': 4, 'max_area': 1 << 30}}},
     'dataset.buckets'),
    ({'dataset': {'buckets': {'max_side': 65536, 'max_area': 1 << 30, 'step': 4096, 'min_side': 4096}},
      'training': {'batch_size': 64}}, 'pixels per batch'),
    ({'text': {'encoders': [{'hidden_size': 16384, 'intermediate_size': 65536, 'num_hidden_layers': 128,
                             'num_attention_heads': 256}]}}, 'text.encoders'),
    ({'text': {'cache': 1 << 24, 'max_chunks': 100}}, 'text.cache'),
    ({'dataset': {'type': 'synthetic', 'synthetic': {'n': 10_000_000, 'sizes': [[4096, 4096]]}}},
     'dataset.synthetic.n'),
    ({'model': {'type': 'sdxl'}, 'training': {'preview_every': 1, 'preview': {'prompts': ['x'] * 64, 'seeds': list(range(64)), 'steps': 1000,
                                                    'width': 8192, 'height': 8192}}}, 'training.preview'),
])
def test_config_bounded_as_a_whole(patch, phrase, tmp_path, capsys):
    with open(os.path.join(ROOT, 'examples', 'train_tiny.json')) as f:
        config = json.load(f)
    for section, values in patch.items():
        config.setdefault(section, {}).update(values)
    config['training']['out_dir'] = str(tmp_path / 'run')
    (tmp_path / 'cfg.json').write_text(json.dumps(config))
    expect_error(['train', '--config', tmp_path / 'cfg.json'], [phrase, 'more than the limit'], capsys)
    assert not (tmp_path / 'run').exists()


def test_canvas_batch_and_steps_bounded_as_a_whole():
    """Each of width, height, -n and --steps within its range, their product not (lifted by --no-size-limit)."""
    from kdiff_ztsnr.generation.params import MAX_WORK, GenerationParams, check_params
    big = GenerationParams(prompt='x', width=4096, height=4096, n_samples=4, steps=2000)
    assert big.width * big.height * big.n_samples * big.steps > MAX_WORK
    with pytest.raises(ValueError, match='pixel-steps'):
        check_params(big)
    check_params(big, limits=False)
    check_params(GenerationParams(prompt='x', width=4096, height=4096, n_samples=4, steps=28))
