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
    with pytest.raises(ValueError, match='cut.safetensors: not a readable .safetensors file'):
        load_safetensors(tmp_path / 'cut.safetensors')
