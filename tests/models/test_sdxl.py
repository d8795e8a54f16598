"""SDXL loading: tiny SDXL-shaped models saved as a diffusers folder and as an SGM single file, loaded back."""

import json
import math
import os
import warnings

import pytest
import torch

pytest.importorskip('diffusers')

from safetensors.torch import load_file, save_file  # noqa: E402

from kdiff_ztsnr.models import sdxl  # noqa: E402
from kdiff_ztsnr.models.sdxl import loading as sdxl_loading  # noqa: E402
from kdiff_ztsnr.generation.generate import generate  # noqa: E402
from kdiff_ztsnr.generation.lookup import load_pipeline  # noqa: E402
from kdiff_ztsnr.generation.params import GenerationParams  # noqa: E402

from tests.helpers import TINY_KW, tiny_pipeline  # noqa: E402


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
    """The original tiny pipeline, its single file and folder, and both loaded back."""
    root = tmp_path_factory.mktemp('sdxl')
    pipe = tiny_pipeline()
    sdxl.save_single_file(pipe, root / 'tiny.safetensors')
    sdxl.save_pretrained(pipe, root / 'tiny')
    return {'pipe': pipe, 'root': root, 'file': root / 'tiny.safetensors', 'folder': root / 'tiny',
            'from_file': sdxl.load_sdxl(root / 'tiny.safetensors', **TINY_KW),
            'from_folder': sdxl.load_sdxl(root / 'tiny')}


def modules(pipe):
    c = pipe.components
    return [c['unet'], c['vae'], *c['text'].encoders]


def cond(pipe, b=1, size=64):
    c = pipe.encode_prompts(['a cat'] * b)
    return {**c, **pipe.size_cond(size, size, b)}


# ------------------------------------------------------------------------------------------- key maps


def test_full_sdxl_key_map_matches_diffusers_converters():
    """Shipped configs: our diffusers → SGM names are the real SDXL ones and diffusers maps them back."""
    cfgs = {c: sdxl.component_config(None, c) for c in sdxl.COMPONENTS}
    models = {c: sdxl.build_component(c, cfgs[c], empty=True) for c in sdxl.COMPONENTS}
    sd = {}
    for c in sdxl.COMPONENTS:
        sd.update(sdxl.component_to_sgm(c, models[c].state_dict(), cfgs[c]))
    known = {'model.diffusion_model.input_blocks.4.1.transformer_blocks.1.attn2.to_k.weight': (640, 2048),
             'model.diffusion_model.input_blocks.6.0.op.weight': (640, 640, 3, 3),
             'model.diffusion_model.output_blocks.2.2.conv.weight': (1280, 1280, 3, 3),
             'model.diffusion_model.output_blocks.8.0.skip_connection.weight': (320, 640, 1, 1),
             'model.diffusion_model.label_emb.0.0.weight': (1280, 2816),
             'model.diffusion_model.middle_block.1.transformer_blocks.9.ff.net.0.proj.weight': (10240, 1280),
             'first_stage_model.encoder.mid.attn_1.q.weight': (512, 512, 1, 1),
             'first_stage_model.decoder.up.0.block.0.nin_shortcut.weight': (128, 256, 1, 1),
             'first_stage_model.decoder.up.3.upsample.conv.weight': (512, 512, 3, 3),
             'conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight': (3840, 1280),
             'conditioner.embedders.1.model.text_projection': (1280, 1280),
             'conditioner.embedders.0.transformer.text_model.final_layer_norm.weight': (768,)}
    for k, shape in known.items():
        assert tuple(sd[k].shape) == shape, k
    counts = [sum(k.startswith(p) for k in sd) for p in sdxl.SGM_PREFIXES.values()]
    assert counts == [1680, 248, 196, 389]          # sd_xl_base_1.0 (less position_ids / logit_scale)
    back = sdxl.diffusers_state_dicts(sd, cfgs, models['text_encoder_2'])
    for c in sdxl.COMPONENTS:
        ref = {k: v.shape for k, v in models[c].state_dict().items() if not k.endswith('position_ids')}
        got = sdxl_loading._fit_keys(models[c], back[c])
        assert {k: v.shape for k, v in got.items()} == ref, c


# ------------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize('source', ['from_file', 'from_folder'])
def test_loaded_weights_equal_originals(saved, source):
    loaded = saved[source]
    for a, b in zip(modules(saved['pipe']), modules(loaded)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert loaded.info['prediction_type'] == 'v' and loaded.info['zero_terminal_snr']
    assert math.isinf(loaded.denoiser().sigmas[-1]) and loaded.alphas_cumprod[-1] == 0
    assert loaded.components['text'].tokenizers[1].pad_token_id == 0           # bigG pads with '!', as open_clip
    assert loaded.components['text'].tokenizers[0].pad_token_id == 49407


def test_single_file_has_sgm_layout_and_markers(saved):
    sd = load_file(str(saved['file']))
    assert sd['v_pred'].numel() == 0 and sd['ztsnr'].numel() == 0
    for p in sdxl.SGM_PREFIXES.values():
        assert any(k.startswith(p) for k in sd)
    w = saved['pipe'].components['text'].encoders[1].text_model.encoder.layers[0].self_attn
    fused = sd['conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight']
    assert torch.equal(fused, torch.cat([w.q_proj.weight, w.k_proj.weight, w.v_proj.weight]))


def test_dtypes(saved):
    half = sdxl.load_sdxl(saved['file'], dtype=torch.float16, **TINY_KW).components
    bf16 = sdxl.load_sdxl(saved['folder'], dtype=torch.bfloat16).components
    assert half['unet'].dtype == torch.float16 and half['text'].encoders[1].dtype == torch.float16
    assert half['vae'].dtype == torch.float32                       # force_upcast: SDXL's VAE overflows in fp16
    assert bf16['unet'].dtype == bf16['vae'].dtype == torch.bfloat16


# ------------------------------------------------------------------------------------------- adaptor, VAE


def test_time_ids_default_to_canvas_size(saved):
    pipe = saved['pipe']
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10., 500.])
    c = pipe.encode_prompts(['a', 'b'])
    with torch.no_grad():
        v_default = pipe.inner_model(x, t, **c)
        v_ids = pipe.inner_model(x, t, **c, add_time_ids=sdxl.time_ids((64, 64), (0, 0), (64, 64), 2))
        v_tuple = pipe.inner_model(x, t, **c, original_size=(64, 64), crop=(0, 0), target_size=(64, 64))
        v_other = pipe.inner_model(x, t, **c, original_size=(128, 96))
    assert torch.equal(v_default, v_ids) and torch.equal(v_default, v_tuple)
    assert not torch.allclose(v_default, v_other)


def test_denoiser_at_infinity_is_minus_v_at_t_max(saved):
    """σ = ∞ (eq. 13-18): the network sees the unit noise at t = 999 and D = −σ_data·v."""
    pipe = saved['from_file']
    n, c = torch.randn(1, 4, 8, 8), cond(saved['from_file'])
    with torch.no_grad():
        d = pipe.denoiser()(n, torch.full([1], math.inf), **c)
        v = pipe.inner_model(n, torch.tensor([999.]), **c)
    assert torch.isfinite(d).all()
    torch.testing.assert_close(d, -v)


def test_vae_scaling(saved):
    pipe = saved['pipe']
    vae = pipe.components['vae']
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        z = vae.encode(x).latent_dist.mode()
        torch.testing.assert_close(pipe.encode(x), z * 0.13025)
        lat = torch.randn(1, 4, 8, 8)
        torch.testing.assert_close(pipe.decode(lat), vae.decode(lat / 0.13025).sample)
        mean, std = sdxl.latent_stats_for(vae, 'nai_anime')
        assert torch.allclose(std, torch.tensor([9.9181, 6.2753, 7.5978, 5.9956]))
        nai = sdxl.vae_encode(vae, x, mean, std)
        torch.testing.assert_close(nai, (z - mean.view(-1, 1, 1)) / std.view(-1, 1, 1))
        torch.testing.assert_close(sdxl.vae_decode(vae, nai, mean, std), vae.decode(z).sample,
                                   atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match='multiples of 8'):
        pipe.encode(torch.zeros(1, 3, 60, 64))


# ------------------------------------------------------------------------------------------- sampling


def sample(pipe, **kw):
    p = dict(prompt='a cat', uc='lowres', steps=3, scale=5., width=64, height=64, sampler='euler',
             noise_schedule='native', resolution_aware=False)
    return generate(pipe, GenerationParams(**{**p, **kw}))


def test_sample_end_to_end_from_infinity(saved):
    a = sample(saved['from_file'], seed=1)
    assert a.shape == (1, 3, 64, 64) and torch.isfinite(a).all()
    assert torch.equal(a, sample(saved['from_file'], seed=1))          # deterministic with a seed
    assert torch.equal(a, sample(saved['from_folder'], seed=1))        # same weights, same image
    assert not torch.equal(a, sample(saved['from_file'], seed=2))
    for regime in ({'regime': 'clamp'}, {'regime': 'sigma_max', 'sigma_start': 200.}):
        out = sample(saved['from_file'], seed=1, sampler='euler_ancestral', steps=2, **regime)
        assert torch.isfinite(out).all()


def test_as_pipeline(saved):
    p = load_pipeline(saved['folder'])
    assert (p.factor, p.size_multiple, p.channels, p.base_side) == (8, 8, 4, 1024)
    assert p.size_cond(96, 64, 2)['add_time_ids'].tolist() == [[64., 96., 0., 0., 64., 96.]] * 2
    assert math.isinf(p.denoiser().sigmas[-1]) and p.denoiser(clamp=20000.).sigmas[-1] == 20000.


# ------------------------------------------------------------------------------------------- errors


def test_missing_files(saved, tmp_path):
    with pytest.raises(FileNotFoundError, match='not found'):
        sdxl.load_sdxl(tmp_path / 'nope.safetensors')
    (tmp_path / 'unet').mkdir()
    with pytest.raises(FileNotFoundError, match='vae/'):
        sdxl.load_sdxl(tmp_path)
    with pytest.raises(ValueError, match='multiples of 8'):
        sample(saved['pipe'], width=60, height=64, steps=1)


def _write_without(saved, tmp_path, drop=(), rename=None):
    sd = load_file(str(saved['file']))
    sd = {(rename(k) if rename else k): v for k, v in sd.items() if k not in drop}
    path = tmp_path / 'edited.safetensors'
    save_file(sd, str(path))
    return path


def test_markers_decide_prediction_and_schedule(saved, tmp_path):
    path = _write_without(saved, tmp_path, drop=('v_pred', 'ztsnr'))
    with pytest.raises(ValueError, match='v_pred'):
        sdxl.load_sdxl(path, **TINY_KW)
    with pytest.warns(UserWarning, match='zero_terminal_snr=True'):
        plain = sdxl.load_sdxl(path, prediction_type='v', **TINY_KW)
    assert not plain.info['zero_terminal_snr'] and math.isfinite(plain.denoiser().sigmas[-1])
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        forced = sdxl.load_sdxl(path, prediction_type='v', zero_terminal_snr=True, **TINY_KW)
    assert forced.info['zero_terminal_snr']
    vpred_only = _write_without(saved, tmp_path, drop=('ztsnr',))   # v_pred alone: ComfyUI's plain v-pred
    assert not sdxl.load_sdxl(vpred_only, **TINY_KW).info['zero_terminal_snr']
    with pytest.raises(ValueError, match='v-prediction models only'):
        sdxl.load_sdxl(saved['file'], prediction_type='epsilon', **TINY_KW)


def test_epsilon_folder_is_refused(saved, tmp_path):
    for sub in sdxl.COMPONENTS + ('tokenizer', 'tokenizer_2'):
        os.symlink(saved['folder'] / sub, tmp_path / sub)
    (tmp_path / 'scheduler').mkdir()
    sched = {**sdxl.scheduler_config(False), 'prediction_type': 'epsilon'}
    (tmp_path / 'scheduler' / 'scheduler_config.json').write_text(json.dumps(sched))
    with pytest.raises(ValueError, match="'epsilon'"):
        sdxl.load_sdxl(tmp_path)


def test_wrong_architecture_names_keys(saved, tmp_path):
    with pytest.raises(sdxl.CheckpointError, match=r'model\.diffusion_model\..*unet_config='):
        sdxl.load_sdxl(saved['file'])                                     # shipped full-size configs
    key = 'model.diffusion_model.input_blocks.1.0.in_layers.2.weight'
    with pytest.raises(sdxl.CheckpointError, match=r'1 missing: ' + key.replace('.', r'\.')):
        sdxl.load_sdxl(_write_without(saved, tmp_path, drop=(key,)), **TINY_KW)
    sd1 = _write_without(saved, tmp_path,
                         rename=lambda k: k.replace('conditioner.embedders.0.', 'cond_stage_model.'))
    with pytest.raises(sdxl.CheckpointError, match='SD1/SD2'):
        sdxl.load_sdxl(sd1, **TINY_KW)
