"""Every `--lora` file is checked before the model loads (count, weight, file kind, format, SDXL keys, paired
ranks, finite bounded values) and against the loaded model's layers before any adapter is attached; any file
name works with FILE[:WEIGHT]; a NaN output names the non-finite weights."""

import math
import os

import pytest
import torch

pytest.importorskip('peft')

from safetensors.torch import load_file, save_file

from kdiff_ztsnr.cli.sample import explain_nan
from kdiff_ztsnr.generation import params as gen_params
from kdiff_ztsnr.generation.generate import generate
from kdiff_ztsnr.generation.params import GenerationParams
from kdiff_ztsnr.models import sdxl
from kdiff_ztsnr.models.sdxl import lora_files
from kdiff_ztsnr.models.sdxl.lora import apply_loras
from kdiff_ztsnr.models.sdxl.lora_files import check_spec, parse_lora
from tests.cli.test_validation import expect_error, no_model  # noqa: F401  (fixture)
from tests.models.test_lora import P, files  # noqa: F401  (fixture)


def edited(files, tmp_path, name, edit):
    """The kohya LoRA with edit(state_dict) applied, saved as tmp_path/name."""
    sd = load_file(str(files['kohya']))
    edit(sd)
    save_file(sd, str(tmp_path / name))
    return tmp_path / name


def first(sd, part='lora_down', where='lora_unet_'):
    return next(k for k in sorted(sd) if k.startswith(where) and part in k)


def set_item(key_of, value):
    def edit(sd):
        sd[key_of(sd)].view(-1)[0] = value
    return edit


BAD_FILES = [
    ('nan', set_item(first, math.nan), ['holds 1 non-finite values']),
    ('inf_te', set_item(lambda sd: first(sd, 'lora_up', 'lora_te2_'), math.inf), ['lora_te2_', 'non-finite']),
    ('huge', set_item(first, 1e30), ['values up to 1e+30']),
    ('sd15_te', lambda sd: sd.update({'lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight':
                                      torch.zeros(4, 32)}), ['SD1.x/2.x text-encoder LoRA key', 'not SDXL']),
    ('unknown', lambda sd: sd.update({'model.diffusion_model.out.weight': torch.zeros(4)}),
     ["'model.diffusion_model.out.weight' is not an SDXL LoRA key"]),
    ('rank', lambda sd: sd.update({first(sd): sd[first(sd)][:2]}), ['do not share a rank']),
    ('no_up', lambda sd: sd.pop(first(sd, 'lora_up')), ['has no up matrix']),
    ('alpha', lambda sd: sd.update({first(sd, 'alpha'): torch.ones(3)}), ['alpha must be one number']),
    ('int', lambda sd: sd.update({first(sd): sd[first(sd)].long()}), ['dtype torch.int64']),
]


@pytest.mark.parametrize('name, edit, match', BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_lora_refused_before_the_model_loads(files, tmp_path, capsys, no_model, name, edit, match):  # noqa: F811
    path = edited(files, tmp_path, f'{name}.safetensors', edit)
    expect_error(['sample', 'a cat', '--model', files['model'], '--lora', files['kohya'], '--lora', f'{path}:0.5',
                  '--out', tmp_path / 'o'], [str(path), *match], capsys)


def test_bad_lora_files_and_specs(files, tmp_path, capsys, no_model):  # noqa: F811
    (tmp_path / 'text.safetensors').write_text('hello')
    (tmp_path / 'empty.safetensors').write_bytes(b'')
    torch.save({'a': torch.zeros(1)}, tmp_path / 'pickle.pt')
    save_file({}, str(tmp_path / 'none.safetensors'))
    os.mkfifo(tmp_path / 'fifo')
    (tmp_path / 'dir').mkdir()
    base = ['sample', 'a cat', '--model', files['model'], '--out', tmp_path / 'o', '--lora']
    for spec, match in [(tmp_path / 'text.safetensors', 'not a readable .safetensors'),
                        (tmp_path / 'empty.safetensors', 'not a readable .safetensors'),
                        (tmp_path / 'pickle.pt', 'pickle .pt/.ckpt LoRAs are refused'),
                        (tmp_path / 'none.safetensors', 'holds no tensors'),
                        (tmp_path / 'fifo', 'not a regular file'),
                        (tmp_path / 'dir', 'not a regular file'),
                        (f'{files["kohya"]}:nan', 'the weight must be a finite number'),
                        (f'{files["kohya"]}:1e9', 'got 1000000000.0'),
                        (f'{files["kohya"]}:abc', ["LoRA file not found: ", ":abc ('abc' after the last ':' is not "
                                                   "a number"]),
                        (tmp_path / 'missing:0.5', 'LoRA file not found: ' + str(tmp_path / 'missing'))]:
        expect_error(base + [spec], [match] if isinstance(match, str) else match, capsys)
    many = [a for _ in range(17) for a in ('--lora', files['kohya'])]
    expect_error(base[:-1] + many, '--lora given 17 times; at most 16', capsys)
    expect_error(['sample', 'a cat', '--lora', files['kohya'], '--out', tmp_path], 'needs an SDXL-architecture',
                 capsys)
    assert lora_files.MAX_LORAS == gen_params.MAX_LORAS


def test_any_file_name_works(files, tmp_path):
    odd = tmp_path / 'x:2'
    odd.write_bytes(files['kohya'].read_bytes())
    assert check_spec(str(odd)) == (str(odd), 1.)                          # no file 'x': the whole name
    assert check_spec(f'{odd}:0.5') == (str(odd), 0.5)
    assert parse_lora(f'{odd}:1') == (str(odd), 1.)
    (tmp_path / 'x').write_bytes(files['kohya'].read_bytes())
    assert parse_lora(str(odd)) == (str(tmp_path / 'x'), 2.)              # both exist: the number wins
    assert parse_lora('a:b:c') == ('a:b:c', 1.) and parse_lora(':3') == (':3', 1.)


def test_shapes_checked_against_the_model_before_any_adapter(files, tmp_path):
    """A LoRA whose ranks pair up but whose cross-attention input is SD1.5's 768, not this model's: refused
    before the good LoRA given first is attached."""
    def sd15_like(sd):
        k = next(x for x in sorted(sd) if 'attn2_to_k.lora_down' in x)
        sd[k] = torch.zeros(sd[k].shape[0], 768)
    bad = edited(files, tmp_path, 'sd15.safetensors', sd15_like)
    lora_files.check_lora_file(bad)                                      # consistent on its own
    pipe = sdxl.load_sdxl(files['model'])
    with pytest.raises(ValueError, match=r'attn2.to_k is \[\d+, \d+\] in this model.*768'):
        apply_loras(pipe, [(files['kohya'], 1.), (bad, 1.)])
    assert not getattr(pipe.components['unet'], 'peft_config', None)
    assert not any('lora' in n for e in pipe.components['text'].encoders for n, _ in e.named_parameters())


def test_nan_output_names_the_weights(files):
    pipe = sdxl.load_sdxl(files['model'])
    apply_loras(pipe, [(files['kohya'], 1.)])
    name, p = next((n, p) for n, p in pipe.components['unet'].named_parameters() if 'lora_A' in n)
    with torch.no_grad():
        p.view(-1)[0] = math.nan
    with pytest.raises(FloatingPointError) as e:
        generate(pipe, GenerationParams(**P))
    msg = explain_nan(pipe, e.value)
    assert 'the LoRA weights hold NaN or inf' in msg and name in msg, msg
    with torch.no_grad():
        p.view(-1)[0] = 0.
    assert torch.isfinite(generate(pipe, GenerationParams(**P))).all()
    assert 'every weight is finite' in explain_nan(pipe, FloatingPointError('x'))
