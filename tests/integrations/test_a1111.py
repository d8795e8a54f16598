"""A1111/Forge infotext and NAI Comment JSON: the fields those hosts (and Civitai) read, read back by `inspect`,
and an A1111 PNG re-run with ``sample --from-image``."""

import hashlib
import json

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from kdiff_ztsnr import cli
from kdiff_ztsnr.cli.checks import given_params
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
    for name, a1111 in [('native', 'Uniform'), ('sgm_uniform', 'SGM Uniform'), ('exponential', 'Exponential')]:
        assert f'Schedule type: {a1111},' in a1111_text({**p, 'noise_schedule': name})
    for name in ('recommended', 'trailing'):                                     # not in A1111's list: ours only
        text = a1111_text({**p, 'noise_schedule': name})
        assert 'Schedule type' not in text and f'ZTSNR schedule: {name},' in text
    for name, a1111 in [('dpmpp_2m', 'DPM++ 2M'), ('dpmpp_2m_sde', 'DPM++ 2M SDE'), ('euler', 'Euler')]:
        assert f'Sampler: {a1111},' in a1111_text({**p, 'sampler': name})
    weird = a1111_text({**p, 'model': 'embedded', 'regime': 'a: b, c'})         # quoted as A1111 does
    assert parse_a1111(weird)['regime'] == 'a: b, c' and parse_a1111(weird)['model'] == 'embedded'


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


# ------------------------------------------------------------------------------------------- A1111's reading rules

A1111_SAMPLER_LABELS = {'Euler a', 'Euler', 'LMS', 'Heun', 'DPM2', 'DPM2 a', 'DPM++ 2S a', 'DPM++ 2M', 'DPM++ SDE',
                        'DPM++ 2M SDE', 'DPM++ 2M SDE Heun', 'DPM++ 3M SDE', 'DPM fast', 'DPM adaptive', 'Restart'}
A1111_SCHEDULE_TYPES = {'Automatic', 'Uniform', 'Karras', 'Exponential', 'Polyexponential', 'SGM Uniform', 'KL Optimal',
                        'Align Your Steps', 'Simple', 'Normal', 'DDIM', 'Beta'}


def a1111_reads(text: str) -> dict:
    """What A1111's parse_generation_parameters returns, written here from its rules (modules/infotext_utils.py):
    strip the text; the last line is the parameter line only if its pattern finds at least 3 pairs; every other
    line is stripped, lines before one starting "Negative prompt:" are the prompt, that line (minus the label)
    and the rest the negative, joined with newlines; each pair is Key (a word character, then word characters,
    spaces, '-' or '/'), ':', optional spaces, and a value that is a quoted JSON string or runs to the next comma;
    quoted values are JSON-decoded; a value of digits×digits becomes Key-1 and Key-2. Every value stays text."""
    import re
    pair = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
    lines = text.strip().split('\n')
    params = lines.pop() if len(pair.findall(lines[-1])) >= 3 else ''
    prompt, negative, in_negative = [], [], False
    for line in (s.strip() for s in lines):
        if line.startswith('Negative prompt:'):
            in_negative, line = True, line[16:].strip()
        (negative if in_negative else prompt).append(line)
    res = {'Prompt': '\n'.join(prompt), 'Negative prompt': '\n'.join(negative)}
    for k, v in pair.findall(params):
        if v[:1] == '"' == v[-1:]:
            v = json.loads(v)
        m = re.match(r'^(\d+)x(\d+)$', v)
        res.update({f'{k}-1': m.group(1), f'{k}-2': m.group(2)} if m else {k: v})
    return res


ROUND_TRIPS = [
    GenerationParams(prompt='a cat', steps=28, seed=0, width=64, height=64),                       # all defaults
    GenerationParams(prompt='1girl, night sky, {stars}, (smile:1.2)', uc='lowres, "bad", a: b', steps=12, scale=4.5,
                     cfg_rescale=0.7, seed=3141592653, width=832, height=1216, sampler='dpmpp_2m_sde',
                     noise_schedule='karras', eta=0.5, strength=0.4),                              # img2img
    GenerationParams(prompt='line one\nline two', uc='neg one\nneg two', sampler='euler', noise_schedule='trailing',
                     regime='sigma_max', sigma_start=136., resolution_aware=False, n_samples=3, seed=7),
    GenerationParams(prompt='x', sampler='dpm_2_ancestral', noise_schedule='native', regime='clamp', scale=0.),
]


@pytest.mark.parametrize('p', ROUND_TRIPS, ids=range(len(ROUND_TRIPS)))
def test_package_png_read_by_a1111_rules_gives_back_every_field(p, tmp_path):
    from kdiff_ztsnr.generation.metadata import save_png
    save_png(Image.new('RGB', (8, 8)), tmp_path / 'p.png', p.to_dict())
    with Image.open(tmp_path / 'p.png') as im:
        text = im.text['parameters']
    a = a1111_reads(text)
    want = {'Prompt': p.prompt, 'Negative prompt': p.uc, 'Steps': str(p.steps), 'CFG scale': str(p.scale),
            'Seed': str(p.seed), 'Size-1': str(p.width), 'Size-2': str(p.height), 'Model': p.model,
            'CFG rescale': str(p.cfg_rescale), 'ZTSNR': p.regime, 'Batch size': str(p.n_samples),
            'Resolution-aware sigma': str(p.resolution_aware), 'RNG': 'CPU', 'Noise Schedule': 'Zero Terminal SNR'}
    assert {k: a.get(k) for k in want} == want
    assert a['Sampler'] in A1111_SAMPLER_LABELS
    assert a.get('Schedule type', 'Automatic') in A1111_SCHEDULE_TYPES
    assert ('Schedule type' in a) != ('ZTSNR schedule' in a)
    assert a.get('Denoising strength') == (str(p.strength) if p.strength < 1 else None)    # none on txt2img
    assert a.get('Eta') == (None if p.eta is None else str(p.eta))
    assert a.get('Sigma max') == (None if p.sigma_start is None else str(p.sigma_start))
    assert 'None' not in a.values()
    assert float(a['Steps']) == p.steps and float(a['CFG scale']) == p.scale    # A1111's paste casts
    info = PngImagePlugin.PngInfo()                                      # only the A1111 chunk: the package reads it
    info.add_text('parameters', text)
    Image.new('RGB', (8, 8)).save(tmp_path / 'a.png', pnginfo=info)
    assert GenerationParams.from_dict(read_metadata(tmp_path / 'a.png')) == p


@pytest.mark.parametrize('text,key,want', [
    ('Model hash: 1234e56789', 'model_hash', '1234e56789'),              # was float('1234e56789') = inf
    ('Model hash: 0123456789', 'model_hash', '0123456789'),              # was int → 123456789
    ('Model: 1e5', 'model', '1e5'),                                       # was 100000.0
    ('Model: 0042', 'model', '0042'), ('Model: True', 'model', 'True'), ('Model: None', 'model', 'None')])
def test_hashes_and_names_stay_text(text, key, want):
    d = parse_a1111(f'x\nSteps: 4, Seed: 1, CFG scale: 7, {text}')
    assert d[key] == want and (d['steps'], d['seed'], d['scale']) == (4, 1, 7.)


HIRES = ('1girl, <lora:detail:0.6>, night sky, <lora:style_b:1.2>\nNegative prompt: lowres\nSteps: 28, Sampler: DPM++ '
         '2M Karras, CFG scale: 7, Seed: 42, Size: 512x768, Model hash: 1234e56789, Model: 1e5, Denoising strength: '
         '0.4, Hires upscale: 2, Hires steps: 15, Hires upscaler: Latent, Lora hashes: "detail: {h}, style_b: '
         'abcdef012345", Version: v1.10.1')


def tiny_lora(path, meta=None, value=0.):
    import torch
    from safetensors.torch import save_file
    save_file({'lora_unet_x.lora_down.weight': torch.full((2, 2), value)}, str(path), metadata=meta)
    return path


def test_lora_hash_is_a1111s_over_the_tensor_bytes(tmp_path):
    from kdiff_ztsnr.generation.metadata import lora_hash
    a = tiny_lora(tmp_path / 'a.safetensors', {'ss_output_name': 'a'})
    b = tiny_lora(tmp_path / 'b.safetensors', {'ss_output_name': 'something else entirely'})
    raw = a.read_bytes()
    body = raw[8 + int.from_bytes(raw[:8], 'little'):]
    assert lora_hash(a) == hashlib.sha256(body).hexdigest()[:12] == lora_hash(b)     # metadata is not hashed
    assert lora_hash(tiny_lora(tmp_path / 'c.safetensors', value=1.)) != lora_hash(a)


def test_a1111_hires_fix_and_lora_tags_are_read_with_warnings(tmp_path):
    from kdiff_ztsnr.generation.metadata import A1111Warning, lora_hash
    (tmp_path / 'loras' / 'sub').mkdir(parents=True)
    detail = tiny_lora(tmp_path / 'loras' / 'sub' / 'detail.safetensors')
    text = HIRES.format(h=lora_hash(detail))
    with pytest.warns(A1111Warning) as got:
        d = parse_a1111(text, lora_dir=tmp_path / 'loras')
    messages = [str(w.message) for w in got]
    assert 'strength' not in d                                            # never silently img2img
    assert d['hires'] == {'Hires upscale': 2., 'Hires steps': 15, 'Hires upscaler': 'Latent', 'Denoising strength': 0.4}
    assert any('Hires fix' in m and '--width 1024 --height 1536 --strength 0.4' in m for m in messages)
    assert (d['width'], d['height'], d['sampler'], d['noise_schedule']) == (512, 768, 'dpmpp_2m', 'karras')
    assert d['prompt'] == '1girl, , night sky, ' and d['loras'] == [[str(detail), 0.6]]
    assert d['lora_tags'] == [['style_b', 1.2]] and any('style_b:1.2' in m for m in messages)
    assert (d['model_hash'], d['model']) == ('1234e56789', '1e5') and d['a1111'] == {'Version': 'v1.10.1'}
    assert not any('different file' in m for m in messages)
    with pytest.warns(A1111Warning) as got:
        parse_a1111(HIRES.format(h='000000000000'), lora_dir=tmp_path / 'loras')
    assert any(f'detail: {detail} has hash {lora_hash(detail)}, the image was made with 000000000000 (a different '
               'file' in str(w.message) for w in got)
    with pytest.warns(A1111Warning) as got:
        assert parse_a1111(text)['loras'] == []
    assert any('not applied (give --lora-dir DIR): detail:0.6, style_b:1.2' in str(w.message) for w in got)


def test_inspect_and_from_image_with_lora_dir(tmp_path, capsys):
    tiny_lora(tmp_path / 'detail.safetensors')
    save_with_text(tmp_path / 'h.png', parameters=HIRES.format(h='x'))
    run(['inspect', tmp_path / 'h.png', '--lora-dir', tmp_path])
    out = capsys.readouterr()
    assert json.loads(out.out)['loras'] == [[str(tmp_path / 'detail.safetensors'), 0.6]]
    assert 'warning: A1111 Hires fix' in out.err and 'warning: LoRA tags in the prompt not applied' in out.err
    assert cli.main(['inspect', str(tmp_path / 'h.png'), '--lora-dir', str(tmp_path / 'nope')]) == 2
    assert 'error: --lora-dir' in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- CLI names


@pytest.mark.parametrize('argv,want', [
    (['--sampler', 'Euler a'], {'sampler': 'euler_ancestral'}),
    (['--sampler', 'dpmpp_2m_karras'], {'sampler': 'dpmpp_2m', 'noise_schedule': 'karras'}),
    (['--sampler', 'DPM++ 2M Karras'], {'sampler': 'dpmpp_2m', 'noise_schedule': 'karras'}),
    (['--sampler', 'k_dpmpp_2m_sde_ka'], {'sampler': 'dpmpp_2m_sde', 'noise_schedule': 'karras'}),
    (['--sampler', 'DPM++ 2M SDE Exponential'], {'sampler': 'dpmpp_2m_sde', 'noise_schedule': 'exponential'}),
    (['--sampler', 'DPM2 a', '--schedule', 'Karras'], {'sampler': 'dpm_2_ancestral', 'noise_schedule': 'karras'}),
    (['--schedule', 'Uniform'], {'noise_schedule': 'native'}), (['--schedule', 'SGM Uniform'], {'noise_schedule':
                                                                                                'sgm_uniform'}),
    (['--schedule', 'Automatic'], {'noise_schedule': 'recommended'}),
    (['--sampler', 'euler', '--schedule', 'trailing'], {'sampler': 'euler', 'noise_schedule': 'trailing'})])
def test_cli_accepts_a1111_names(argv, want):
    args = cli.build_parser().parse_args(['sample', 'x', *argv])
    assert given_params(args) == {'prompt': 'x', **want}


@pytest.mark.parametrize('argv,message', [
    (['--sampler', 'eular a'], "error: --sampler: unknown sampler 'eular a' (did you mean 'Euler a'?)"),
    (['--sampler', 'dpmpp_2n'], "(did you mean 'dpmpp_2m'?)"),
    (['--sampler', 'DPM++ 2M SDE Heun'], "(did you mean 'DPM++ 2M SDE'?)"),
    (['--schedule', 'karas'], "error: --schedule: unknown schedule 'karas' (did you mean 'karras'?)"),
    (['--schedule', 'Align Your Steps'], "A1111's schedule 'Align Your Steps' is not one this package provides"),
    (['--sampler', 'DPM fast'], 'cannot start from σ = ∞'),
    (['--sampler', 'DPM++ 2M Karras', '--schedule', 'exponential'], 'names the schedule karras, --schedule says')])
def test_cli_refuses_unknown_names_with_the_nearest(argv, message, tmp_path, capsys):
    assert cli.main(['sample', 'x', '--out', str(tmp_path / 'o'), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count('\n') == 1 and not (tmp_path / 'o').exists()
