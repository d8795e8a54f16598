"""The sample command's checks before any model loads: the options given (`given_params`, names of samplers and
schedules), --from-image metadata (`read_png`, `image_params`: paths in an image are shown, never opened), the
prompt, files and output folder (`check_usage`, no torch), then the prompts' emphasis and the --lora files
(`check_sample_args`); `params_from_args` merges the image's parameters with the options into `GenerationParams`.
"""

import argparse
import json
import os
import sys
from typing import Optional

from ..errors import quote
from ..generation.params import GenerationParams, check_fields
from ..untrusted import printable

GIVEN = ('prompt', 'uc', 'steps', 'scale', 'sampler', 'noise_schedule', 'regime', 'sigma_start', 'resolution_aware',
         'eta', 'seed', 'n_samples', 'width', 'height', 'strength', 'cfg_rescale', 'quantize_timesteps')


def given_params(args: argparse.Namespace) -> dict:
    """The parameters given on the command line, each checked against params.FIELDS."""
    given = {k: getattr(args, k) for k in GIVEN if getattr(args, k) is not None}
    resolve_names(given)
    check_fields(given)
    return given


def resolve_names(given: dict) -> None:
    """--sampler / --schedule in the package's or A1111's spelling ("Euler a", dpmpp_2m_karras, "DPM++ 2M Karras",
    Karras) → the package's names; an unknown name is refused with the nearest valid one."""
    from ..generation.names import resolve_sampler, resolve_schedule
    try:
        if 'noise_schedule' in given:
            given['noise_schedule'] = resolve_schedule(given['noise_schedule'])
    except ValueError as e:
        raise ValueError(f'--schedule: {e}') from None
    if 'sampler' not in given:
        return
    named = given['sampler']
    try:
        given['sampler'], schedule = resolve_sampler(named)
    except ValueError as e:
        raise ValueError(f'--sampler: {e}') from None
    if schedule and given.setdefault('noise_schedule', schedule) != schedule:
        raise ValueError(f"--sampler {named!r} names the schedule {schedule}, --schedule says "
                         f"{given['noise_schedule']}: give one")


def read_png(path: str, lora_dir: Optional[str] = None) -> dict:
    """A PNG's parameters; what reading changed (Hires fix, LoRA tags) is printed as `warning: …` lines."""
    import warnings
    from ..generation.metadata import read_metadata
    if lora_dir is not None and not os.path.isdir(lora_dir):
        raise ValueError(f'--lora-dir {lora_dir}: no such folder')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        meta = read_metadata(path, lora_dir=lora_dir)
    for w in caught:
        print(f'warning: {printable(w.message)}', file=sys.stderr)
    return meta


def read_params(path: str, lora_dir: Optional[str] = None) -> dict:
    """--from-image metadata, checked like command-line values (types, ranges, choices)."""
    meta = read_png(path, lora_dir)
    check_fields(meta, where=f'--from-image {quote(path)}: ')
    return meta


def _inside(path: str, folder: str) -> bool:
    return os.path.commonpath([os.path.realpath(path), os.path.realpath(folder)]) == os.path.realpath(folder)


def image_params(args: argparse.Namespace) -> dict:
    """--from-image's generation parameters only: the model and LoRA paths an image names are shown, never
    opened (a PNG from a stranger must not choose what is read); the user's own --model / --lora are used."""
    meta = read_params(args.from_image, args.lora_dir)
    model, loras = meta.pop('model', None), meta.pop('loras', None) or []
    if args.lora_dir is not None:                # LoRA tags resolved inside the user's own --lora-dir are kept
        inside = [pair for pair in loras if _inside(pair[0], args.lora_dir)]
        meta['loras'], loras = inside, [pair for pair in loras if pair not in inside]
    source = f'--from-image {args.from_image}'
    if model not in (None, 'embedded') and args.model is None:
        raise ValueError(f'{source}: the image names the model {str(model)[:200]!r}, which is not opened (paths in '
                         f'an image are never loaded); pass --model PATH to re-run it with a model you choose')
    if loras and not args.lora:
        print(printable(f'note: {source}: the image names LoRAs {json.dumps(loras)[:300]}, not applied (paths in an '
                        f'image are never opened); pass --lora FILE[:WEIGHT] to apply LoRAs you choose'),
              file=sys.stderr)
    return meta


def params_from_args(args: argparse.Namespace, base_side: int, base: Optional[dict] = None) -> GenerationParams:
    """Metadata of --from-image (if any), overridden by every option given on the command line."""
    base = dict(image_params(args) if base is None and args.from_image else base or {})
    base.setdefault('width', base_side)                          # image pixels
    base.setdefault('height', base['width'])
    given = given_params(args)
    if args.lora:
        from ..models.sdxl.lora import parse_lora
        given['loras'] = [list(parse_lora(s)) for s in args.lora]
    if 'sigma_start' in given and 'regime' not in given:
        given['regime'] = 'sigma_max'
    if args.init_image and 'strength' not in given and 'strength' not in base:
        given['strength'] = 0.5 if args.enhance else 0.7
    if not args.init_image:
        base.pop('strength', None)                               # text-to-image: strength is not used
    p = GenerationParams.from_dict({**base, **given, 'model': args.model or 'embedded'})
    if p.prompt is None:
        raise ValueError('give a prompt (or --from-image)')
    return p


def check_prompt_text(args: argparse.Namespace) -> None:
    """A prompt that names an existing file was probably meant for --prompt-file: refuse it rather than sample it."""
    text = args.prompt
    if text and '\n' not in text and len(text) < 4096 and os.path.isfile(text):
        looks_like_path = os.sep in text or os.path.splitext(text)[1] != ''
        msg = f'the prompt {text!r} is the name of an existing file; to sample one prompt per line use --prompt-file {text}'
        if looks_like_path:
            raise ValueError(msg + ' (to sample this text, put it in quotes with another word)')
        print(f'warning: {printable(msg)}', file=sys.stderr)


def check_usage(args: argparse.Namespace) -> dict:
    """Every check that needs no torch (options, paths, file kinds, prompt, output folder); returns the
    --from-image metadata. Runs before torch, diffusers or transformers are imported."""
    from ..generation.image_io import prepare_out
    if (args.mask or args.enhance) and not args.init_image:
        raise ValueError('--mask and --enhance need --init-image')
    meta = image_params(args) if args.from_image else {}
    img2img = isinstance(meta.get('strength'), (int, float)) and meta['strength'] < 1
    if args.strength is not None and not args.init_image and not (img2img and args.strength == 1):
        raise ValueError('--strength needs --init-image (text-to-image always denoises from the start)')
    if img2img and not args.init_image and args.strength is None:
        raise ValueError(f'--from-image {args.from_image} was made by img2img (strength {meta["strength"]}) from an '
                         f'init image the PNG does not hold; pass --init-image FILE to repeat it, or --strength 1 '
                         f'to sample text-to-image with its other parameters')
    if args.prompt_file:
        clash = [o for o, v in (('a prompt', args.prompt), ('--from-image', args.from_image),
                                ('--init-image', args.init_image)) if v]
        if clash:
            raise ValueError(f'--prompt-file takes its prompts from the file: drop {" and ".join(clash)}')
        from ..generation.prompt_file import read_prompt_file
        args.jobs = read_prompt_file(args.prompt_file)
    given_params(args)
    if args.prompt is None and meta.get('prompt') is None and not args.prompt_file:
        raise ValueError('give a prompt (or --from-image, or --prompt-file)')
    check_prompt_text(args)
    for opt, path in (('--init-image', args.init_image), ('--mask', args.mask)):
        if path is not None and not os.path.isfile(path):
            raise ValueError(f'{opt} {path}: ' + ('no such file' if not os.path.lexists(path) else
                                                  'not a regular file (a folder, FIFO or device)'))
    if args.model and args.model != 'embedded' and not os.path.exists(args.model):
        raise ValueError(f'--model {args.model}: model not found (give embedded, a trainer checkpoint, or '
                         f'an SDXL folder / .safetensors file)')
    prepare_out(args.out)
    return meta


def check_lora_args(specs: list, model: str) -> None:
    """Every --lora file validated (count, weight, format, SDXL keys, ranks, finite values) before any model loads."""
    from ..models.sdxl.lora_files import MAX_LORAS, check_spec
    if len(specs) > MAX_LORAS:
        raise ValueError(f'--lora given {len(specs)} times; at most {MAX_LORAS} LoRAs')
    if model == 'embedded':
        raise ValueError('--lora needs an SDXL-architecture model (--model FOLDER or FILE); the embedded model is not one')
    for spec in specs:
        check_spec(spec)


def check_sample_args(args: argparse.Namespace) -> dict:
    """Everything that can be checked before a model is loaded; returns the --from-image metadata."""
    meta = check_usage(args)
    from ..text.tokens import parse_emphasis                  # imports torch: after the torch-free checks
    prompts = [(f'--prompt-file line {j.line}', j.params.get('prompt'), j.params.get('uc'))
               for j in getattr(args, 'jobs', None) or ()] or [('prompt', args.prompt or meta.get('prompt'), None)]
    for opt, text, uc in [*prompts, ('--uc', args.uc or meta.get('uc'), None)]:
        for t in (text, uc):
            try:
                parse_emphasis(t or '')
            except ValueError as e:
                raise ValueError(f'{opt}: {e}') from None
    specs = args.lora or [f'{path}:{weight}' for path, weight in meta.get('loras') or ()]
    if specs:
        check_lora_args(specs, args.model or 'embedded')
    return meta
