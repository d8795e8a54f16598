"""The small sub-commands: ``inspect`` (a PNG's parameters, or what a model file says about itself),
``tokenize`` (CLIP tokens and 75-token chunks), ``demo`` (the regime grid; ``--prompts`` lists the training
captions) and ``export-diffusers-config``. Each imports what it needs when it runs.
"""

import argparse
import json
import os
import sys

from ..generation.params import check_fields
from ..untrusted import printable
from .checks import read_png
from .sample import pipeline_from_args
from .words import said


def cmd_inspect(args: argparse.Namespace) -> int:
    if (args.image is None) == (args.model is None):
        raise ValueError('give an image (its generation parameters) or --model FILE (what a model says about itself)')
    if args.model is not None:
        from ..models.sdxl.loading import inspect_model
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
    from ..text import get_tokenizer, tokenize_chunks
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
    from ..generation.image_io import prepare_out
    prepare_out(args.out)
    import torch
    from ..generation.demo import run_demo
    from ..training.data.synthetic import mean_brightness
    pipe = pipeline_from_args(args, args.model)
    data = mean_brightness(json.loads(pipe.info.get('config', '{}')))
    run_demo(out=args.out, model=args.model, samples=args.samples, steps=args.steps,
             uncond_samples=args.uncond_samples, pipe=pipe, data=None if data is None else torch.from_numpy(data))
    return 0


def print_known_prompts(model: str) -> int:
    """`demo --prompts`: the captions of the model's synthetic training set (read from its config, no torch)."""
    from safetensors import safe_open
    from ..generation.lookup import EMBEDDED
    from ..training.data.synthetic import caption_counts
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
    from ..models.sdxl.export import export_diffusers_config
    ztsnr = None if args.ztsnr_table is None else args.ztsnr_table == 'on'
    for path in export_diffusers_config(args.dir, model=args.model, config_dir=args.model_config,
                                        zero_terminal_snr=ztsnr, overwrite=args.overwrite):
        print(path)
    return 0
