"""Fuzzing everything that parses untrusted bytes (hypothesis, bounded examples and time): PNG text and alpha
metadata, A1111 infotext, safetensors headers. Each input is either read or refused with one ValueError
(naming the file where there is one) — never another exception, a hang or unbounded memory."""

import io
import json
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image, PngImagePlugin

from kdiff_ztsnr.generation.metadata import STEALTH_MAGIC, parse_a1111, read_metadata
from kdiff_ztsnr.generation.params import check_fields
from kdiff_ztsnr.files import load_safetensors
from kdiff_ztsnr.models.trained import read_metadata as read_st_metadata

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
A1111 = st.text(st.characters(codec='utf-8'), max_size=300) | st.builds(
    lambda p, fields: f'{p}\nNegative prompt: x\n' + ', '.join(f'{k}: {v}' for k, v in fields),
    st.text(max_size=20), st.lists(st.tuples(st.sampled_from(['Steps', 'Size', 'Seed', 'CFG scale', 'Sampler',
                                                             'Eta', 'Batch size', 'Sigma max', 'Model']),
                                             st.text(max_size=12)), max_size=6))


def png_bytes(text: dict, alpha=None) -> bytes:
    info = PngImagePlugin.PngInfo()
    for k, v in text.items():
        info.add_text(k, v)
    size = (24, 24) if alpha is None else alpha.shape[::-1]
    im = Image.new('RGBA' if alpha is not None else 'RGB', size)
    if alpha is not None:
        im.putalpha(Image.fromarray(alpha))
    buf = io.BytesIO()
    im.save(buf, format='PNG', pnginfo=info)
    return buf.getvalue()


def read_or_refuse(path):
    """read_metadata, then the parameter check of --from-image: only ValueError may come out."""
    try:
        meta = read_metadata(path)
    except ValueError as e:
        assert str(path) in str(e), e
        return
    assert isinstance(meta, dict)
    try:
        check_fields(meta)
    except ValueError as e:
        assert 'must be' in str(e)


@FAST
@given(A1111)
def test_fuzz_a1111_text(tmp_path, text):
    try:
        out = parse_a1111(text)
    except (ValueError, TypeError, IndexError, RecursionError):
        out = None                                        # read_metadata turns these into one ValueError
    assert out is None or isinstance(out, dict)
    path = tmp_path / 'a.png'
    path.write_bytes(png_bytes({'parameters': text}))
    read_or_refuse(path)


JSONISH = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
                       lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
                       max_leaves=12)


@FAST
@given(st.one_of(st.text(max_size=200), JSONISH.map(json.dumps),
                 st.dictionaries(st.sampled_from(['prompt', 'steps', 'width', 'seed', 'sampler', 'scale', 'eta']),
                                 JSONISH, max_size=4).map(json.dumps)))
def test_fuzz_comment_json(tmp_path, text):
    path = tmp_path / 'c.png'
    path.write_bytes(png_bytes({'Comment': text}))
    read_or_refuse(path)


@FAST
@given(st.binary(max_size=120), st.integers(0, 2 ** 32 - 1))
def test_fuzz_alpha_channel(tmp_path, body, claimed_bits):
    payload = STEALTH_MAGIC + claimed_bits.to_bytes(4, 'big') + body
    bits = np.unpackbits(np.frombuffer(payload, np.uint8))
    alpha = np.full(64 * 64, 255, np.uint8)
    alpha[:len(bits)] = 254 | bits
    path = tmp_path / 's.png'
    path.write_bytes(png_bytes({}, alpha.reshape(64, 64).T.copy()))
    read_or_refuse(path)


@FAST
@given(st.binary(max_size=400))
def test_fuzz_png_bytes(tmp_path, data):
    path = tmp_path / 'r.png'
    path.write_bytes(png_bytes({'Comment': '{"prompt": "x"}'})[:8] + data if data[:1] != b'\x89' else data)
    read_or_refuse(path)


def safetensors_bytes(header) -> bytes:
    h = (header if isinstance(header, bytes) else json.dumps(header).encode())
    return struct.pack('<Q', len(h)) + h + b'\0' * 16


@FAST
@given(st.one_of(st.binary(max_size=64),
                 st.binary(max_size=40).map(safetensors_bytes),
                 JSONISH.map(safetensors_bytes),
                 st.builds(lambda dt, shape, off, meta: safetensors_bytes(
                     {'w': {'dtype': dt, 'shape': shape, 'data_offsets': off}, '__metadata__': meta}),
                     st.sampled_from(['F32', 'F16', 'I64', 'XX']), st.lists(st.integers(-2, 2 ** 40), max_size=3),
                     st.lists(st.integers(-1, 64), max_size=3),
                     st.dictionaries(st.sampled_from(['config', 'step']), st.text(max_size=30), max_size=2))))
def test_fuzz_safetensors(tmp_path, data):
    path = tmp_path / 'm.safetensors'
    path.write_bytes(data)
    for read in (load_safetensors, read_st_metadata):
        try:
            read(path)
        except ValueError as e:
            assert 'm.safetensors' in str(e), e


@pytest.mark.parametrize('cut', [0, 5, 8, 20, -8])
def test_truncated_safetensors(tmp_path, cut):
    import torch
    from safetensors.torch import save_file
    save_file({'w': torch.ones(4, 4)}, str(tmp_path / 'ok.safetensors'), metadata={'config': '{}'})
    data = (tmp_path / 'ok.safetensors').read_bytes()
    (tmp_path / 'cut.safetensors').write_bytes(data[:cut])
    with pytest.raises(ValueError, match='cut.safetensors: not a valid .safetensors file'):
        load_safetensors(tmp_path / 'cut.safetensors')


DTYPES = ['F64', 'F32', 'F16', 'BF16', 'F8_E4M3', 'F8_E5M2', 'I64', 'I32', 'I16', 'I8', 'U8', 'BOOL', 'C64', 'U16',
          'F4', 'XX', '', 3]
SIZES = st.integers(0, 6) | st.sampled_from([-4, 2 ** 31, 2 ** 40, 2 ** 63, 2 ** 64 - 1]) | st.just('4')
ENTRY = st.fixed_dictionaries({'dtype': st.sampled_from(DTYPES), 'shape': st.lists(SIZES, max_size=3),
                               'data_offsets': st.lists(st.integers(-1, 80) | st.sampled_from([2 ** 42, 2 ** 64]),
                                                        min_size=0, max_size=3)}) | JSONISH


READ_OK = []            # files the fuzz read successfully (checked below: the generator reaches valid files)


@st.composite
def tiled_entries(draw):
    """Entries whose offsets tile the data (valid, as the library requires), then one of them perturbed."""
    header, end = {}, 0
    for i in range(draw(st.integers(0, 4))):
        dtype = draw(st.sampled_from(['F32', 'F16', 'I8', 'BOOL', 'BF16']))
        shape = draw(st.lists(st.integers(0, 3), max_size=2))
        n = int(np.prod(shape)) * {'F32': 4, 'F16': 2, 'BF16': 2}.get(dtype, 1)
        header[f't{i}'] = {'dtype': dtype, 'shape': shape, 'data_offsets': [end, end + n]}
        end += n
    if header and draw(st.booleans()):
        e = header[draw(st.sampled_from(sorted(header)))]
        field = draw(st.sampled_from(['dtype', 'shape', 'data_offsets']))
        e[field] = draw({'dtype': st.sampled_from(DTYPES), 'shape': st.lists(SIZES, max_size=3),
                         'data_offsets': st.lists(st.integers(-1, 80) | st.just(2 ** 42), max_size=3)}[field])
    return header, end + draw(st.integers(-4, 4))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(st.one_of(
    tiled_entries(),
    st.tuples(st.dictionaries(st.text(max_size=6), ENTRY, max_size=4), st.integers(0, 64)),
    st.tuples(st.dictionaries(st.sampled_from(['__metadata__', 'w']),
                              st.dictionaries(st.text(max_size=6), JSONISH, max_size=3) | JSONISH, max_size=2),
              st.integers(0, 16))),
       st.sampled_from([None, 0, 7, 2 ** 27, 2 ** 60, 2 ** 64 - 1]))
def test_fuzz_model_reader(tmp_path, case, length):
    """The model reader over generated headers, entries and offsets: a file is read (tensors no larger than the
    file) or refused with one ValueError naming it; never another exception, a hang or a large allocation."""
    import signal
    from kdiff_ztsnr.files import SafetensorsReader
    from kdiff_ztsnr.models.sdxl.loading import inspect_model
    header, n_data = case
    h = json.dumps(header).encode()
    path = tmp_path / 'f.safetensors'
    data = (bytes(range(256)) * (1 + max(n_data, 0) // 256))[:max(n_data, 0)]
    path.write_bytes(struct.pack('<Q', len(h) if length is None else length) + h + data)
    size = path.stat().st_size

    def hang(*_):
        raise TimeoutError('the reader hung')
    old = signal.signal(signal.SIGALRM, hang)
    signal.alarm(30)
    try:
        for read in (lambda p: SafetensorsReader(p).read_all(), load_safetensors, inspect_model, read_st_metadata):
            try:
                out = read(path)
            except ValueError as e:
                assert 'f.safetensors' in str(e) and '\n' not in str(e), e
                continue
            if read is load_safetensors:
                READ_OK.append(len(out))
                assert sum(t.numel() * t.element_size() for t in out.values()) <= size
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_fuzz_model_reader_reads_valid_files():
    """The fuzz above is not only refusals: some generated files are valid and read (run after it)."""
    if not READ_OK:
        pytest.skip('run together with test_fuzz_model_reader')
    assert len(READ_OK) >= 5
