"""The sub-commands' options: `add_sample_args` (sample), `add_device_args` (--device/--dtype and the SDXL
loading options of sample and demo) and `add_train_args` (train). Only argparse calls: the defaults shown in
--help come from `GenerationParams`, and nothing here imports torch.
"""

import argparse

from ..generation.params import REGIMES, SAMPLER_NAMES, SCHEDULES, GenerationParams

Formatter = argparse.ArgumentDefaultsHelpFormatter

DESCRIPTION = 'Train a v-prediction ZTSNR model from a config (see examples/train_tiny.md).'


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
