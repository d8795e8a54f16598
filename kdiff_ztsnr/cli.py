"""`kdiff-ztsnr`: a thin shell over the Python API.

    kdiff-ztsnr sample "completely black" --steps 28 --scale 5 --sampler euler_ancestral --out out/
    kdiff-ztsnr sample "red circle" --init-image in.png --strength 0.6      # img2img
    kdiff-ztsnr sample "red circle" --init-image in.png --enhance           # ×1.5 then img2img at 0.5
    kdiff-ztsnr sample "red circle" --init-image in.png --mask mask.png     # inpaint (white = repaint)
    kdiff-ztsnr sample --from-image out/00000-0.png                          # re-run from metadata
    kdiff-ztsnr inspect out/00000-0.png
    kdiff-ztsnr tokenize "a prompt, {emphasis}, (weight:1.2)"
    kdiff-ztsnr demo                                                       # the regime grid (report Fig. 2)
    kdiff-ztsnr train --config examples/train_tiny.json

The parser imports nothing heavy (`--help` does not import torch); each command imports what it needs. A user
error (bad value, missing or unreadable file, checkpoint that does not fit) is printed as one ``error: …`` line
with exit status 2.

Over 400 lines for now: the sub-commands and their torch-free pre-checks (options, --from-image, --prompt-file,
LoRA files, --out) merged here from several pieces of work; the pre-checks are to move into a module of their own
with the parameter-to-flag table.
"""

import argparse
import json
import os
import sys
from typing import Optional

from .cli_parser import Parser
from .errors import ParamError, quote
from .generation.params import (FIELDS, REGIMES, SAMPLER_NAMES, SCHEDULES, GenerationParams, check_fields,
                                check_params)
from .untrusted import printable

# The command line's option for each library parameter its errors name: a generation field's FIELDS[].option,
# every other parameter's by the option that sets it. Without a value a field (or loras) is named by its metadata
# key too, as --from-image reads keys: "steps (--steps)".
FLAGS = {**{k: f.option or '--' + k.replace('_', '-') for k, f in FIELDS.items()},
         'loras': '--lora FILE[:WEIGHT]', 'device': '--device', 'dtype': '--dtype', 'vae_dtype': '--vae-dtype',
         'config_dir': '--config', 'prediction_type': '--prediction', 'zero_terminal_snr': '--ztsnr-table',
         'out': '--out', 'alpha': '--alpha-metadata', 'limits': '--no-size-limit', 'resume': '--resume',
         'out_dir': '--out-dir', 'overwrite': '--overwrite', 'config': '--config', 'prompt_file': '--prompt-file',
         'trust_code': '--trust-code'}
VALUES = {'zero_terminal_snr': {'True': 'on', 'False': 'off'}, 'limits': {'False': ''}, 'alpha': {'True': ''},
          'overwrite': {'True': ''}, 'trust_code': {'True': ''}}


def option_name(param: str, value: Optional[str]) -> str:
    """A library parameter (and its value, as Python writes it) in the command line's words."""
    flag = FLAGS.get(param, param)
    if value is None:
        return f'{param} ({flag})' if param in FIELDS or param == 'loras' else flag
    shown = VALUES.get(param, {}).get(value, value.strip('\'"'))
    return f'{flag.split()[0]} {shown}' if shown else flag.split()[0]


def said(e: Exception) -> str:
    """An error's message for the command line: library parameters named by their options."""
    return e.spell(option_name) if isinstance(e, ParamError) else str(e)

Formatter = argparse.ArgumentDefaultsHelpFormatter


def add_sample_args(p: argparse.ArgumentParser) -> None:
    d = GenerationParams()
    p.add_argument('prompt', nargs='?', default=None)
    p.add_argument('--prompt-file', default=None, metavar='FILE',
                   help='one prompt a line, or JSON objects {"prompt": …, "seed": …, "size": "WxH", …} a line; '
                        'resumable, and spread over processes by accelerate launch / torchrun (see README)')
    p.add_argument('--uc', '--negative', dest='uc', default=None, help='negative prompt (default: "")')
    p.add_argument('--model', default=None, help="'embedded' (default), a trainer checkpoint, or an SDXL "
                                                 "folder / single-file .safetensors")
    p.add_argument('--steps', type=int, default=None, help=f'model calls (default: {d.steps})')
    p.add_argument('--scale', type=float, default=None, help=f'CFG scale (default: {d.scale})')
    p.add_argument('--cfg-rescale', type=float, default=None, help='CFG rescale φ in [0, 1] (default: 0)')
    p.add_argument('--sampler', default=None, help=f'{", ".join(SAMPLER_NAMES)}, or an A1111 name ("Euler a", '
                                                   f'"DPM++ 2M", "DPM++ 2M Karras") (default: {d.sampler})')
    p.add_argument('--schedule', dest='noise_schedule', default=None,
                   help=f'noise schedule: {", ".join(SCHEDULES)}, or an A1111 name (Uniform, Karras, …); '
                        f'recommended = the package default, see benchmarks/README.md (default: {d.noise_schedule})')
    p.add_argument('--ztsnr', dest='regime', choices=REGIMES, default=None,
                   help=f'exact: from σ=∞; clamp: from 20000 (report A.2); sigma_max: from --sigma-max '
                        f'(default: {d.regime})')
    p.add_argument('--sigma-max', dest='sigma_start', metavar='SIGMA_MAX', type=float, default=None,
                   help='finite start σ (implies --ztsnr sigma_max)')
    p.add_argument('--no-resolution-aware', dest='resolution_aware', action='store_false', default=None,
                   help='do not scale --sigma-max ×2 per ×2 canvas side (report §2.3)')
    p.add_argument('--eta', type=float, default=None, help="ancestral/SDE η (default: the sampler's)")
    p.add_argument('--quantize-timesteps', action=argparse.BooleanOptionalAction, default=None,
                   help='feed the network integer timesteps (nearest table index) as ComfyUI and A1111 do, to '
                        f'reproduce their images (default: {"on" if d.quantize_timesteps else "off"})')
    p.add_argument('--seed', type=int, default=None, help=f'sample i uses seed + i (default: {d.seed})')
    p.add_argument('-n', '--n-samples', type=int, default=None, help=f'(default: {d.n_samples})')
    p.add_argument('--width', type=int, default=None, help="(default: the model's canvas)")
    p.add_argument('--height', type=int, default=None, help='(default: the width)')
    p.add_argument('--init-image', default=None, help='img2img from this image')
    p.add_argument('--strength', type=float, default=None,
                   help='img2img strength (default: 0.7 with an init image, 0.5 with --enhance)')
    p.add_argument('--enhance', action='store_true', help='upscale the init image ×1.5, then img2img at 0.5')
    p.add_argument('--mask', default=None, help='inpainting mask image (white = repaint)')
    p.add_argument('--lora', action='append', default=None, metavar='FILE[:WEIGHT]',
                   help='apply a LoRA (kohya/A1111 or diffusers keys) to an SDXL model; repeatable (weight 1)')
    p.add_argument('--from-image', default=None, help="take every parameter from this PNG's metadata")
    p.add_argument('--lora-dir', default=None, help='resolve <lora:NAME:W> tags of an A1111 PNG to NAME.safetensors '
                                                    'in this folder')
    p.add_argument('--out', default='out', help='output folder (default: out)')
    p.add_argument('--alpha-metadata', action='store_true', help='also embed the parameters in the alpha channel')
    p.add_argument('--quiet', action='store_true', help='no progress bars or status lines')
    p.add_argument('--no-size-limit', action='store_true',
                   help='allow sizes past 8192 px a side, 2^26 pixels a batch, 256 samples, 10000 steps')
    add_device_args(p)


def add_device_args(p: argparse.ArgumentParser, sdxl: bool = True) -> None:
    """--device/--dtype (and the SDXL loading options); validated by `generation.device` before any loading."""
    p.add_argument('--device', default='auto', help='auto (CUDA, else MPS, else CPU) | cpu | cuda[:N] | mps '
                                                    '(default: %(default)s)')
    p.add_argument('--dtype', default='auto', help='network dtype: auto (fp16 on CUDA, fp32 elsewhere) | fp32 | '
                                                   'fp16 | bf16 (default: %(default)s)')
    if not sdxl:
        return
    p.add_argument('--vae-dtype', default=None, help='SDXL VAE dtype: fp32 | fp16 | bf16 (default: fp32 when '
                                                     '--dtype is fp16 and the VAE config says force_upcast)')
    p.add_argument('--vae-tiling', action='store_true', help="SDXL: diffusers' tiled VAE encode/decode")
    p.add_argument('--config', dest='model_config', default=None,
                   help='SDXL single file of a non-stock architecture: a diffusers folder with its configs')
    p.add_argument('--prediction', default=None, help='v: treat an SDXL file without markers as v-prediction')
    p.add_argument('--ztsnr-table', default=None, help='on | off: override the zero-terminal-SNR detection')


def pipeline_from_args(args: argparse.Namespace, model: str, device: Optional[str] = None):
    """load_pipeline with the device/dtype options; prints the model's detected prediction type once."""
    from .generation.lookup import load_pipeline
    from .progress import phase
    table = getattr(args, 'ztsnr_table', None)
    if table not in (None, 'on', 'off'):
        raise ValueError(f'--ztsnr-table {table!r}: choose from on, off')
    with phase(f'loading model {model}'):
        pipe = load_pipeline(model, device=device or args.device, dtype=args.dtype,
                             vae_dtype=getattr(args, 'vae_dtype', None),
                             config_dir=getattr(args, 'model_config', None),
                             prediction_type=getattr(args, 'prediction', None),
                             zero_terminal_snr=None if table is None else table == 'on',
                             vae_tiling=getattr(args, 'vae_tiling', False))
    if 'detected' in pipe.info:
        print(printable(f'model {pipe.name}: {pipe.info["detected"]}; {pipe.info.get("dtype")} on {pipe.device} '
                        f'(VAE {pipe.info.get("vae_dtype")})'), file=sys.stderr)      # what was detected: shown even if quiet
    return pipe


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
    from .generation.names import resolve_sampler, resolve_schedule
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
    from .generation.metadata import read_metadata
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
        from .models.sdxl.lora import parse_lora
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


def quiet_libraries() -> None:
    """No per-file loading bars from transformers/diffusers: the command prints its own progress."""
    import diffusers
    import transformers
    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.disable_progress_bar()


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
    from .generation.image_io import prepare_out
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
        from .generation.prompt_file import read_prompt_file
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


def explain_nan(pipe, e: FloatingPointError) -> str:
    """A NaN output with the weights that hold NaN/inf named (the model's or a LoRA's), if any."""
    from .models.bundle import nonfinite_weights
    bad = nonfinite_weights(pipe)
    if bad:
        lora = any('lora' in b for b in bad)
        return (f'{e}: the {"LoRA" if lora else "model"} weights hold NaN or inf, e.g. {", ".join(bad)} '
                f'({pipe.name}{" and its --lora files" if pipe.info.get("loras") else ""})')
    return f'{e}; every weight is finite, so the computation overflowed (try --dtype fp32 or bf16)'


def check_lora_args(specs: list, model: str) -> None:
    """Every --lora file validated (count, weight, format, SDXL keys, ranks, finite values) before any model loads."""
    from .models.sdxl.lora_files import MAX_LORAS, check_spec
    if len(specs) > MAX_LORAS:
        raise ValueError(f'--lora given {len(specs)} times; at most {MAX_LORAS} LoRAs')
    if model == 'embedded':
        raise ValueError('--lora needs an SDXL-architecture model (--model FOLDER or FILE); the embedded model is not one')
    for spec in specs:
        check_spec(spec)


def check_sample_args(args: argparse.Namespace) -> dict:
    """Everything that can be checked before a model is loaded; returns the --from-image metadata."""
    meta = check_usage(args)
    from .text.tokens import parse_emphasis                  # imports torch: after the torch-free checks
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


def cmd_sample(args: argparse.Namespace) -> int:
    meta = check_sample_args(args)
    import warnings
    from .generation.generate import enhance_size, generate, upscale
    from .generation.image_io import load_image, load_mask, save_images
    from .generation.metadata import check_alpha_fits
    quiet_libraries()
    if args.prompt_file:
        from .generation.batch import sample_prompt_file
        return sample_prompt_file(args, given_params(args),
                                  lambda device: pipeline_from_args(args, args.model or 'embedded', device))
    pipe = pipeline_from_args(args, args.model or 'embedded')
    p = params_from_args(args, pipe.base_side, meta)
    if p.loras:                                  # as generate would, but before the init image is read
        from .models.sdxl.lora import use_loras
        use_loras(pipe, p.loras)
    init = mask = None
    if args.init_image:
        src = load_image(args.init_image, p.width, p.height)
        if args.enhance:
            p.width, p.height = enhance_size(p.width, p.height, pipe.size_multiple)
        init = upscale(src, p.width, p.height) if args.enhance else src
        if args.mask:
            mask = load_mask(args.mask, p.width, p.height)
    check_params(p, pipe.size_multiple, pipe.name, limits=not args.no_size_limit)
    if args.alpha_metadata:
        check_alpha_fits({**p.to_dict(), 'seed': p.seed + p.n_samples - 1, 'n_samples': 1}, p.width, p.height)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        from . import ignore_third_party_warnings
        ignore_third_party_warnings()
        try:
            images = generate(pipe, p, init=init, mask=mask, progress=not args.quiet, limits=not args.no_size_limit)
        except FloatingPointError as e:
            raise ValueError(explain_nan(pipe, e)) from None
    for w in caught:
        print(f'warning: {printable(w.message)}', file=sys.stderr)
    for path in save_images(images, p, args.out, args.alpha_metadata):
        print(path)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    if (args.image is None) == (args.model is None):
        raise ValueError('give an image (its generation parameters) or --model FILE (what a model says about itself)')
    if args.model is not None:
        from .models.sdxl.loading import inspect_model
        print(printable_json(inspect_model(args.model)))
        return 0
    meta = read_png(args.image, args.lora_dir)
    print(printable_json(meta))
    try:
        check_fields(meta)
    except ValueError as e:                          # shown, but a re-run would refuse it
        print(f'warning: {printable(said(e))}', file=sys.stderr)
    return 0


def printable_json(value) -> str:
    """Indented JSON (non-ASCII kept readable) with every terminal-active character escaped: still valid JSON."""
    return '\n'.join(printable(line) for line in json.dumps(value, indent=2, ensure_ascii=False).split('\n'))


def cmd_tokenize(args: argparse.Namespace) -> int:
    from .text import get_tokenizer, tokenize_chunks
    tok = get_tokenizer()
    if not 1 <= args.max_chunks <= 1000:
        raise ValueError(f'--max-chunks must be an integer in [1, 1000], got {args.max_chunks}')
    chunks = tokenize_chunks(args.prompt, tok, max_chunks=args.max_chunks, truncate=True)
    for k in range(chunks.n_chunks):
        n = int(chunks.lengths[k])
        ids = chunks.ids[k, 1:1 + n].tolist()
        weights = chunks.weights[k, 1:1 + n].tolist()
        print(f'chunk {k + 1}: {n} tokens (positions {k * 75 + 1}-{k * 75 + n})')
        print('  ' + ' '.join(f'{tok.convert_ids_to_tokens(i)}' + (f'×{w:.3g}' if w != 1 else '')
                              for i, w in zip(ids, weights)))
    if chunks.dropped:
        d = chunks.dropped
        print(f'dropped (beyond {args.max_chunks} chunks): {d[:200]}' + (f'… ({len(d) - 200} more characters)'
                                                                         if len(d) > 200 else ''))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    if args.prompts:
        return print_known_prompts(args.model)
    for opt, v, lo in (('--samples', args.samples, 2), ('--uncond-samples', args.uncond_samples, 2)):
        if not lo <= v <= 256:
            raise ValueError(f'{opt} must be an integer in [{lo}, 256] (the table shows a spread), got {v}')
    if not 1 <= args.steps <= 10_000:
        raise ValueError(f'--steps must be an integer in [1, 10000], got {args.steps}')
    from .generation.image_io import prepare_out
    prepare_out(args.out)
    import torch
    from .generation.demo import run_demo
    from .training.data.synthetic import mean_brightness
    pipe = pipeline_from_args(args, args.model)
    data = mean_brightness(json.loads(pipe.info.get('config', '{}')))
    run_demo(out=args.out, model=args.model, samples=args.samples, steps=args.steps,
             uncond_samples=args.uncond_samples, pipe=pipe, data=None if data is None else torch.from_numpy(data))
    return 0


def print_known_prompts(model: str) -> int:
    """`demo --prompts`: the captions of the model's synthetic training set (read from its config, no torch)."""
    from safetensors import safe_open
    from .generation.lookup import EMBEDDED
    from .training.data.synthetic import caption_counts
    path = EMBEDDED if model == 'embedded' else model
    found = [p for p in (os.path.join(path, 'ema.safetensors'),) if os.path.isfile(p)]
    if not found:
        raise ValueError(f'--model {model}: not a trainer checkpoint folder (no ema.safetensors), so its '
                         f'training prompts are unknown')
    with safe_open(found[0], 'numpy') as f:
        config = json.loads((f.metadata() or {}).get('config', '{}'))
    prompts = caption_counts(config)
    if not prompts:
        raise ValueError(f'--model {model} was not trained on the synthetic set: its prompts are its own captions')
    print(f'# {len(prompts)} captions of the training set of {model} (images per caption):')
    for caption, count in prompts.items():
        print(f'{caption}\t{count}')
    return 0


def cmd_export_config(args: argparse.Namespace) -> int:
    from .models.sdxl.export import export_diffusers_config
    ztsnr = None if args.ztsnr_table is None else args.ztsnr_table == 'on'
    for path in export_diffusers_config(args.dir, model=args.model, config_dir=args.model_config,
                                        zero_terminal_snr=ztsnr, overwrite=args.overwrite):
        print(path)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .training.command import train_from_args
    train_from_args(args)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .training.command import DESCRIPTION, add_train_args
    parser = Parser(prog='kdiff-ztsnr', description='Exact zero-terminal-SNR sampling and '
                    'training for v-prediction models on k-diffusion.')
    parser.add_argument('--version', action='version', version=f'%(prog)s {__version__}')
    sub = parser.add_subparsers(dest='command', required=True)
    parser.commands = sub.choices
    add_sample_args(sub.add_parser('sample', help='text-to-image, img2img, Enhance, inpainting'))
    p = sub.add_parser('inspect', help='print the generation parameters stored in a PNG, or (--model) what a '
                                       'model file says about itself')
    p.add_argument('image', nargs='?', default=None)
    p.add_argument('--model', default=None, help='an SDXL single file or diffusers folder: markers, key counts')
    p.add_argument('--lora-dir', default=None, help='resolve <lora:NAME:W> tags of an A1111 PNG in this folder')
    p = sub.add_parser('tokenize', help='show the CLIP tokens and 75-token chunk boundaries of a prompt',
                       formatter_class=Formatter)
    p.add_argument('prompt')
    p.add_argument('--max-chunks', type=int, default=3, help='chunks of 75 tokens')
    p = sub.add_parser('demo', help='the σ_max regime grid and brightness table of the embedded model',
                       formatter_class=Formatter)
    p.add_argument('--out', default='out/demo', help='output folder')
    p.add_argument('--model', default='embedded', help='model to sample')
    p.add_argument('--samples', type=int, default=8, help='seeds per row')
    p.add_argument('--steps', type=int, default=28, help='model calls per image')
    p.add_argument('--uncond-samples', type=int, default=32, help='seeds of the unconditional histogram')
    p.add_argument('--prompts', action='store_true', help='list the prompts the model was trained on, then exit')
    p.add_argument('--quiet', action='store_true', help='no progress bars or status lines')
    add_device_args(p, sdxl=False)
    p = sub.add_parser('export-diffusers-config', help="the config folder diffusers' from_single_file(…, config=DIR) "
                                                       'needs to read a v-pred single file offline')
    p.add_argument('dir')
    p.add_argument('--model', default=None, help='single file whose markers set the scheduler (default: v, ZTSNR)')
    p.add_argument('--config', dest='model_config', default=None, help='a diffusers folder of non-stock configs')
    p.add_argument('--ztsnr-table', choices=('on', 'off'), default=None, help='override the scheduler\'s ZTSNR')
    p.add_argument('--overwrite', action='store_true', help='replace configs already in DIR')
    p = add_train_args(sub.add_parser('train', help='train from a config (see examples/)', description=DESCRIPTION))
    p.add_argument('--quiet', action='store_true', help='no progress bars or status lines')
    return parser


COMMANDS = {'sample': cmd_sample, 'inspect': cmd_inspect, 'tokenize': cmd_tokenize, 'demo': cmd_demo,
            'train': cmd_train, 'export-diffusers-config': cmd_export_config}


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings on the command line: one escaped line (their text may quote a file's content)."""
    print(f'warning: {printable(message)}', file=sys.stderr if file is None else file)


def main(argv: Optional[list] = None) -> int:
    import warnings
    from .training.command import run_command
    args = build_parser().parse_args(argv)
    shown, warnings.showwarning = warnings.showwarning, show_warning
    from .progress import set_quiet
    set_quiet(getattr(args, 'quiet', False))
    try:
        return run_command(args.command, lambda: COMMANDS[args.command](args), say=said)
    finally:
        warnings.showwarning = shown


if __name__ == '__main__':
    sys.exit(main())
