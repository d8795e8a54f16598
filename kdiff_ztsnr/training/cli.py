"""``kdiff-ztsnr train`` / ``python -m kdiff_ztsnr.training``: train from a config, or resume a run."""

import argparse
from typing import Optional


DESCRIPTION = 'Train a v-prediction ZTSNR model from a config (see examples/train_tiny.md).'


def add_train_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument('--config', type=str, default=None,
                        help='JSON config (merged over the defaults); optional with --resume')
    parser.add_argument('--resume', type=str, default=None,
                        help='checkpoint directory, or an out_dir (continues from its latest checkpoint)')
    parser.add_argument('--steps', type=int, default=None, help='override training.steps')
    parser.add_argument('--out-dir', type=str, default=None, help='override training.out_dir')
    return parser


def train_from_args(args: argparse.Namespace):
    from ..models.checkpoint import resolve_checkpoint
    from .config import load_training_config
    from .trainer import Trainer
    if args.config is None and args.resume is None:
        raise ValueError('train: give --config, --resume, or both')
    config = load_training_config(args.config if args.config is not None
                                  else resolve_checkpoint(args.resume) / 'model.safetensors')
    if args.steps is not None:
        config['training']['steps'] = args.steps
    if args.out_dir is not None:
        config['training']['out_dir'] = args.out_dir
    return Trainer(config).run(resume=args.resume)


def train_main(argv: Optional[list[str]] = None) -> int:
    """``kdiff-ztsnr train --config cfg.json [--resume DIR] [--steps N] [--out-dir DIR]``."""
    parser = add_train_args(argparse.ArgumentParser(prog='kdiff-ztsnr train', description=DESCRIPTION))
    train_from_args(parser.parse_args(argv))
    return 0

