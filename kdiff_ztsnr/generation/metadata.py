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

from . import names
from ..errors import ParamError
from .params import OLD_NAMES

STEALTH_MAGIC = b'stealth_pngcomp'
MAX_METADATA = 1 << 20                 # bytes of decompressed JSON / text read back
MAX_ALPHA_PIXELS = 1 << 26             # larger images are not decoded for alpha metadata

# The keys of the JSON (Comment chunk, alpha channel) that differ from the parameters' names: the file format
# keeps the parameters' earlier names (params.OLD_NAMES). Written by save_png, read back by read_metadata.
FILE_KEYS = {new: old for old, new in OLD_NAMES.items()}
# A1111 labels for the parameters (order kept when writing); A1111/Forge's own fields first, as they write them.
A1111_KEYS = {'steps': 'Steps', 'sampler': 'Sampler', 'noise_schedule': 'Schedule type', 'scale': 'CFG scale',
              'seed': 'Seed', 'model': 'Model', 'strength': 'Denoising strength', 'cfg_rescale': 'CFG rescale',
              'regime': 'ZTSNR', 'sigma_start': 'Sigma max', 'resolution_aware': 'Resolution-aware sigma', 'eta': 'Eta',
              'quantize_timesteps': 'Integer timesteps',
              'n_samples': 'Batch size', 'loras': 'LoRAs'}   # LoRAs: [[file, weight], …] as JSON (ours)
OWN_SCHEDULE = 'ZTSNR schedule'   # the package's schedule when A1111's list has no such family (trailing, recommended)
ZTSNR_NOISE_SCHEDULE = 'Zero Terminal SNR'        # Forge/A1111's "Noise Schedule" value for ZTSNR sampling
INTS, FLOATS = {'Steps', 'Seed', 'Batch size', 'Hires steps', 'Clip skip'}, {
    'CFG scale', 'Denoising strength', 'CFG rescale', 'Sigma max', 'Eta', 'Hires upscale'}
# A1111's grammar of the parameter line: "Key: value" pairs separated by commas; a key starts with a word character
# and holds word characters, spaces, '-' and '/'; a value is a JSON string or runs to the next comma.
_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:[^"\\]|\\.)+"|[^,]*)(?:,|$)')
_SIZE = re.compile(r'^(\d+)x(\d+)$')
_LORA_TAG = re.compile(r'<lora:([^:>]+)(?::([^:>]*))?(?::[^>]*)?>')
_MODEL_HASHES: dict = {}


def to_file(params: dict) -> dict:
    """Parameters as the file's JSON keys them (FILE_KEYS), in their order."""
    return {FILE_KEYS.get(k, k): v for k, v in params.items()}


def from_file(found: dict) -> dict:
    """A file's JSON keys as the parameters' names (OLD_NAMES), in their order."""
    return {OLD_NAMES.get(k, k): v for k, v in found.items()}


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


def lora_hash(path) -> str:
    """A1111's "Lora hashes" entry for a .safetensors file: the first 12 hex digits of the SHA-256 of the bytes
    after the header (the kohya/additional-networks hash; the header's metadata does not change it)."""
    import hashlib
    with open(str(path), 'rb') as f:
        n = int.from_bytes(f.read(8), 'little')
        f.seek(8 + n)
        h = hashlib.sha256()
        for block in iter(lambda: f.read(1 << 20), b''):
            h.update(block)
    return h.hexdigest()[:12]


def _quote(value) -> str:
    """A1111's rule: a value holding ',', ':' or a newline is written as a JSON string (here also '"' and a value
    with outer spaces, which its reader would strip)."""
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ',:\n"') or text != text.strip() else text


def _a1111_fields(params: dict) -> list:
    """(label, value) for every parameter with a value: no None, no strength on text-to-image (strength 1)."""
    out = []
    for k, label in A1111_KEYS.items():
        value = params.get(k)
        if value is None or (k == 'loras' and not value) or (k == 'strength' and value >= 1):
            continue
        if k == 'sampler':
            value = names.A1111_SAMPLERS.get(value, value)
        elif k == 'noise_schedule':
            if value not in names.A1111_SCHEDULES:
                out.append((OWN_SCHEDULE, value))
                continue
            value = names.A1111_SCHEDULES[value]
        elif k == 'loras':
            value = json.dumps(value)
        elif k == 'model' and value != 'embedded':
            value = Path(str(value)).stem or value                      # A1111 writes the checkpoint's name
        out.append((label, value))
    return out


def a1111_text(params: dict) -> str:
    """The A1111 `parameters` text of a parameter dict, with the fields A1111/Forge and Civitai read back."""
    fields = [f'{label}: {_quote(v)}' for label, v in _a1111_fields(params)]
    fields.insert(5, f'Size: {params["width"]}x{params["height"]}')
    digest = params.get('model_hash') or model_hash(params.get('model'))
    if digest:
        fields.insert(6, f'Model hash: {digest}')
    hashes = [f'{Path(f).stem.replace(":", "").replace(",", "")}: {lora_hash(f)}' for f, _ in params.get('loras') or ()
              if str(f).endswith('.safetensors') and Path(f).is_file()]
    if hashes:
        fields.append(f'Lora hashes: {_quote(", ".join(hashes))}')
    fields += ['RNG: CPU', f'Noise Schedule: {ZTSNR_NOISE_SCHEDULE}', 'Version: kdiff-ztsnr']
    uc = f'\nNegative prompt: {params["uc"]}' if params.get('uc') else ''
    return f'{params["prompt"]}{uc}\n' + ', '.join(fields)


def _typed(label: str, value: str):
    """Values stay text (hashes, names) except the numeric and boolean fields, as A1111 casts them on paste."""
    cast = int if label in INTS else float if label in FLOATS else None
    if cast is not None:
        try:
            return cast(value)
        except ValueError:
            return value                                             # check_fields names the bad value
    return ({'True': True, 'False': False}.get(value, value) if label in ('Resolution-aware sigma', 'Integer timesteps')
            else value)


def _from_a1111(out: dict, label: str, value) -> None:
    """One A1111 field into parameters: package names for samplers/schedules, legacy "DPM++ 2M Karras" split."""
    if label == 'Sampler':
        try:
            out['sampler'], schedule = names.resolve_sampler(value)
            if schedule:
                out.setdefault('noise_schedule', schedule)
        except ValueError:
            out['sampler'] = value                                   # check_fields names it
    elif label in ('Schedule type', OWN_SCHEDULE):
        if value != names.AUTOMATIC:                                  # Automatic: the sampler's default
            try:
                out['noise_schedule'] = names.resolve_schedule(value)
            except ValueError:
                out['noise_schedule'] = value
    elif label == 'Model hash':
        out['model_hash'] = value
    elif label == 'RNG':
        out['rng'] = value
    elif label == 'LoRAs':
        out['loras'] = json.loads(value)
    elif label == 'Lora hashes':
        out['lora_hashes'] = dict(p.split(': ', 1) for p in value.split(', ') if ': ' in p)
    elif label == 'Noise Schedule':
        out['zero_terminal_snr'] = value == ZTSNR_NOISE_SCHEDULE
    elif label.startswith('Hires '):
        out.setdefault('hires', {})[label] = value
    elif label in _LABELS:
        out[_LABELS[label]] = value
    else:
        out.setdefault('a1111', {})[label] = value                   # shown by inspect, not used


_LABELS = {v: k for k, v in A1111_KEYS.items()}


def split_infotext(text: str) -> tuple[str, str, list]:
    """A1111's layout: prompt lines, then from "Negative prompt:" the negative lines (each line stripped), then
    the parameter line if it holds at least 3 pairs; returns (prompt, negative, [(label, raw value), …])."""
    *lines, last = text.strip().split('\n')
    pairs = _PARAM.findall(last)
    if len(pairs) < 3:
        lines, pairs = lines + [last], []
    prompt, uc, negative = [], [], False
    for line in lines:
        line = line.strip()
        if line.startswith('Negative prompt:'):
            negative, line = True, line[len('Negative prompt:'):].strip()
        (uc if negative else prompt).append(line)
    return '\n'.join(prompt), '\n'.join(uc), pairs


def parse_a1111(text: str, lora_dir: Optional[str] = None) -> dict:
    """Parameters from A1111/Forge infotext (ours or theirs), read by A1111's rules. Values are text except the
    numeric fields; Hires-fix fields go to 'hires' (with a warning: a second pass, not img2img strength);
    <lora:NAME:W> tags leave the prompt and resolve against `lora_dir` (checked against "Lora hashes")."""
    prompt, uc, pairs = split_infotext(text)
    out = {'prompt': prompt, 'uc': uc, 'loras': []}
    for label, value in pairs:
        value = json.loads(value) if value[:1] == '"' and value[-1:] == '"' else value
        size = _SIZE.match(value)
        if label == 'Size':
            if not size:
                raise ValueError(f'Size: {value[:40]!r} is not WIDTHxHEIGHT')
            out['width'], out['height'] = int(size.group(1)), int(size.group(2))
        elif size and label.startswith('Hires '):
            out.setdefault('hires', {})[label] = value
        else:
            _from_a1111(out, label, _typed(label, value))
    if 'hires' in out:
        _hires_to_second_pass(out)
    if _LORA_TAG.search(out['prompt']):
        _resolve_lora_tags(out, lora_dir)
    return out


def _hires_to_second_pass(out: dict) -> None:
    """A Hires-fix txt2img: its Denoising strength belongs to the second (upscaled img2img) pass."""
    import warnings
    hires = out['hires']
    if 'strength' in out:
        hires['Denoising strength'] = out.pop('strength')
    scale = hires.get('Hires upscale')
    w, h = out.get('width'), out.get('height')
    size = hires.get('Hires resize') or (f'{round(w * float(scale))}x{round(h * float(scale))}'
                                         if isinstance(scale, float) and w and h else '?x?')
    tw, _, th = str(size).partition('x')
    shown = ', '.join(f'{k.removeprefix("Hires ")} {v}' for k, v in hires.items())
    warnings.warn(f'A1111 Hires fix ({shown}) is a second, upscaled '
                  f'img2img pass: these parameters re-run the first pass ({w}x{h}); for the second, run '
                  f"`sample --from-image … --init-image FIRST.png --width {tw} --height {th} --strength "
                  f"{hires.get('Denoising strength', 0.5)}` (or --enhance: ×1.5 at strength 0.5)", A1111Warning)


def _resolve_lora_tags(out: dict, lora_dir: Optional[str]) -> None:
    """<lora:NAME:W> → [NAME.safetensors under lora_dir, W] in 'loras' (hash-checked), else in 'lora_tags'."""
    import warnings
    tags = [(name, _weight(w)) for name, w in _LORA_TAG.findall(out['prompt'])]
    out['prompt'] = _LORA_TAG.sub('', out['prompt'])               # A1111 removes the tags before encoding
    found = {p.stem: p for p in sorted(Path(lora_dir).rglob('*.safetensors'))} if lora_dir else {}
    missing = []
    for name, weight in tags:
        if name not in found or not isinstance(weight, float):
            missing.append([name, weight])
            continue
        out['loras'].append([str(found[name]), weight])
        want = out.get('lora_hashes', {}).get(name)
        if want and lora_hash(found[name]) != want[:12]:
            warnings.warn(f'LoRA {name}: {found[name]} has hash {lora_hash(found[name])}, the image was made with '
                          f'{want} (a different file of that name)', A1111Warning)
    if missing:
        out['lora_tags'] = missing
        where = f'no such .safetensors under --lora-dir {lora_dir}' if lora_dir else 'give --lora-dir DIR'
        warnings.warn(f'LoRA tags in the prompt not applied ({where}): '
                      f'{", ".join(f"{n}:{w}" for n, w in missing)}; or pass --lora FILE:WEIGHT', A1111Warning)


def _weight(text: str):
    """A tag's weight (1 if none given); a non-number stays text and the tag is reported, not applied."""
    try:
        return float(text) if text else 1.
    except ValueError:
        return text


class A1111Warning(UserWarning):
    """A1111 infotext read with a change the user should know about (Hires fix, unresolved LoRA tags)."""


def from_nai(params: dict) -> dict:
    """NAI `Comment` JSON into parameters: NAI's sampler names k_euler_ancestral, k_dpmpp_2m, … lose the k_."""
    out = dict(params)
    sampler = out.get('sampler')
    if isinstance(sampler, str) and sampler.startswith('k_') and sampler[2:] in names.A1111_SAMPLERS:
        out['sampler'] = sampler[2:]
    return out


def _alpha_payload(params: dict) -> bytes:
    data = gzip.compress(json.dumps(to_file(params)).encode())
    return STEALTH_MAGIC + (len(data) * 8).to_bytes(4, 'big') + data


def check_alpha_fits(params: dict, width: int, height: int) -> None:
    """ParamError (naming the alpha option and the smallest square that fits) if the parameters do not fit."""
    need = len(_alpha_payload(params)) * 8
    if need > width * height:
        side = int(need ** 0.5) + 1
        raise ParamError(f'{{alpha}}: the parameters need {need} pixels of alpha, a {width}x{height} image '
                         f'has {width * height}; use a canvas of at least {need} pixels (e.g. {side}x{side}, '
                         f'rounded up to the model\'s size multiple) or drop {{alpha=True}}')


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
    found = json.loads(_gunzip(np.packbits(lsb[start:start + n]).tobytes()))
    return from_file(found) if isinstance(found, dict) else found


def save_png(image: Image.Image, path: str, params: dict, alpha: bool = False) -> None:
    """Save with NAI-style chunks (Comment = JSON), A1111 `parameters`, optionally the alpha embedding."""
    info = PngImagePlugin.PngInfo()
    info.add_text('Title', 'AI generated image')
    info.add_text('Description', params.get('prompt', ''))
    info.add_text('Software', 'kdiff-ztsnr')
    info.add_text('Source', str(params.get('model', '')))
    info.add_text('Comment', json.dumps(to_file(params)))
    info.add_text('parameters', a1111_text(params))
    (embed_alpha(image, params) if alpha else image).save(path, format='PNG', pnginfo=info)


def read_metadata(path: str, lora_dir: Optional[str] = None) -> dict:
    """Parameters from a PNG: the JSON Comment (ours or NAI's), else A1111/Forge `parameters`, else the alpha
    channel. A1111 names come back as the package's (Euler a → euler_ancestral, Karras → karras, …)."""
    from ..untrusted import regular_file
    regular_file(path, 'PNG image')                        # a FIFO or device would block Image.open
    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_ALPHA_PIXELS:
                raise ValueError(f'{im.width}x{im.height} pixels is larger than {MAX_ALPHA_PIXELS} (not decoded)')
            im.load()
            text = getattr(im, 'text', {}) or {}
            if 'Comment' in text:
                found = _bounded(text['Comment'], json.loads)
                found = from_file(found) if isinstance(found, dict) else found
            elif 'parameters' in text:
                found = _bounded(text['parameters'], lambda t: parse_a1111(t, lora_dir))
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
