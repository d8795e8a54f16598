"""Generation parameters in PNG files: NAI-style JSON and A1111-style text chunks, optionally the alpha channel.

NAI writes tEXt chunks Title/Description/Software/Source and `Comment` (the parameters as JSON); A1111 writes
`parameters` ("prompt\\nNegative prompt: uc\\nSteps: 28, Sampler: …"). The alpha-channel embedding follows
NAI's "stealth" format: the magic `stealth_pngcomp`, a 32-bit bit length, then gzip'd JSON, one bit per pixel
in the alpha LSB, column by column. `read_metadata` reads any of the three back, bounded: at most
MAX_METADATA bytes of JSON/text (a gzip bomb in the alpha channel stops there), MAX_ALPHA_PIXELS pixels
decoded for the alpha channel, and any malformed content is one ValueError naming the file.
"""

import gzip
import json
import re
import zlib
from typing import Optional

import numpy as np
from PIL import Image, PngImagePlugin

STEALTH_MAGIC = b'stealth_pngcomp'
MAX_METADATA = 1 << 20                 # bytes of decompressed JSON / text read back
MAX_ALPHA_PIXELS = 1 << 26             # larger images are not decoded for alpha metadata

# A1111 labels for the parameters (order kept when writing).
A1111_KEYS = {'steps': 'Steps', 'sampler': 'Sampler', 'scale': 'CFG scale', 'seed': 'Seed',
              'cfg_rescale': 'CFG rescale', 'noise_schedule': 'Schedule type', 'ztsnr': 'ZTSNR',
              'sigma_max': 'Sigma max', 'resolution_aware': 'Resolution-aware sigma', 'strength': 'Denoising strength',
              'eta': 'Eta', 'n_samples': 'Batch size', 'model': 'Model'}


def a1111_text(params: dict) -> str:
    """The A1111 `parameters` text of a parameter dict."""
    fields = [f'{label}: {json.dumps(params[k]) if isinstance(params[k], str) else params[k]}'
              for k, label in A1111_KEYS.items() if k in params]
    fields.insert(4, f'Size: {params["width"]}x{params["height"]}')
    return f'{params["prompt"]}\nNegative prompt: {params["uc"]}\n' + ', '.join(fields)


def parse_a1111(text: str) -> dict:
    """Inverse of `a1111_text` (also reads the common fields of A1111's own output)."""
    body, _, last = text.rpartition('\n')
    prompt, _, uc = body.partition('\nNegative prompt: ')
    if not _ and body.startswith('Negative prompt: '):
        prompt, uc = '', body[len('Negative prompt: '):]
    out = {'prompt': prompt, 'uc': uc}
    labels = {v: k for k, v in A1111_KEYS.items()}
    for label, value in re.findall(r'\s*([\w -]+): ("(?:[^"\\]|\\.)*"|[^,]*)(?:,|$)', last):
        if label == 'Size':
            out['width'], out['height'] = map(int, value.split('x'))
        elif label in labels:
            out[labels[label]] = json.loads(value) if value[:1] == '"' else _number(value)
    return out


def _number(s: str):
    for cast in (int, float):
        try:
            return cast(s)
        except ValueError:
            pass
    return {'True': True, 'False': False, 'None': None}.get(s, s)


def _alpha_payload(params: dict) -> bytes:
    data = gzip.compress(json.dumps(params).encode())
    return STEALTH_MAGIC + (len(data) * 8).to_bytes(4, 'big') + data


def check_alpha_fits(params: dict, width: int, height: int) -> None:
    """ValueError (naming --alpha-metadata and the smallest square that fits) if the parameters do not fit."""
    need = len(_alpha_payload(params)) * 8
    if need > width * height:
        side = int(need ** 0.5) + 1
        raise ValueError(f'--alpha-metadata: the parameters need {need} pixels of alpha, a {width}x{height} image '
                         f'has {width * height}; use a canvas of at least {need} pixels (e.g. {side}x{side}, '
                         f'rounded up to the model\'s size multiple) or drop --alpha-metadata')


def embed_alpha(image: Image.Image, params: dict) -> Image.Image:
    """Write the parameters into the alpha channel's least significant bits (NAI stealth format)."""
    bits = np.unpackbits(np.frombuffer(_alpha_payload(params), np.uint8))
    rgba = np.array(image.convert('RGBA'))
    h, w = rgba.shape[:2]
    if len(bits) > h * w:
        raise ValueError(f'the parameters need {len(bits)} pixels of alpha, the image has {h * w}')
    alpha = rgba[..., 3].T.reshape(-1).copy()                      # column by column
    alpha[:len(bits)] = (alpha[:len(bits)] & 0xFE) | bits
    rgba[..., 3] = alpha.reshape(w, h).T
    return Image.fromarray(rgba, 'RGBA')


def _gunzip(data: bytes, limit: int = MAX_METADATA) -> bytes:
    d = zlib.decompressobj(wbits=31)
    out = d.decompress(data, limit)
    if d.unconsumed_tail:
        raise ValueError(f'alpha-channel metadata decompresses to more than {limit} bytes')
    return out


def read_alpha(image: Image.Image) -> Optional[dict]:
    if image.mode != 'RGBA':
        return None
    if image.width * image.height > MAX_ALPHA_PIXELS:
        raise ValueError(f'image of {image.width}x{image.height} pixels is too large to read alpha metadata from')
    lsb = (np.array(image)[..., 3].T.reshape(-1) & 1).astype(np.uint8)
    head = np.packbits(lsb[:(len(STEALTH_MAGIC) + 4) * 8]).tobytes()
    if not head.startswith(STEALTH_MAGIC):
        return None
    n = int.from_bytes(head[len(STEALTH_MAGIC):], 'big')
    start = (len(STEALTH_MAGIC) + 4) * 8
    if n % 8 or start + n > len(lsb):
        raise ValueError(f'alpha-channel metadata claims {n} bits, the image holds {len(lsb) - start}')
    return json.loads(_gunzip(np.packbits(lsb[start:start + n]).tobytes()))


def save_png(image: Image.Image, path: str, params: dict, alpha: bool = False) -> None:
    """Save with NAI-style chunks (Comment = JSON), A1111 `parameters`, optionally the alpha embedding."""
    info = PngImagePlugin.PngInfo()
    info.add_text('Title', 'AI generated image')
    info.add_text('Description', params.get('prompt', ''))
    info.add_text('Software', 'kdiff-ztsnr')
    info.add_text('Source', str(params.get('model', '')))
    info.add_text('Comment', json.dumps(params))
    info.add_text('parameters', a1111_text(params))
    (embed_alpha(image, params) if alpha else image).save(path, format='PNG', pnginfo=info)


def read_metadata(path: str) -> dict:
    """Parameters from a PNG: the JSON Comment, else A1111 `parameters`, else the alpha channel."""
    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_ALPHA_PIXELS:
                raise ValueError(f'{im.width}x{im.height} pixels is larger than {MAX_ALPHA_PIXELS} (not decoded)')
            im.load()
            text = getattr(im, 'text', {}) or {}
            if 'Comment' in text:
                found = _bounded(text['Comment'], json.loads)
            elif 'parameters' in text:
                found = _bounded(text['parameters'], parse_a1111)
            else:
                found = read_alpha(im)
    except (ValueError, TypeError, KeyError, IndexError, RecursionError, EOFError, zlib.error, OSError,
            Image.DecompressionBombError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f'{path}: unreadable generation metadata ({type(e).__name__}: {str(e)[:200]})') from None
    if found is None:
        raise ValueError(f'{path}: no generation parameters found (no Comment/parameters chunk, no alpha data)')
    if not isinstance(found, dict):
        raise ValueError(f'{path}: generation metadata must be a JSON object, got {type(found).__name__}')
    return found


def _bounded(text: str, parse):
    if len(text) > MAX_METADATA:
        raise ValueError(f'metadata text of {len(text)} characters exceeds {MAX_METADATA}')
    return parse(text)
