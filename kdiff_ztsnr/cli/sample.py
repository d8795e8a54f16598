"""``kdiff-ztsnr sample``: the checks first (`checks.check_sample_args`), then the model
(`pipeline_from_args`, also used by demo), the init image and mask, and the images saved with their metadata;
a NaN output is explained by the weights that hold NaN or inf (`explain_nan`).
"""

import argparse
import sys
from typing import TYPE_CHECKING, Optional

from ..generation.params import check_params
from ..untrusted import printable
from .checks import check_sample_args, given_params, params_from_args

if TYPE_CHECKING:
    from ..models.bundle import Pipeline


def pipeline_from_args(args: argparse.Namespace, model: str, device: Optional[str] = None) -> 'Pipeline':
    """load_pipeline with the device/dtype options; prints the model's detected prediction type once."""
    from ..generation.lookup import load_pipeline
    from ..progress import phase
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


def quiet_libraries() -> None:
    """No per-file loading bars from transformers/diffusers: the command prints its own progress."""
    import diffusers
    import transformers
    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.disable_progress_bar()


def explain_nan(pipe, e: FloatingPointError) -> str:
    """A NaN output with the weights that hold NaN/inf named (the model's or a LoRA's), if any."""
    from ..models.bundle import nonfinite_weights
    bad = nonfinite_weights(pipe)
    if bad:
        lora = any('lora' in b for b in bad)
        return (f'{e}: the {"LoRA" if lora else "model"} weights hold NaN or inf, e.g. {", ".join(bad)} '
                f'({pipe.name}{" and its --lora files" if pipe.info.get("loras") else ""})')
    return f'{e}; every weight is finite, so the computation overflowed (try --dtype fp32 or bf16)'


def cmd_sample(args: argparse.Namespace) -> int:
    meta = check_sample_args(args)
    import warnings
    from ..generation.generate import enhance_size, generate, upscale
    from ..generation.image_io import load_image, load_mask, save_images
    from ..generation.metadata import check_alpha_fits
    quiet_libraries()
    if args.prompt_file:
        from ..generation.batch import sample_prompt_file
        return sample_prompt_file(args, given_params(args),
                                  lambda device: pipeline_from_args(args, args.model or 'embedded', device))
    pipe = pipeline_from_args(args, args.model or 'embedded')
    p = params_from_args(args, pipe.base_side, meta)
    if p.loras:                                  # as generate would, but before the init image is read
        from ..models.sdxl.lora import use_loras
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
        from .. import ignore_third_party_warnings
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
