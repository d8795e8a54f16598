"""``kdiff-ztsnr train``: the options checked (--config, --resume, --overwrite, --trust-code, overrides of
training.steps and training.out_dir) before any dataset or model work, then `training.Trainer` runs.
"""

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..training.trainer import Trainer


def train_from_args(args: argparse.Namespace) -> 'Trainer':
    """The train command's options checked and applied to the config, then the run (returns its Trainer)."""
    from ..models.trained import resolve_checkpoint
    from ..training.config import load_training_config
    from ..training.runs import check_out_dir, check_resumable
    from ..training.trainer import Trainer
    from ..training.schema import validate_config
    if args.config is None and args.resume is None:
        raise ValueError('train: give --config, --resume, or both')
    if args.resume is not None and args.overwrite:
        raise ValueError('--resume and --overwrite exclude each other')
    if args.trust_code and args.config is None:
        raise ValueError('--trust-code applies to the --config file you pass; a checkpoint\'s config never runs '
                         'code (give --config FILE --trust-code with --resume)')
    if args.config is not None and not Path(args.config).is_file():
        raise FileNotFoundError(f'--config {args.config}: no such file (a JSON training config, e.g. '
                                f'examples/train_tiny.json)')
    if args.resume is not None:
        check_resumable(args.resume)
    config = load_training_config(args.config if args.config is not None
                                  else resolve_checkpoint(args.resume) / 'model.safetensors')
    if config['model']['type'] == 'module' and not args.trust_code:        # before any dataset or model work
        from ..models.registry import CUSTOM_CODE_HINT
        raise ValueError(f'{args.config or args.resume}: refused model.target '
                         f'{str(config["model"].get("target"))[:120]!r}: {CUSTOM_CODE_HINT}')
    overrides = {k: v for k, v in (('steps', args.steps), ('out_dir', args.out_dir)) if v is not None}
    validate_config({'training': overrides})
    config['training'].update(overrides)
    if not config['training']['out_dir']:
        raise ValueError('training.out_dir is not set: give it in the config or pass --out-dir')
    check_out_dir(config['training']['out_dir'], args.resume, args.overwrite)     # before any dataset work
    return Trainer(config, trust_code=args.trust_code).run(resume=args.resume, overwrite=args.overwrite)


def cmd_train(args: argparse.Namespace) -> int:
    train_from_args(args)
    return 0
