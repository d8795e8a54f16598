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
from pathlib import Path
import zlib
from typing import Optional

import numpy as np
from PIL import Image, PngImagePlugin

STEALTH_MAGIC = b'stealth_pngcomp'
MAX_METADATA = 1 << 20                 # bytes of decompressed JSON / text read back
MAX_ALPHA_PIXELS = 1 << 26             # larger images are not decoded for alpha metadata

# A1111 labels for the parameters (order kept when writing); A1111/Forge's own fields first, as they write them.
A1111_KEYS = {'steps': 'Steps', 'sampler': 'Sampler', 'noise_schedule': 'Schedule type', 'scale': 'CFG scale',
              'seed': 'Seed', 'model': 'Model', 'strength': 'Denoising strength', 'cfg_rescale': 'CFG rescale',
              'ztsnr': 'ZTSNR', 'sigma_max': 'Sigma max', 'resolution_aware': 'Resolution-aware sigma', 'eta': 'Eta',
              'quantize_timesteps': 'Integer timesteps',
              'n_samples': 'Batch size', 'loras': 'LoRAs'}   # LoRAs: [[file, weight], …] as JSON (ours)
# A1111/Forge sampler and "Schedule type" names (what they, Civitai and A1111's PNG Info read back).
A1111_SAMPLERS = {'euler': 'Euler', 'euler_ancestral': 'Euler a', 'heun': 'Heun', 'dpm_2': 'DPM2',
                  'dpm_2_ancestral': 'DPM2 a', 'lms': 'LMS', 'dpm_fast': 'DPM fast', 'dpm_adaptive': 'DPM adaptive',
                  'dpmpp_2s_ancestral': 'DPM++ 2S a', 'dpmpp_sde': 'DPM++ SDE', 'dpmpp_2m': 'DPM++ 2M',
                  'dpmpp_2m_sde': 'DPM++ 2M SDE', 'dpmpp_3m_sde': 'DPM++ 3M SDE'}
A1111_SCHEDULES = {'native': 'Uniform', 'karras': 'Karras', 'exponential': 'Exponential',
                   'polyexponential': 'Polyexponential', 'kl_optimal': 'KL Optimal', 'normal': 'Normal',
                   'simple': 'Simple', 'sgm_uniform': 'SGM Uniform', 'beta': 'Beta', 'trailing': 'Trailing',
                   'recommended': 'Karras'}   # recommended: Karras from ∞ (schedule_policy), ρ and top per sampler
ZTSNR_NOISE_SCHEDULE = 'Zero Terminal SNR'        # Forge/A1111's "Noise Schedule" value for ZTSNR sampling
_MODEL_HASHES: dict = {}


def model_hash(model) -> Optional[str]:
    """A1111's "Model hash" (AutoV2: the first 10 hex digits of the file's SHA-256), None if not a file."""
    import hashlib
    import os
    if not model or not os.path.isfile(str(model)):
        return None
    st = os.stat(str(model))
    key = (os.path.abspath(str(model)), st.st_size, st.st_mtime)
    if key not in _MODEL_HASHES:
        h = hashlib.sha256()
        with open(str(model), 'rb') as f:
            for block in iter(lambda: f.read(1 << 20), b''):
                h.update(block)
        _MODEL_HASHES[key] = h.hexdigest()[:10]
    return _MODEL_HASHES[key]


def _quote(value) -> str:
    """A1111's rule: a value holding ',', ':' or a newline is written as a JSON string."""
    text = str(value)
    return json.dumps(text) if any(c in text for c in ',:\n"') else text


def _a1111_value(key: str, value):
    if key == 'sampler':
        return A1111_SAMPLERS.get(value, value)
    if key == 'noise_schedule':
        return A1111_SCHEDULES.get(value, value)
    if key == 'loras':
        return json.dumps(value)
    if key == 'model' and value != 'embedded':
        return Path(str(value)).stem or value                       # A1111 writes the checkpoint's name
    return value


def a1111_text(params: dict) -> str:
    """The A1111 `parameters` text of a parameter dict, with the fields A1111/Forge and Civitai read back."""
    fields = [f'{label}: {_quote(_a1111_value(k, params[k]))}' for k, label in A1111_KEYS.items()
              if k in params and (k != 'loras' or params[k])]
    fields.insert(5, f'Size: {params["width"]}x{params["height"]}')
    digest = params.get('model_hash') or model_hash(params.get('model'))
    if digest:
        fields.insert(6, f'Model hash: {digest}')
    fields += ['RNG: CPU', f'Noise Schedule: {ZTSNR_NOISE_SCHEDULE}', 'Version: kdiff-ztsnr']
    return f'{params["prompt"]}\nNegative prompt: {params["uc"]}\n' + ', '.join(fields)


def _from_a1111(out: dict, label: str, value) -> None:
    """One A1111 field into parameters: package names for samplers/schedules, legacy "DPM++ 2M Karras" split."""
    if label == 'Sampler':
        value = str(value)
        for kind in ('Karras', 'Exponential'):                      # A1111 < 1.9: the schedule in the name
            if value.endswith(' ' + kind):
                value, out['noise_schedule'] = value[:-len(kind) - 1], kind.lower()
        out['sampler'] = {v: k for k, v in A1111_SAMPLERS.items()}.get(value, value)
    elif label == 'Schedule type':
        names = {v: k for k, v in A1111_SCHEDULES.items() if k != 'recommended'}
        if value != 'Automatic':                                     # Automatic: the sampler's default
            out['noise_schedule'] = names.get(value, value)
    elif label == 'Size':
        out['width'], out['height'] = map(int, str(value).split('x'))
    elif label == 'Model hash':
        out['model_hash'] = str(value)
    elif label == 'RNG':
        out['rng'] = value
    elif label == 'LoRAs':
        out['loras'] = json.loads(value)
    elif label == 'Noise Schedule':
        out['zero_terminal_snr'] = value == ZTSNR_NOISE_SCHEDULE
    elif label in _LABELS:
        out[_LABELS[label]] = value


_LABELS = {v: k for k, v in A1111_KEYS.items()}


def parse_a1111(text: str) -> dict:
    """Parameters from A1111/Forge infotext (ours or theirs): prompt, negative, then "Label: value" fields."""
    body, _, last = text.rpartition('\n')
    prompt, _, uc = body.partition('\nNegative prompt: ')
    if not _ and body.startswith('Negative prompt: '):
        prompt, uc = '', body[len('Negative prompt: '):]
    out = {'prompt': prompt, 'uc': uc, 'loras': []}
    for label, value in re.findall(r'\s*([\w .+/()-]+): ("(?:[^"\\]|\\.)*"|[^,]*)(?:,|$)', last):
        _from_a1111(out, label.strip(), json.loads(value) if value[:1] == '"' else _number(value))
    return out


def from_nai(params: dict) -> dict:
    """NAI `Comment` JSON into parameters: NAI's sampler names k_euler_ancestral, k_dpmpp_2m, … lose the k_."""
    out = dict(params)
    sampler = out.get('sampler')
    if isinstance(sampler, str) and sampler.startswith('k_') and sampler[2:] in A1111_SAMPLERS:
        out['sampler'] = sampler[2:]
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
    """Parameters from a PNG: the JSON Comment (ours or NAI's), else A1111/Forge `parameters`, else the alpha
    channel. A1111 names come back as the package's (Euler a → euler_ancestral, Karras → karras, …)."""
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
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError, EOFError, zlib.error,
            OSError, Image.DecompressionBombError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f'{path}: unreadable generation metadata ({type(e).__name__}: {str(e)[:200]})') from None
    if found is None:
        raise ValueError(f'{path}: no generation parameters found (no Comment/parameters chunk, no alpha data)')
    if not isinstance(found, dict):
        raise ValueError(f'{path}: generation metadata must be a JSON object, got {type(found).__name__}')
    return from_nai(found) if 'Comment' in text else found


def _bounded(text: str, parse):
    if len(text) > MAX_METADATA:
        raise ValueError(f'metadata text of {len(text)} characters exceeds {MAX_METADATA}')
    return parse(text)
