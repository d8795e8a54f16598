"""`cli.sample`: the sample command called directly — the model loaded with the device options, images saved
with re-runnable metadata, --ztsnr-table checked before loading, and a NaN output explained by the weights."""

import argparse

import pytest
import torch

from kdiff_ztsnr.cli import build_parser
from kdiff_ztsnr.cli.sample import cmd_sample, explain_nan, pipeline_from_args
from kdiff_ztsnr.generation.lookup import load_pipeline
from kdiff_ztsnr.generation.metadata import read_metadata


def test_sample_writes_images_with_their_parameters(tmp_path, capsys):
    args = build_parser().parse_args(['sample', 'completely white', '--steps', '2', '-n', '2', '--seed', '5',
                                      '--out', str(tmp_path), '--quiet'])
    assert cmd_sample(args) == 0
    paths = capsys.readouterr().out.split()
    assert [p.rsplit('/', 1)[1] for p in paths] == ['00000-5.png', '00001-6.png']
    meta = read_metadata(paths[1])
    assert (meta['prompt'], meta['steps'], meta['seed'], meta['n_samples']) == ('completely white', 2, 6, 1)


def test_the_table_option_is_checked_before_loading():
    args = argparse.Namespace(ztsnr_table='maybe', device='cpu', dtype='auto')
    with pytest.raises(ValueError, match="--ztsnr-table 'maybe': choose from on, off"):
        pipeline_from_args(args, 'no/such/model')                 # refused before the path is looked at


def test_pipeline_from_args_uses_device_and_dtype():
    pipe = pipeline_from_args(argparse.Namespace(device='cpu', dtype='bf16'), 'embedded')
    assert pipe.device == torch.device('cpu') and next(pipe.inner_model.parameters()).dtype == torch.bfloat16


def test_a_nan_output_is_explained_by_the_weights():
    pipe = load_pipeline('embedded', device='cpu')
    assert 'every weight is finite' in explain_nan(pipe, FloatingPointError('NaN in the output'))
    name, p = next(pipe.inner_model.named_parameters())
    with torch.no_grad():
        p.view(-1)[0] = float('nan')
    said = explain_nan(pipe, FloatingPointError('NaN in the output'))
    assert said.startswith('NaN in the output: the model weights hold NaN or inf, e.g. inner_model.' + name), said
