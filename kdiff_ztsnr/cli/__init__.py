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
with exit status 2. The pieces: `parser` (argparse with "did you mean"), `options` (the sub-commands' options),
`words` (library parameters → flags), `checks` (the sample command's pre-checks), `sample`, `commands`
(inspect, tokenize, demo, export-diffusers-config), `train`, and `run` (how a command ends: errors, signals).
"""

import argparse
from typing import Optional

from .commands import cmd_demo, cmd_export_config, cmd_inspect, cmd_tokenize
from .options import DESCRIPTION, Formatter, add_device_args, add_sample_args, add_train_args
from .parser import Parser
from .run import run_command, show_warning
from .sample import cmd_sample
from .train import cmd_train
from .words import said


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__
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


def main(argv: Optional[list] = None) -> int:
    import warnings
    args = build_parser().parse_args(argv)
    shown, warnings.showwarning = warnings.showwarning, show_warning
    from ..progress import set_quiet
    set_quiet(getattr(args, 'quiet', False))
    try:
        return run_command(args.command, lambda: COMMANDS[args.command](args), say=said)
    finally:
        warnings.showwarning = shown

