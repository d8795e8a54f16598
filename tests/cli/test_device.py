"""Issue #9: --device/--dtype everywhere, the SDXL loading options on the CLI (--config, --prediction,
--ztsnr-table), inspect --model, export-diffusers-config read back by diffusers, and the empty-negative zeros."""

import json

import pytest
import torch

pytest.importorskip('diffusers')

from safetensors.torch import load_file  # noqa: E402

from kdiff_ztsnr import cli  # noqa: E402
from kdiff_ztsnr.generation.generate import generate  # noqa: E402
from kdiff_ztsnr.generation.lookup import load_pipeline  # noqa: E402
from kdiff_ztsnr.generation.params import GenerationParams  # noqa: E402
from tests.helpers import write_tiny_sdxl  # noqa: E402


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    """A tiny SDXL single file (non-stock architecture), the markerless copy and the diffusers folder."""
    return write_tiny_sdxl(tmp_path_factory.mktemp('tiny'))


def error_line(capsys, args) -> str:
    assert cli.main([str(a) for a in args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('error: ')
    return err[0]


@pytest.mark.parametrize('extra, expect', [
    (['--device', 'cuda:7'], "cuda:7"), (['--device', 'tpu'], 'cuda:N, mps'), (['--dtype', 'fp8'], 'fp32, fp16, bf16'),
    (['--vae-dtype', 'fp8'], '--vae-dtype'), (['--config', '/nonexistent/cfg'], '--config /nonexistent/cfg'),
    (['--prediction', 'eps'], 'v-prediction models only'), (['--ztsnr-table', 'maybe'], 'on, off')])
def test_bad_options_give_one_error_line(capsys, tmp_path, extra, expect):
    if extra[:2] == ['--device', 'cuda:7'] and torch.cuda.device_count() > 7:
        pytest.skip('this machine has a cuda:7')
    line = error_line(capsys, ['sample', 'x', '--out', tmp_path] + extra)
    assert expect in line


def test_config_folder_without_configs_is_refused(capsys, tmp_path):
    (tmp_path / 'empty').mkdir()
    assert 'no unet/config.json' in error_line(capsys, ['sample', 'x', '--config', tmp_path / 'empty'])


def sample_args(model, out, *extra):
    return ['sample', 'a cat', '--model', model, '--steps', 2, '--width', 64, '--height', 64, '--device', 'cpu',
            '--out', out, '--quiet', *extra]


@pytest.mark.parametrize('dtype', ['bf16', 'fp16'])
def test_half_precision_on_cpu(tiny, tmp_path, capsys, dtype):
    """Both half dtypes run on CPU, through the CLI (tiny SDXL with --config) and the API (SDXL, embedded)."""
    assert cli.main([str(a) for a in sample_args(tiny['file'], tmp_path, '--config', tiny['folder'],
                                                 '--dtype', dtype)]) == 0
    assert f'{dict(bf16="bfloat16", fp16="float16")[dtype]} on cpu' in capsys.readouterr().err
    p = GenerationParams(prompt='a cat', steps=3, width=64, height=64, sampler='euler', seed=1)
    full = generate(load_pipeline(tiny['folder'], device='cpu', dtype='fp32'), p)
    pipe = load_pipeline(tiny['folder'], device='cpu', dtype=dtype)
    assert pipe.components['unet'].dtype == {'bf16': torch.bfloat16, 'fp16': torch.float16}[dtype]
    half = generate(pipe, p)
    assert torch.isfinite(half).all() and 0 < (half - full).abs().mean() < 0.05      # rounding, not garbage
    emb = load_pipeline('embedded', device='cpu', dtype=dtype)
    assert next(emb.inner_model.parameters()).dtype != torch.float32
    out = generate(emb, GenerationParams(prompt='completely black', steps=4, width=32, height=32))
    assert torch.isfinite(out).all() and out.mean() < 0                              # still dark


def test_config_loads_non_stock_single_file(tiny, tmp_path, capsys):
    line = error_line(capsys, sample_args(tiny['file'], tmp_path))                  # shipped full-size configs
    assert 'unet' in line and '--config' in line
    assert cli.main([str(a) for a in sample_args(tiny['file'], tmp_path, '--config', tiny['folder'])]) == 0
    assert sorted(p.name for p in tmp_path.glob('*.png')) == ['00000-0.png']


def test_prediction_and_ztsnr_overrides(tiny, tmp_path, capsys):
    cfg = ['--config', tiny['folder']]
    line = error_line(capsys, sample_args(tiny['nomarkers'], tmp_path, *cfg))
    assert '--prediction v' in line
    assert cli.main([str(a) for a in sample_args(tiny['nomarkers'], tmp_path, *cfg, '--prediction', 'v',
                                                 '--ztsnr-table', 'on')]) == 0
    err = capsys.readouterr().err
    assert err.count('model nomarkers.safetensors: v-prediction (--prediction v), zero-terminal-SNR table on '
                     '(--ztsnr-table)') == 1
    on = load_pipeline(tiny['nomarkers'], config_dir=tiny['folder'], prediction_type='v', zero_terminal_snr=True)
    off = load_pipeline(tiny['nomarkers'], config_dir=tiny['folder'], prediction_type='v', zero_terminal_snr=False)
    assert on.zero_terminal_snr and not off.zero_terminal_snr
    assert cli.main(['inspect', '--model', str(tiny['nomarkers'])]) == 0
    seen = json.loads(capsys.readouterr().out)
    assert seen['prediction_type'] is None and seen['marker_keys'] == [] and seen['components']['unet'] > 0
    assert cli.main(['inspect', '--model', str(tiny['file'])]) == 0
    seen = json.loads(capsys.readouterr().out)
    assert seen['prediction_type'] == 'v' and seen['zero_terminal_snr'] is True
    assert seen['detected'] == 'v-prediction (marker keys), zero-terminal-SNR table on (marker keys)'


def test_export_config_lets_diffusers_read_the_file_offline(tiny, tmp_path):
    """diffusers' from_single_file(…, config=DIR) on our exported folder gives our weights exactly."""
    from diffusers import StableDiffusionXLPipeline
    assert cli.main(['export-diffusers-config', str(tmp_path / 'cfg'), '--model', str(tiny['file']),
                     '--config', str(tiny['folder'])]) == 0
    sched = json.loads((tmp_path / 'cfg' / 'scheduler' / 'scheduler_config.json').read_text())
    assert sched['prediction_type'] == 'v_prediction' and sched['rescale_betas_zero_snr'] is True
    theirs = StableDiffusionXLPipeline.from_single_file(str(tiny['file']), config=str(tmp_path / 'cfg'),
                                                        local_files_only=True)
    ours = load_pipeline(tiny['file'], config_dir=tmp_path / 'cfg').components
    pairs = [(theirs.unet, ours['unet']), (theirs.vae, ours['vae']), (theirs.text_encoder, ours['text'].encoders[0]),
             (theirs.text_encoder_2, ours['text'].encoders[1])]
    for a, b in pairs:
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert theirs.scheduler.config.prediction_type == 'v_prediction'


def test_empty_negative_prompt_is_zeros_like_diffusers(tiny):
    """force_zeros_for_empty_prompt (model_index.json; single files default to it): our sample with uc='' equals
    diffusers' StableDiffusionXLPipeline (negative_prompt=None) on the same weights and noise, clamped at 4096."""
    from benchmarks.gpu import pipelines, runners
    pipe = load_pipeline(tiny['folder'])
    assert pipe.force_zeros_for_empty_prompt
    c = pipe.components
    m = {'unet': c['unet'], 'vae': c['vae'], 'text_encoder': c['text'].encoders[0],
         'text_encoder_2': c['text'].encoders[1]}
    ours, theirs = pipelines(m)
    fns = runners(ours, theirs, 64, 6, 2)
    with torch.no_grad():
        diff = (fns['package (clamp 4096)']() - fns['diffusers']()).abs().max().item()
        ours.force_zeros_for_empty_prompt = False                                     # encode "" instead
        encoded = (fns['package (clamp 4096)']() - fns['diffusers']()).abs().max().item()
    assert diff < 1e-3 and encoded > 10 * diff


def readme_commands() -> list[list[str]]:
    """The kdiff-ztsnr lines of docs/sdxl.md ("Running a real SDXL v-pred model")."""
    import shlex
    from pathlib import Path
    text = (Path(__file__).parents[2] / 'docs' / 'sdxl.md').read_text()
    section = text.split('# Running a real SDXL v-pred model', 1)[1].split('\n## ', 1)[0]
    lines = [l.split('  #')[0].strip() for l in section.split('```bash', 1)[1].split('```', 1)[0].splitlines()]
    return [shlex.split(l)[1:] for l in lines if l.startswith('kdiff-ztsnr ')]


def test_readme_commands_run_on_the_tiny_model(tiny, tmp_path, capsys):
    """Every command of docs/sdxl.md's block, on the tiny model (CPU; small canvas and 2 steps)."""
    names = {'model.safetensors': tiny['file'], 'nomarkers.safetensors': tiny['nomarkers'],
             'custom_configs/': tiny['folder'], 'sdxl_config/': tmp_path / 'cfg'}
    commands = readme_commands()
    assert {c[0] for c in commands} == {'inspect', 'sample', 'export-diffusers-config'} and len(commands) >= 5
    for args in commands:
        args = [str(names.get(a, a)) for a in args]
        if args[0] == 'sample':
            fixed = {'--device': 'cpu', '--width': '64', '--height': '64', '--steps': '2'}
            args = [fixed.get(args[i - 1], a) if i else a for i, a in enumerate(args)]
            args += ([] if '--config' in args else ['--config', str(tiny['folder'])]) + \
                ['--width', '64', '--height', '64', '--steps', '2', '--out', str(tmp_path / 'out'), '--quiet']
        assert cli.main(args) == 0, args


def test_single_file_reader_matches_safetensors(tiny):
    """The streaming reader (plain reads per tensor, cast on the way) gives load_file's tensors exactly."""
    from kdiff_ztsnr.models.sdxl.loading import SingleFile
    ref, f = load_file(str(tiny['file'])), SingleFile(tiny['file'])
    got = {}
    for prefix in ('model.', 'first_stage_model.', 'conditioner.', 'v_pred', 'ztsnr'):
        got.update(f.component(prefix, torch.float32, 'cpu'))
    assert got.keys() == ref.keys()
    assert all(got[k].dtype == ref[k].dtype and torch.equal(got[k], ref[k]) for k in ref)
    half = f.component('model.diffusion_model.', torch.bfloat16, 'cpu')
    assert all(v.dtype == torch.bfloat16 and torch.equal(v, ref[k].to(torch.bfloat16)) for k, v in half.items())
