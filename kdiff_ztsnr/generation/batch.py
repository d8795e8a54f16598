"""Sampling a --prompt-file: this process's share of the lines, resumable, one file per image (prompt_file)."""

import os
from typing import Callable

from ..errors import ParamError, marked, quote
from ..progress import bar, status
from .generate import generate
from .image_io import to_pil
from .metadata import save_png
from .params import GenerationParams, check_params
from .prompt_file import output_name, rank_and_world, share


def line_params(job, index: int, given: dict, model: str, base_side: int) -> GenerationParams:
    """A line's parameters: its own values over the command line's (given) over the defaults (canvas: the model's)."""
    given = {k: v for k, v in given.items() if k != 'prompt'}
    d = GenerationParams()
    n = given.get('n_samples', d.n_samples)
    seeds = job.seeds(given.get('seed', d.seed), index, n)
    p = {'width': base_side, **given, **job.params, 'seed': seeds[0], 'n_samples': len(seeds)}
    if 'sigma_start' in p and 'regime' not in given and 'regime' not in job.params:
        p['regime'] = 'sigma_max'
    p.setdefault('height', p['width'])
    return GenerationParams.from_dict({**p, 'model': model})


def write_png(image, params: dict, path: str, alpha: bool) -> None:
    """Write through a temporary sibling and rename: an interrupted run never leaves a file a resume would skip."""
    tmp = os.path.join(os.path.dirname(path), f'.{os.path.basename(path)}.tmp{os.getpid()}')
    try:
        with open(tmp, 'wb') as f:
            save_png(to_pil(image), f, params, alpha=alpha)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def sample_prompt_file(args, given: dict, load: Callable) -> int:
    """Sample this process's share of args.jobs into args.out, skipping images already there; prints the paths.

    given: the command line's parameters (cli.checks.given_params); load(device) -> Pipeline."""
    rank, world = rank_and_world()
    device = None
    if world > 1:
        from accelerate import PartialState
        state = PartialState(cpu=args.device == 'cpu')
        device = str(state.device) if args.device == 'auto' else args.device
    pipe = load(device)
    plans = [line_params(job, i, given, args.model or 'embedded', pipe.base_side) for i, job in enumerate(args.jobs)]
    for job, p in zip(args.jobs, plans):                    # every line checked before any image is made
        try:
            check_params(p, pipe.size_multiple, pipe.name, limits=not args.no_size_limit)
        except ValueError as e:
            raise ParamError(f'{{prompt_file={quote(args.prompt_file)}}} line {job.line}: {marked(e)}') from None
    os.makedirs(args.out, exist_ok=True)
    todo = [(job, p) for job, p in share(list(zip(args.jobs, plans)), rank, world)
            if not all(os.path.exists(os.path.join(args.out, output_name(job.line, p.seed + i)))
                       for i in range(p.n_samples))]
    skipped = len(share(args.jobs, rank, world)) - len(todo)
    if skipped:
        status(f'resuming: {skipped} line(s) already written to {args.out}')
    with bar(total=sum(p.n_samples for _, p in todo), desc='prompt file', unit='image',
             disable=args.quiet) as images_bar:
        for job, p in todo:
            images = generate(pipe, p, progress=not args.quiet, limits=not args.no_size_limit)
            for i, img in enumerate(images):
                path = os.path.join(args.out, output_name(job.line, p.seed + i))
                if not os.path.exists(path):
                    write_png(img, {**p.to_dict(), 'seed': p.seed + i, 'n_samples': 1}, path, args.alpha_metadata)
                    print(path)
            images_bar.update(p.n_samples)
    if world > 1:
        state.wait_for_everyone()
    return 0
