"""A1111/Forge infotext and NAI Comment JSON: the fields those hosts (and Civitai) read, read back by `inspect`,
and an A1111 PNG re-run with ``sample --from-image``."""

import hashlib
import json

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from kdiff_ztsnr import cli
from kdiff_ztsnr.generation.params import GenerationParams
from kdiff_ztsnr.generation.metadata import a1111_text, parse_a1111, read_metadata

# Written the way A1111 1.10 / Forge write infotext (field order, names, quoting of values with ':' or ',').
FORGE_TEXT = ('1girl, night sky, {stars}\nNegative prompt: lowres, bad anatomy\nSteps: 28, Sampler: Euler a, '
              'Schedule type: Uniform, CFG scale: 5.5, Seed: 3141592653, Size: 832x1216, Model hash: 1449e5b0b9, '
              'Model: animagine-xl-3.1, Denoising strength: 0.4, RNG: CPU, Noise Schedule: Zero Terminal SNR, '
              'Lora hashes: "detail: 0123456789ab", Version: f2.0.1v1.10.1-previous-313-g8a042934')


def save_with_text(path, **chunks):
    info = PngImagePlugin.PngInfo()
    for k, v in chunks.items():
        info.add_text(k, v)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(path, pnginfo=info)


def test_infotext_has_the_fields_a1111_and_civitai_read(tmp_path):
    ckpt = tmp_path / 'my-model_v3.safetensors'
    ckpt.write_bytes(b'not really weights' * 1000)
    p = GenerationParams(prompt='a cat', uc='lowres', steps=12, scale=4.5, seed=1234, width=64, height=32,
                         sampler='euler_ancestral', noise_schedule='karras', model=str(ckpt)).to_dict()
    text = a1111_text(p)
    assert text.startswith('a cat\nNegative prompt: lowres\nSteps: 12, Sampler: Euler a, Schedule type: Karras, '
                           'CFG scale: 4.5, Seed: 1234, Size: 64x32, Model hash: '
                           f'{hashlib.sha256(ckpt.read_bytes()).hexdigest()[:10]}, Model: my-model_v3, ')
    assert 'RNG: CPU' in text and 'Noise Schedule: Zero Terminal SNR' in text
    for name, a1111 in [('native', 'Uniform'), ('recommended', 'Karras'), ('exponential', 'Exponential')]:
        assert f'Schedule type: {a1111},' in a1111_text({**p, 'noise_schedule': name})
    for name, a1111 in [('dpmpp_2m', 'DPM++ 2M'), ('dpmpp_2m_sde', 'DPM++ 2M SDE'), ('euler', 'Euler')]:
        assert f'Sampler: {a1111},' in a1111_text({**p, 'sampler': name})
    weird = a1111_text({**p, 'model': 'embedded', 'ztsnr': 'a: b, c'})         # quoted as A1111 does
    assert parse_a1111(weird)['ztsnr'] == 'a: b, c' and parse_a1111(weird)['model'] == 'embedded'


def test_reads_forge_infotext():
    d = parse_a1111(FORGE_TEXT)
    assert d['prompt'] == '1girl, night sky, {stars}' and d['uc'] == 'lowres, bad anatomy'
    assert {k: d[k] for k in ('steps', 'sampler', 'noise_schedule', 'scale', 'seed', 'width', 'height', 'strength',
                              'model', 'model_hash', 'rng', 'zero_terminal_snr')} == {
        'steps': 28, 'sampler': 'euler_ancestral', 'noise_schedule': 'native', 'scale': 5.5, 'seed': 3141592653,
        'width': 832, 'height': 1216, 'strength': 0.4, 'model': 'animagine-xl-3.1', 'model_hash': '1449e5b0b9',
        'rng': 'CPU', 'zero_terminal_snr': True}


@pytest.mark.parametrize('fields,want', [
    ('Sampler: DPM++ 2M Karras', {'sampler': 'dpmpp_2m', 'noise_schedule': 'karras'}),   # A1111 < 1.9
    ('Sampler: DPM++ 2M, Schedule type: Automatic', {'sampler': 'dpmpp_2m'}),            # sampler's default
    ('Sampler: DPM++ 2M SDE, Schedule type: Exponential', {'sampler': 'dpmpp_2m_sde', 'noise_schedule': 'exponential'}),
    ('Sampler: "euler_ancestral", Schedule type: "recommended"',                          # this package, before
     {'sampler': 'euler_ancestral', 'noise_schedule': 'recommended'})])
def test_sampler_and_schedule_names(fields, want):
    d = parse_a1111(f'x\nNegative prompt: y\nSteps: 4, {fields}, Seed: 1')
    assert {k: d[k] for k in ('sampler', 'noise_schedule') if k in d} == want


def test_reads_nai_comment(tmp_path):
    nai = {'prompt': 'completely black', 'steps': 28, 'height': 1216, 'width': 832, 'scale': 5.0, 'uncond_scale': 1.0,
           'cfg_rescale': 0.0, 'seed': 2412, 'n_samples': 1, 'noise_schedule': 'native', 'sampler': 'k_euler_ancestral',
           'sm': False, 'sm_dyn': False, 'dynamic_thresholding': False, 'uc': 'lowres',
           'request_type': 'PromptGenerateRequest'}
    save_with_text(tmp_path / 'nai.png', Title='AI generated image', Software='NovelAI', Source='NovelAI Diffusion V3',
                   Comment=json.dumps(nai))
    d = read_metadata(tmp_path / 'nai.png')
    assert d['sampler'] == 'euler_ancestral' and d['noise_schedule'] == 'native' and d['uc'] == 'lowres'
    p = GenerationParams.from_dict(d)
    assert (p.steps, p.scale, p.seed, p.width, p.height) == (28, 5.0, 2412, 832, 1216)


def run(args):
    assert cli.main([str(a) for a in args]) == 0


def test_a1111_png_runs_from_image(tmp_path, capsys):
    text = ('a red circle\nNegative prompt: blue\nSteps: 3, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 4, '
            'Seed: 77, Size: 32x32, Model: embedded, RNG: CPU, Noise Schedule: Zero Terminal SNR, Version: v1.10.1')
    save_with_text(tmp_path / 'a1111.png', parameters=text)
    run(['inspect', tmp_path / 'a1111.png'])
    shown = json.loads(capsys.readouterr().out)
    assert shown['sampler'] == 'dpmpp_2m' and shown['noise_schedule'] == 'karras' and shown['seed'] == 77
    run(['sample', '--from-image', tmp_path / 'a1111.png', '--out', tmp_path / 'a', '--quiet'])
    run(['sample', 'a red circle', '--uc', 'blue', '--steps', 3, '--sampler', 'dpmpp_2m', '--schedule', 'karras',
         '--scale', 4, '--seed', 77, '--width', 32, '--height', 32, '--out', tmp_path / 'b', '--quiet'])
    a, b = tmp_path / 'a' / '00000-77.png', tmp_path / 'b' / '00000-77.png'
    meta = read_metadata(a)
    assert {k: meta[k] for k in ('prompt', 'uc', 'steps', 'sampler', 'noise_schedule', 'scale', 'width', 'height')} == {
        'prompt': 'a red circle', 'uc': 'blue', 'steps': 3, 'sampler': 'dpmpp_2m', 'noise_schedule': 'karras',
        'scale': 4, 'width': 32, 'height': 32}
    assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))   # the same run as the flags
