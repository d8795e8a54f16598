"""LoRA files checked before any model loads: the ``--lora FILE[:WEIGHT]`` spelling, the file, its format, its
keys for SDXL (kohya ``lora_unet_``/``lora_te1_``/``lora_te2_``, diffusers ``unet.``/``text_encoder[_2].``),
paired down/up ranks and finite values; and, once the model is loaded but before any adapter is attached, every
LoRA matrix against the layer it targets.

Each problem is one ValueError naming the file.
"""

import math
import os
import re
import stat
from pathlib import Path

import torch

from ...errors import ParamError, ParamFileError, quote

MAX_LORAS = 16                        # = generation.params.MAX_LORAS (kept equal by a test)
MAX_WEIGHT = 10.                      # = generation.params' bound on a --lora weight
MAX_VALUE = 1e4                       # |entry| of a LoRA matrix; trained ones are O(1)
PREFIXES = ('lora_unet_', 'lora_te1_', 'lora_te2_', 'unet.', 'text_encoder.', 'text_encoder_2.')
SD1_TEXT = 'lora_te_'                 # SD1.x/2.x: one text encoder
PART = re.compile(r'^(?P<module>.+?)[._](?P<part>lora_down|lora_up|lora_A|lora_B|lora\.down|lora\.up)'
                  r'(?:\.[^.]+)?\.weight$|^(?P<amodule>.+)\.alpha$')


def parse_lora(spec: str) -> tuple[str, float]:
    """'FILE[:WEIGHT]' → (FILE, WEIGHT): split at the last ':' only when the tail is a number and the head is
    non-empty; else the whole spec is the file at weight 1. 'x:2:1' names a file 'x:2' at weight 1."""
    path, sep, tail = spec.rpartition(':')
    if sep and path:
        try:
            weight = float(tail)
        except ValueError:
            return spec, 1.
        if not Path(path).exists() and Path(spec).exists():    # a file literally named 'x:2'
            return spec, 1.
        return path, weight
    return spec, 1.


def check_spec(spec: str) -> tuple[str, float]:
    """parse_lora plus the checks that need no model: weight finite and bounded, the file a readable LoRA."""
    path, weight = parse_lora(spec)
    if not math.isfinite(weight) or abs(weight) > MAX_WEIGHT:
        raise ParamError(f'{{loras={quote(spec)}}}: the weight must be a finite number in [-{MAX_WEIGHT:g}, '
                         f'{MAX_WEIGHT:g}], got {weight}')
    if not os.path.lexists(path):
        head, sep, tail = spec.rpartition(':')
        hint = (f" ('{tail}' after the last ':' is not a number, so it was read as part of the name)"
                if sep and head and os.path.exists(head) else '')
        raise ParamFileError(f'LoRA file not found: {quote(path)}{quote(hint)}; {{loras}} takes existing files')
    check_lora_file(path)
    return path, weight


def check_lora_file(path: str | os.PathLike) -> dict:
    """A LoRA safetensors file for SDXL: keys, paired ranks, finite bounded values. Returns {module: rank}."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise ValueError(f'{path}: not a regular file (a LoRA is a .safetensors file)')
    tensors = _read(path)
    if not tensors:
        raise ValueError(f'{path}: holds no tensors (not a LoRA file)')
    modules: dict[str, dict] = {}
    for key, t in tensors.items():
        if key.startswith(SD1_TEXT):
            raise ValueError(f'{path}: key {key!r} is an SD1.x/2.x text-encoder LoRA key (lora_te_*); this LoRA is '
                             f'for a one-encoder model, not SDXL (lora_te1_*/lora_te2_*)')
        m = PART.match(key)
        if not key.startswith(PREFIXES) or m is None:
            raise ValueError(f'{path}: key {key!r} is not an SDXL LoRA key (expected {", ".join(PREFIXES)}… '
                             f'with lora_down/lora_up/lora_A/lora_B weights or alpha)')
        name = m.group('module') or m.group('amodule')
        modules.setdefault(name, {})[m.group('part') or 'alpha'] = t
        _check_values(path, key, t)
    return {name: _check_pair(path, name, parts) for name, parts in modules.items()}


def _read(path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ValueError(f'{path}: not a readable .safetensors LoRA file ({str(e)[:150]}); pickle .pt/.ckpt '
                         f'LoRAs are refused') from None


def _check_values(path, key: str, t: torch.Tensor) -> None:
    if key.endswith('.alpha') and not t.is_complex() and t.dtype != torch.bool:
        t = t.double()                                   # kohya writes alpha as an integer too
    if not t.is_floating_point():
        raise ValueError(f'{path}: {key} has dtype {t.dtype}; LoRA matrices are floating point')
    bad = ~torch.isfinite(t)
    if bad.any():
        raise ValueError(f'{path}: {key} holds {int(bad.sum())} non-finite values (NaN or inf)')
    top = float(t.abs().max()) if t.numel() else 0.
    if top > (1e6 if key.endswith('.alpha') else MAX_VALUE):
        raise ValueError(f'{path}: {key} holds values up to {top:.3g}; a trained LoRA is O(1) (at most '
                         f'{MAX_VALUE:g} accepted)')


def _check_pair(path, name: str, parts: dict) -> int:
    """down [r, in, …] and up [out, r, …] of one module: both present, the same rank r; alpha one number."""
    down = parts.get('lora_down', parts.get('lora_A', parts.get('lora.down')))
    up = parts.get('lora_up', parts.get('lora_B', parts.get('lora.up')))
    if down is None or up is None:
        raise ValueError(f'{path}: module {name} has {"no up" if up is None else "no down"} matrix (a LoRA pairs '
                         f'lora_down/lora_up or lora_A/lora_B)')
    if down.ndim not in (2, 4) or up.ndim != down.ndim or down.shape[0] != up.shape[1] or down.shape[0] == 0:
        raise ValueError(f'{path}: module {name}: down {tuple(down.shape)} and up {tuple(up.shape)} do not share a '
                         f'rank (down [r, in], up [out, r])')
    if 'alpha' in parts and parts['alpha'].numel() != 1:
        raise ValueError(f'{path}: {name}.alpha must be one number, got shape {tuple(parts["alpha"].shape)}')
    return int(down.shape[0])


def check_against_model(path, sd: dict, roots: dict) -> None:
    """Every lora_A [r, in] / lora_B [out, r] of a diffusers-layout state dict against the layer it targets
    (roots: {'unet': …, 'text_encoder': …, 'text_encoder_2': …}); before any adapter is attached."""
    for key, a in sd.items():
        if '.lora_A.' not in key:
            continue
        root, target = key.split('.', 1)
        target = target.split('.lora_A.')[0]
        model = roots.get(root)
        if model is None:
            continue
        if not hasattr(model, 'text_model'):
            target = target.removeprefix('text_model.')
        try:
            layer = model.get_submodule(target)
        except AttributeError:
            raise ValueError(f'{path}: targets {root}.{target}, which this model does not have (a LoRA for '
                             f'another architecture?)') from None
        weight = getattr(layer, 'weight', None)
        b = sd.get(key.replace('.lora_A.', '.lora_B.'))
        if weight is None or b is None:
            continue
        out_f, in_f = weight.shape[0], int(torch.tensor(weight.shape[1:]).prod())
        if int(torch.tensor(a.shape[1:]).prod()) != in_f or b.shape[0] != out_f:
            raise ValueError(f'{path}: {root}.{target} is [{out_f}, {in_f}] in this model, but the LoRA has up '
                             f'{tuple(b.shape)} × down {tuple(a.shape)} (a LoRA for another model, e.g. SD1.5?)')
