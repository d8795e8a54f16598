"""Generation parameters in PNG files: NAI-style JSON and A1111-style text chunks, optionally the alpha channel.

NAI writes tEXt chunks Title/Description/Software/Source and `Comment` (the parameters as JSON); A1111 writes
`parameters` ("prompt\\nNegative prompt: uc\\nSteps: 28, Sampler: …"). The alpha-channel embedding follows
NAI's "stealth" format: the magic `stealth_pngcomp`, a 32-bit bit length, then gzip'd JSON, one bit per pixel
in the alpha LSB, column by column. `read_metadata` reads any of the three back.
"""

import gzip
import json
import re
from typing import Optional

import numpy as np
from PIL import Image, PngImagePlugin

STEALTH_MAGIC = b'stealth_pngcomp'

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


def embed_alpha(image: Image.Image, params: dict) -> Image.Image:
    """Write the parameters into the alpha channel's least significant bits (NAI stealth format)."""
    data = gzip.compress(json.dumps(params).encode())
    payload = STEALTH_MAGIC + (len(data) * 8).to_bytes(4, 'big') + data
    bits = np.unpackbits(np.frombuffer(payload, np.uint8))
    rgba = np.array(image.convert('RGBA'))
    h, w = rgba.shape[:2]
    if len(bits) > h * w:
        raise ValueError(f'the parameters need {len(bits)} pixels of alpha, the image has {h * w}')
    alpha = rgba[..., 3].T.reshape(-1).copy()                      # column by column
    alpha[:len(bits)] = (alpha[:len(bits)] & 0xFE) | bits
    rgba[..., 3] = alpha.reshape(w, h).T
    return Image.fromarray(rgba, 'RGBA')


def read_alpha(image: Image.Image) -> Optional[dict]:
    if image.mode != 'RGBA':
        return None
    lsb = (np.array(image)[..., 3].T.reshape(-1) & 1).astype(np.uint8)
    head = np.packbits(lsb[:(len(STEALTH_MAGIC) + 4) * 8]).tobytes()
    if not head.startswith(STEALTH_MAGIC):
        return None
    n = int.from_bytes(head[len(STEALTH_MAGIC):], 'big')
    start = (len(STEALTH_MAGIC) + 4) * 8
    return json.loads(gzip.decompress(np.packbits(lsb[start:start + n]).tobytes()))


def save_png(image: Image.Image, path: str, params: dict, alpha: bool = False) -> None:
    """Save with NAI-style chunks (Comment = JSON), A1111 `parameters`, optionally the alpha embedding."""
    info = PngImagePlugin.PngInfo()
    info.add_text('Title', 'AI generated image')
    info.add_text('Description', params.get('prompt', ''))
    info.add_text('Software', 'kdiff-ztsnr')
    info.add_text('Source', str(params.get('model', '')))
    info.add_text('Comment', json.dumps(params))
    info.add_text('parameters', a1111_text(params))
    (embed_alpha(image, params) if alpha else image).save(path, pnginfo=info)


def read_metadata(path: str) -> dict:
    """Parameters from a PNG: the JSON Comment, else A1111 `parameters`, else the alpha channel."""
    with Image.open(path) as im:
        im.load()
        text = getattr(im, 'text', {}) or {}
        if 'Comment' in text:
            return json.loads(text['Comment'])
        if 'parameters' in text:
            return parse_a1111(text['parameters'])
        found = read_alpha(im)
    if found is None:
        raise ValueError(f'{path}: no generation parameters found (no Comment/parameters chunk, no alpha data)')
    return found
