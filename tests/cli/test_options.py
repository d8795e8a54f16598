"""`cli.options`: every sample option leaves None when not given (so `given_params` can tell a flag the user
passed from a default), the help shows `GenerationParams`' defaults, and the train/device options parse."""

import argparse
import dataclasses

from kdiff_ztsnr.cli.options import DESCRIPTION, Formatter, add_device_args, add_sample_args, add_train_args
from kdiff_ztsnr.generation.params import GenerationParams


def sample_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='sample', formatter_class=Formatter)
    add_sample_args(p)
    return p


def test_no_generation_option_has_a_default_of_its_own():
    args = sample_parser().parse_args([])
    fields = {f.name for f in dataclasses.fields(GenerationParams)}
    given = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    assert given == {}, given                       # the defaults live in GenerationParams alone
    assert args.out == 'out' and args.device == 'auto' and args.dtype == 'auto'


def test_options_reach_their_parameters():
    args = sample_parser().parse_args(['a cat', '--steps', '12', '--scale', '3.5', '--schedule', 'karras',
                                       '--negative', 'blur', '-n', '3', '--no-resolution-aware',
                                       '--no-quantize-timesteps', '--lora', 'a.safetensors:0.5', '--lora', 'b'])
    assert (args.prompt, args.steps, args.scale, args.noise_schedule, args.uc, args.n_samples) == \
        ('a cat', 12, 3.5, 'karras', 'blur', 3)
    assert args.resolution_aware is False and args.quantize_timesteps is False
    assert args.lora == ['a.safetensors:0.5', 'b']


def test_help_shows_the_parameters_defaults():
    d = GenerationParams()
    text = ' '.join(sample_parser().format_help().split())
    assert f'(default: {d.steps})' in text and f'(default: {d.sampler})' in text
    assert f'(default: {d.noise_schedule})' in text


def test_device_options_without_the_sdxl_ones():
    p = argparse.ArgumentParser()
    add_device_args(p, sdxl=False)
    assert vars(p.parse_args(['--device', 'cpu', '--dtype', 'bf16'])) == {'device': 'cpu', 'dtype': 'bf16'}
    q = argparse.ArgumentParser()
    add_device_args(q)
    args = q.parse_args(['--vae-dtype', 'fp32', '--vae-tiling', '--config', 'dir', '--ztsnr-table', 'on'])
    assert (args.vae_dtype, args.vae_tiling, args.model_config, args.ztsnr_table) == ('fp32', True, 'dir', 'on')


def test_train_options():
    p = add_train_args(argparse.ArgumentParser(description=DESCRIPTION))
    args = p.parse_args(['--config', 'c.json', '--steps', '5', '--out-dir', 'o', '--trust-code'])
    assert (args.config, args.steps, args.out_dir, args.trust_code, args.resume, args.overwrite) == \
        ('c.json', 5, 'o', True, None, False)
