"""End to end: a tiny trainer checkpoint sampled through the CLI (txt2img, img2img, Enhance, inpainting),
metadata round trips and re-runs, tokenize, and the CLI's errors."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from kdiff_ztsnr import cli, schedule_policy
from kdiff_ztsnr.generation.generate import generate
from kdiff_ztsnr.generation.params import GenerationParams
from kdiff_ztsnr.generation.lookup import load_pipeline
from kdiff_ztsnr.generation.metadata import read_metadata
from tests.helpers import train_tiny_checkpoint


@pytest.fixture(scope='module')
def ckpt(tmp_path_factory):
    return train_tiny_checkpoint(tmp_path_factory.mktemp('ckpt'))


def run(args):
    assert cli.main([str(a) for a in args]) == 0


def png(path):
    return np.asarray(Image.open(path).convert('RGB'))


def test_sample_inspect_rerun(ckpt, tmp_path, capsys):
    run(['sample', 'red circle, blue background', '--model', ckpt, '--uc', 'green', '--steps', 4, '--seed', 7,
         '-n', 2, '--width', 16, '--height', 16, '--sampler', 'dpmpp_2m_sde', '--cfg-rescale', 0.5,
         '--out', tmp_path / 'a', '--quiet'])
    files = sorted((tmp_path / 'a').glob('*.png'))
    assert [f.name for f in files] == ['00000-7.png', '00001-8.png']
    meta = read_metadata(files[1])
    assert meta['prompt'] == 'red circle, blue background' and meta['seed'] == 8 and meta['uc'] == 'green'
    assert meta['sampler'] == 'dpmpp_2m_sde' and meta['cfg_rescale'] == 0.5 and meta['model'] == str(ckpt)
    capsys.readouterr()
    run(['inspect', files[1]])
    assert json.loads(capsys.readouterr().out) == meta
    # re-running from the metadata reproduces the second image of the batch as a single run; the model path
    # the image names is never opened by itself: the user passes --model
    assert cli.main(['sample', '--from-image', str(files[1]), '--out', str(tmp_path / 'b')]) == 2
    assert 'not opened' in capsys.readouterr().err
    run(['sample', '--from-image', files[1], '--model', ckpt, '--out', tmp_path / 'b', '--quiet'])
    assert np.abs(png(tmp_path / 'b' / '00000-8.png').astype(int) - png(files[1]).astype(int)).max() <= 1


@pytest.mark.parametrize('sampler', ['euler', 'euler_ancestral', 'dpmpp_2m', 'dpmpp_sde', 'heun'])
@pytest.mark.parametrize('regime', [{'regime': 'exact'}, {'regime': 'clamp'},
                                    {'regime': 'sigma_max', 'sigma_start': 14.6146}])
def test_every_regime_and_schedule(ckpt, sampler, regime):
    pipe = load_pipeline(ckpt)
    for schedule in ('native', 'karras', 'exponential', 'polyexponential', 'recommended'):
        p = GenerationParams(prompt='completely black', steps=3, width=16, height=16, sampler=sampler,
                             noise_schedule=schedule, **regime)
        img = generate(pipe, p)
        assert img.shape == (1, 3, 16, 16) and torch.isfinite(img).all()


def test_schedules_per_regime(ckpt):
    pipe = load_pipeline(ckpt)
    exact, clamped = pipe.denoiser(), pipe.denoiser(20000.)
    karras = schedule_policy.sigmas(exact, 'karras', 10)
    assert math.isinf(karras[0]) and karras[1].item() == pytest.approx(2254.24, rel=1e-4)
    assert schedule_policy.sigmas(clamped, 'native', 10)[0].item() == 20000.
    assert schedule_policy.sigmas(clamped, 'exponential', 10)[0].item() == pytest.approx(20000.)
    s = schedule_policy.sigmas(exact, 'native', 10, sigma_start=136.)
    assert s[0].item() == pytest.approx(136., rel=1e-4) and len(s) == 11


def test_resolution_aware_sigma_max(ckpt):
    from kdiff_ztsnr.generation.generate import start_sigma
    pipe = load_pipeline(ckpt)
    p = GenerationParams(prompt='x', regime='sigma_max', sigma_start=14.6, width=2 * pipe.base_side,
                         height=2 * pipe.base_side)
    assert start_sigma(p, pipe) == pytest.approx(29.2)
    p.resolution_aware = False
    assert start_sigma(p, pipe) == pytest.approx(14.6)


def test_batch_reproduces_single_runs(ckpt):
    pipe = load_pipeline(ckpt)
    for sampler in ('euler_ancestral', 'dpmpp_3m_sde'):
        p = GenerationParams(prompt='white background', steps=4, width=16, height=16, n_samples=3, seed=5,
                             sampler=sampler)
        batch = generate(pipe, p)
        single = generate(pipe, GenerationParams(**{**p.to_dict(), 'n_samples': 1, 'seed': 7}))
        torch.testing.assert_close(batch[2:], single, rtol=1e-4, atol=1e-4)


def test_img2img_enhance_inpaint(ckpt, tmp_path):
    init = tmp_path / 'init.png'
    Image.fromarray(np.full((16, 16, 3), [200, 20, 20], np.uint8)).save(init)
    mask = np.zeros((16, 16, 3), np.uint8)
    mask[:, 8:] = 255                                              # repaint the right half only
    Image.fromarray(mask).save(tmp_path / 'mask.png')
    run(['sample', 'blue square', '--model', ckpt, '--init-image', init, '--mask', tmp_path / 'mask.png',
         '--steps', 4, '--width', 16, '--height', 16, '--out', tmp_path / 'inp', '--quiet'])
    out = png(tmp_path / 'inp' / '00000-0.png').astype(int)
    assert np.abs(out[:, :8] - [200, 20, 20]).max() <= 1          # unmasked latents kept exactly
    run(['sample', 'blue square', '--model', ckpt, '--init-image', init, '--strength', 0.4, '--steps', 5,
         '--width', 16, '--height', 16, '--out', tmp_path / 'i2i', '--quiet'])
    assert read_metadata(tmp_path / 'i2i' / '00000-0.png')['strength'] == 0.4
    run(['sample', 'blue square', '--model', ckpt, '--init-image', init, '--enhance', '--steps', 4,
         '--width', 16, '--height', 16, '--out', tmp_path / 'enh', '--quiet'])
    meta = read_metadata(tmp_path / 'enh' / '00000-0.png')
    assert (meta['width'], meta['height'], meta['strength']) == (24, 24, 0.5)   # ×1.5, a multiple of 2
    assert png(tmp_path / 'enh' / '00000-0.png').shape == (24, 24, 3)


def test_alpha_metadata(ckpt, tmp_path):
    run(['sample', 'x', '--model', ckpt, '--steps', 2, '--width', 64, '--height', 64, '--alpha-metadata',
         '--out', tmp_path, '--quiet'])
    im = Image.open(tmp_path / '00000-0.png')
    assert im.mode == 'RGBA'
    from kdiff_ztsnr.generation.metadata import read_alpha
    assert read_alpha(im)['prompt'] == 'x'


def test_tokenize(capsys):
    words = ' '.join(f'w{i}' for i in range(40))      # 2 tokens each: 80 tokens, crosses the 75 boundary
    run(['tokenize', words + ', {bright}'])
    out = capsys.readouterr().out
    assert 'chunk 1: 75 tokens (positions 1-75)' in out and 'chunk 2:' in out and '×1.05' in out


def expect_error(args, match, capsys):
    """A user error: exit status 2 and exactly one line on stderr, 'error: …', no traceback."""
    capsys.readouterr()
    assert cli.main([str(a) for a in args]) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and err.count('\n') == 1 and 'Traceback' not in err, err
    assert match in err, err


def test_errors(ckpt, tmp_path, capsys):
    base = ['sample', 'x', '--model', str(ckpt), '--steps', '2', '--out', str(tmp_path), '--quiet']
    expect_error(base + ['--width', '15', '--height', '16'], 'multiples of', capsys)
    expect_error(base + ['--sampler', 'nope'], "--sampler: unknown sampler 'nope'", capsys)   # one error line
    expect_error(['sample', 'x', '--model', tmp_path / 'missing'], 'model not found', capsys)
    bad = tmp_path / 'bad.png'
    bad.write_bytes(b'not a png')
    expect_error(base + ['--init-image', bad, '--width', '16', '--height', '16'], 'cannot read image', capsys)
    expect_error(['inspect', bad], 'bad.png', capsys)
    expect_error(base + ['--mask', bad], '--mask and --enhance need --init-image', capsys)
    capsys.readouterr()
    cli.main(['sample', ' '.join(['cat'] * 300), '--model', str(ckpt), '--steps', '1', '--width', '16',
              '--height', '16', '--out', str(tmp_path), '--quiet'])
    assert 'cat cat' in capsys.readouterr().err                     # the dropped part is shown


def test_demo_grid_and_table(ckpt, tmp_path, capsys):
    """Two samplers x four prompts x three regimes in the table; the figure: large nearest-upscaled tiles on grey."""
    from kdiff_ztsnr.generation import demo_figure as fig
    run(['demo', '--model', ckpt, '--samples', 2, '--uncond-samples', 4, '--steps', 3, '--out', tmp_path, '--quiet'])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(('euler_ancestral ', 'dpmpp_2m '))]
    assert len(rows) == 2 * 4 * 3
    assert 'completely black' in out and 'clamp 20000' in out and 'sigma_max 14.6146' in out
    with Image.open(tmp_path / 'regimes.png') as im:
        grid = np.asarray(im.convert('RGB'))
    side = 16 * (fig.TILE // 16)                                       # 16-pixel images, upscaled x6
    assert grid.shape[1] == fig.LABEL_W + 4 * (2 * side + fig.GAP + fig.GROUP_GAP)
    assert (grid[-5, -5] == fig.GREY).all()                            # a neutral canvas, not white


def test_schedule_names_are_the_policy_schedules():
    from kdiff_ztsnr.generation.params import SCHEDULES
    from kdiff_ztsnr.schedule_policy import SCHEDULE_NAMES
    assert SCHEDULES == (*SCHEDULE_NAMES, 'recommended')


def test_sampler_names_are_the_schedule_samplers():
    """The CLI's torch-free sampler list is exactly the package's samplers that take a schedule."""
    from kdiff_ztsnr.generation.params import SAMPLER_NAMES
    from kdiff_ztsnr.sampling import SAMPLERS
    assert list(SAMPLER_NAMES) == sorted(n for n in SAMPLERS if n not in ('dpm_fast', 'dpm_adaptive'))


@pytest.mark.parametrize('args', [['--help'], ['sample', '--help'], ['train', '--help'], ['demo', '--help'],
                                  ['inspect', '--help'], ['tokenize', '--help']])
def test_help_imports_no_torch_and_warns_nothing(args):
    """`--help` builds the parser without torch or k-diffusion and prints no warning (e.g. pkg_resources)."""
    import subprocess
    import sys
    code = ('import sys; from kdiff_ztsnr.cli import main\n'
            'try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n'
            'heavy = [m for m in ("torch", "k_diffusion", "diffusers", "transformers") if m in sys.modules]\n'
            'print("heavy:", heavy, file=sys.stderr)')
    proc = subprocess.run([sys.executable, '-W', 'default', '-c', code, *args], capture_output=True, text=True,
                          timeout=60)
    assert 'usage: kdiff-ztsnr' in proc.stdout
    assert proc.stderr.strip() == 'heavy: []', proc.stderr


def test_commands_print_no_pkg_resources_warning(tmp_path):
    """A command that imports k-diffusion (and so clip) prints no deprecation warning of the environment."""
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, '-W', 'default', '-m', 'kdiff_ztsnr.cli', 'tokenize', 'a cat'],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and 'chunk 1' in proc.stdout
    assert 'pkg_resources' not in proc.stderr and 'Warning' not in proc.stderr, proc.stderr


def test_clamp_regime_keeps_the_exact_finite_part(ckpt, monkeypatch):
    """Issue #11: regime='clamp' replaces only σ = ∞ by 20000; the finite part below is the exact regime's."""
    from kdiff_ztsnr.generation import generate as gen
    seen = {}
    euler = gen.SAMPLERS['euler']

    def spy(model, x, sigmas, **kw):
        seen.setdefault('sigmas', []).append(sigmas.clone())
        return euler(model, x, sigmas, **kw)
    monkeypatch.setitem(gen.SAMPLERS, 'euler', spy)
    pipe = load_pipeline(ckpt)
    for regime in ('exact', 'clamp'):
        generate(pipe, GenerationParams(prompt='x', steps=6, width=16, height=16, sampler='euler', regime=regime))
    exact, clamp = seen['sigmas']
    assert math.isinf(exact[0]) and clamp[0].item() == 20000. and torch.equal(exact[1:], clamp[1:])
