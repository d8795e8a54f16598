"""LoRA files on the tiny SDXL for sampling (`--lora FILE[:WEIGHT]`): diffusers and kohya key formats, UNet and both
text encoders; the output equals diffusers' own `load_lora_weights` + `fuse_lora` on the same weights."""

import pytest
import torch

pytest.importorskip('peft')

from diffusers import StableDiffusionXLPipeline  # noqa: E402
from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya  # noqa: E402
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from kdiff_ztsnr import cli  # noqa: E402
from kdiff_ztsnr.generation.generate import generate  # noqa: E402
from kdiff_ztsnr.generation.metadata import read_metadata  # noqa: E402
from kdiff_ztsnr.generation.params import GenerationParams  # noqa: E402
from kdiff_ztsnr.models import sdxl  # noqa: E402
from kdiff_ztsnr.models.sdxl.lora import apply_loras, parse_lora  # noqa: E402
from tests.helpers import tiny_pipeline  # noqa: E402

P = dict(prompt='a cat', uc='', steps=3, scale=5., width=64, height=64, sampler='euler', seed=3)


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    """A tiny SDXL folder and a random LoRA on it (UNet attention + both encoders), saved by diffusers
    (`save_lora_weights`) and converted to kohya keys by diffusers' `convert_state_dict_to_kohya`."""
    root = tmp_path_factory.mktemp('lora')
    pipe = tiny_pipeline()
    sdxl.save_pretrained(pipe, root / 'model')
    c = pipe.components
    torch.manual_seed(5)
    unet_cfg = LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=['to_q', 'to_k', 'to_v', 'to_out.0'])
    te_cfg = LoraConfig(r=2, lora_alpha=2, init_lora_weights=False, target_modules=['q_proj', 'v_proj'])
    c['unet'].add_adapter(unet_cfg)
    for enc in c['text'].encoders:
        inject_adapter_in_model(te_cfg, enc)
    layers = {'unet_lora_layers': get_peft_model_state_dict(c['unet']),
              'text_encoder_lora_layers': get_peft_model_state_dict(c['text'].encoders[0]),
              'text_encoder_2_lora_layers': get_peft_model_state_dict(c['text'].encoders[1])}
    StableDiffusionXLPipeline.save_lora_weights(root / 'diffusers', **layers, weight_name='lora.safetensors')
    flat = load_file(str(root / 'diffusers' / 'lora.safetensors'))
    save_file(convert_state_dict_to_kohya(flat), str(root / 'kohya.safetensors'))
    return {'model': root / 'model', 'diffusers': root / 'diffusers' / 'lora.safetensors',
            'kohya': root / 'kohya.safetensors', 'root': root}


def sample(pipe, **kw):
    return generate(pipe, GenerationParams(**{**P, **kw}))


def fused(files, weight):
    """The LoRA fused into the weights by hand from the diffusers-format file (rank = alpha: ΔW = B·A):
    W += weight·B·A for every targeted Linear of the UNet and both encoders — independent of any loader."""
    pipe = sdxl.load_sdxl(files['model'])
    c = pipe.components
    roots = {'unet': c['unet'], 'text_encoder': c['text'].encoders[0], 'text_encoder_2': c['text'].encoders[1]}
    sd = load_file(str(files['diffusers']))
    with torch.no_grad():
        for key, a in sd.items():
            if '.lora_A.' not in key:
                continue
            part, path = key.split('.', 1)
            path = path.split('.lora_A.')[0]
            if not hasattr(roots[part], 'text_model'):
                path = path.removeprefix('text_model.')
            linear = roots[part].get_submodule(path)
            linear.weight += weight * sd[key.replace('.lora_A.', '.lora_B.')] @ a
    return pipe


@pytest.mark.parametrize('fmt', ['diffusers', 'kohya'])
def test_lora_equals_fusing(files, fmt):
    """Text encodings and a UNet call agree with the fused weights to float32 rounding (≤ 1e-5 on O(1) values);
    the sampled images to 1e-3 (3 steps at CFG 5 and the VAE amplify that rounding), while the LoRA moves them
    by far more than that."""
    base = sdxl.load_sdxl(files['model'])
    x, t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([999., 400.])
    for weight in (1., 0.5):
        pipe, ref = sdxl.load_sdxl(files['model']), fused(files, weight)
        assert apply_loras(pipe, [(files[fmt], weight)]) == ['lora_0']
        cond = [p.encode_prompts(['a cat', '']) for p in (pipe, ref, base)]
        for k in ('context', 'pooled'):
            torch.testing.assert_close(cond[0][k], cond[1][k], atol=1e-5, rtol=0)
            assert (cond[0][k] - cond[2][k]).abs().max() > 0.1                  # the encoders' LoRA acts
        with torch.no_grad():
            v = [p.inner_model(x, t, **cond[1], **p.size_cond(64, 64, 2)) for p in (pipe, ref, base)]
        torch.testing.assert_close(v[0], v[1], atol=1e-5, rtol=0)
        assert (v[0] - v[2]).abs().max() > 0.05                                # the UNet's LoRA acts
        out, want, plain = sample(pipe), sample(ref), sample(base)
        torch.testing.assert_close(out, want, atol=1e-3, rtol=0)
        assert (out - plain).abs().max() > 0.05


def test_weight_zero_is_no_lora(files):
    pipe = sdxl.load_sdxl(files['model'])
    apply_loras(pipe, [(files['kohya'], 0.)])
    torch.testing.assert_close(sample(pipe), sample(sdxl.load_sdxl(files['model'])), atol=1e-6, rtol=0)


def test_parse_lora():
    assert parse_lora('a.safetensors') == ('a.safetensors', 1.)
    assert parse_lora('a.safetensors:0.7') == ('a.safetensors', 0.7)
    assert parse_lora('C:/x/a.safetensors:-1') == ('C:/x/a.safetensors', -1.)
    assert parse_lora('dir:x/a.safetensors') == ('dir:x/a.safetensors', 1.)


def test_cli_lora(files, tmp_path, capsys):
    args = ['sample', 'a cat', '--model', str(files['model']), '--steps', '2', '--width', '64', '--height', '64',
            '--quiet', '--lora', f'{files["kohya"]}:0.5', '--out']
    assert cli.main(args + [str(tmp_path / 'a')]) == 0
    png = sorted((tmp_path / 'a').glob('*.png'))[0]
    assert read_metadata(png)['loras'] == [[str(files['kohya']), 0.5]]
    capsys.readouterr()
    assert cli.main(args[:-3] + ['--lora', str(tmp_path / 'missing.safetensors'), '--out', str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith('error: LoRA file not found')
    assert cli.main(['sample', 'x', '--lora', str(files['kohya']), '--steps', '1', '--out', str(tmp_path)]) == 2
    assert 'needs an SDXL-architecture model' in capsys.readouterr().err


def test_api_and_cli_agree_on_loras(files, tmp_path):
    """`generate` applies GenerationParams.loras itself: the same params give the same image through the API
    (a freshly loaded pipeline, no LoRA attached by hand) and through `kdiff-ztsnr sample --lora`."""
    import numpy as np
    from PIL import Image
    from kdiff_ztsnr.generation.image_io import to_pil
    from kdiff_ztsnr.generation.lookup import load_pipeline
    lora = [[str(files['kohya']), 0.5]]
    assert cli.main(['sample', 'a cat', '--model', str(files['model']), '--steps', '2', '--width', '64', '--height',
                     '64', '--seed', '3', '--quiet', '--lora', f'{files["kohya"]}:0.5', '--out', str(tmp_path)]) == 0
    png = sorted(tmp_path.glob('*.png'))[0]
    p = GenerationParams.from_dict(read_metadata(png))
    assert p.loras == lora
    pipe = load_pipeline(str(files['model']))
    api = np.asarray(to_pil(generate(pipe, p)[0]))
    assert np.array_equal(api, np.asarray(Image.open(png).convert('RGB')))
    plain = np.asarray(to_pil(generate(pipe, GenerationParams.from_dict({**p.to_dict(), 'loras': []}))[0]))
    assert np.abs(api.astype(int) - plain).max() > 10                     # the LoRA acts


def test_generate_follows_the_params_loras(files):
    """One pipeline, params with and without LoRAs in turn: each image is the one a fresh pipeline gives (the
    adapters are swapped, never stacked)."""
    pipe = sdxl.load_sdxl(files['model'])
    with_lora, without = [[str(files['kohya']), 0.5]], []
    a = sample(pipe, loras=with_lora)
    b = sample(pipe, loras=without)
    c = sample(pipe, loras=with_lora)
    assert torch.equal(b, sample(sdxl.load_sdxl(files['model'])))
    assert torch.equal(a, c) and torch.equal(a, sample(sdxl.load_sdxl(files['model']), loras=with_lora))
    assert (a - b).abs().max() > 0.05


def test_merge_lora_file_equals_fusing(files, tmp_path):
    """Merging reads the file as sampling does: base + LoRA (UNet and both encoders) at weight 0.5 → one single
    file whose encoders and UNet equal the hand-fused weights, with no LoRA layers left."""
    from kdiff_ztsnr.models.sdxl.lora import merge_lora_file
    from tests.helpers import TINY_KW
    merge_lora_file(files['model'], files['kohya'], tmp_path / 'merged.safetensors', scale=0.5)
    assert not any('lora' in k for k in load_file(str(tmp_path / 'merged.safetensors')))
    merged, ref = sdxl.load_sdxl(tmp_path / 'merged.safetensors', **TINY_KW), fused(files, 0.5)
    cond = [p.encode_prompts(['a cat', '']) for p in (merged, ref)]
    for k in ('context', 'pooled'):
        torch.testing.assert_close(cond[0][k], cond[1][k], atol=1e-5, rtol=0)
    x, t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([999., 400.])
    with torch.no_grad():
        v = [p.inner_model(x, t, **cond[1], **p.size_cond(64, 64, 2)) for p in (merged, ref)]
    torch.testing.assert_close(v[0], v[1], atol=1e-5, rtol=0)
