"""``kdiff-ztsnr train`` / ``python -m kdiff_ztsnr.training``: train from a config, or resume a run."""

import argparse
from pathlib import Path
from typing import Optional


DESCRIPTION = 'Train a v-prediction ZTSNR model from a config (see examples/train_tiny.md).'


def add_train_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument('--config', type=str, default=None,
                        help='JSON config (merged over the defaults); optional with --resume')
    parser.add_argument('--resume', type=str, default=None,
                        help='checkpoint directory, or an out_dir (continues from its latest checkpoint)')
    parser.add_argument('--steps', type=int, default=None, help='override training.steps')
    parser.add_argument('--out-dir', type=str, default=None, help='override training.out_dir')
    parser.add_argument('--overwrite', action='store_true',
                        help='start a new run in an out_dir that holds a previous one (its checkpoints are removed)')
    return parser


def train_from_args(args: argparse.Namespace):
    from ..models.trained import resolve_checkpoint
    from .config import load_training_config
    from .runs import check_out_dir
    from .trainer import Trainer
    from .schema import validate_config
    if args.config is None and args.resume is None:
        raise ValueError('train: give --config, --resume, or both')
    if args.resume is not None and args.overwrite:
        raise ValueError('--resume and --overwrite exclude each other')
    if args.config is not None and not Path(args.config).is_file():
        raise FileNotFoundError(f'--config {args.config}: no such file (a JSON training config, e.g. '
                                f'examples/train_tiny.json)')
    config = load_training_config(args.config if args.config is not None
                                  else resolve_checkpoint(args.resume) / 'model.safetensors')
    overrides = {k: v for k, v in (('steps', args.steps), ('out_dir', args.out_dir)) if v is not None}
    validate_config({'training': overrides})
    config['training'].update(overrides)
    if not config['training']['out_dir']:
        raise ValueError('training.out_dir is not set: give it in the config or pass --out-dir')
    check_out_dir(config['training']['out_dir'], args.resume, args.overwrite)     # before any dataset work
    return Trainer(config).run(resume=args.resume, overwrite=args.overwrite)


def train_main(argv: Optional[list[str]] = None) -> int:
    """``kdiff-ztsnr train --config cfg.json [--resume DIR] [--steps N] [--out-dir DIR]``."""
    parser = add_train_args(argparse.ArgumentParser(prog='kdiff-ztsnr train', description=DESCRIPTION))
    train_from_args(parser.parse_args(argv))
    return 0

