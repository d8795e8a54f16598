"""``kdiff-ztsnr train``: train from a config, or resume a run (its options, and how a command ends)."""

import argparse
import signal
import sys
from pathlib import Path
from typing import Callable, Optional

from ..untrusted import printable


DESCRIPTION = 'Train a v-prediction ZTSNR model from a config (see examples/train_tiny.md).'


def add_train_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument('--config', type=str, default=None,
                        help='JSON config (merged over the defaults); optional with --resume')
    parser.add_argument('--resume', type=str, default=None,
                        help='checkpoint directory, or an out_dir (continues from its latest checkpoint)')
    parser.add_argument('--steps', type=int, default=None, help='override training.steps')
    parser.add_argument('--out-dir', type=str, default=None, help='override training.out_dir')
    parser.add_argument('--trust-code', action='store_true',
                        help="allow model.type 'module' in the --config file: imports and runs the code its "
                             "model.target names (never taken from a checkpoint)")
    parser.add_argument('--overwrite', action='store_true',
                        help='start a new run in an out_dir that holds a previous one (its checkpoints are removed)')
    return parser


def train_from_args(args: argparse.Namespace):
    from ..models.trained import resolve_checkpoint
    from .config import load_training_config
    from .runs import check_out_dir, check_resumable
    from .trainer import Trainer
    from .schema import validate_config
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


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like KeyboardInterrupt for SIGINT (unwinds: temporary files go)."""


def _terminate(signum, frame):
    raise Terminated()


def run_command(name: str, command: Callable[[], int], say: Callable[[Exception], str] = str) -> int:
    """Run a command as the CLI does: a user error (ValueError, OSError) is one ``error:`` line (its message as
    `say` words it, escaped) and exit 2; SIGINT / SIGTERM one line and exit 130 / 143, no traceback."""
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return command()
    except (ValueError, OSError) as e:       # user errors (CheckpointError is a ValueError): one line
        print(f'error: {printable(say(e))}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f'interrupted (SIGINT): {name} stopped', file=sys.stderr)
        return 130
    except Terminated:
        print(f'terminated (SIGTERM): {name} stopped', file=sys.stderr)
        return 143
    finally:
        signal.signal(signal.SIGTERM, previous)

