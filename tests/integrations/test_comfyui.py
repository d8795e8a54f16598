"""The ComfyUI node pack against a stand-in of the ComfyUI interfaces it touches (tests/integrations/comfy_standin).

The stand-in model is the exact oracle's v network behind ComfyUI's conventions (ZTSNR table clamped at
σ_max = 4518.76, integer timesteps, noise scaled by σ₀ before the sampler, CFG on the denoised output). The
node's output must equal the package's own sampler from σ = ∞ on the same oracle; the host's plain sampler
from 4518.76 must not.
"""

import importlib.util
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kdiff_ztsnr import schedule_policy, schedules
from kdiff_ztsnr.guidance import CFGDenoiser
from kdiff_ztsnr.integrations.comfyui import sampler as comfy_sampler
from benchmarks.subjects import ConditionalMixture
from kdiff_ztsnr.oracle import brightness_dataset, exact_model
from kdiff_ztsnr.sampling import SAMPLERS, BrownianTreeNoiseSampler

PACK = Path(__file__).parents[2] / 'kdiff_ztsnr' / 'integrations' / 'comfyui'
SEED = 5


@pytest.fixture(scope='module')
def oracle():
    """Prompt 0 / 1 select half of the data each, prompt 2 ("") all of it: exact conditional denoisers."""
    data = brightness_dataset(8, (4, 8, 8))
    return ConditionalMixture(data, [range(4), range(4, 8), range(8)])


def comfy_model(comfy, oracle, cfg=1.):
    """A stand-in ComfyUI model (ModelPatcher) and guider around the oracle's exact v network F(x_in, t, cond)."""
    net = exact_model(oracle).inner_model                      # t = 999 ↦ σ = ∞: the trained network's meaning
    base = comfy.model_sampling.StandInBaseModel(net, comfy.model_sampling.ModelSamplingZTSNRV())
    cond, uncond = torch.tensor([0, 1]), torch.tensor([2, 2])
    return comfy.model_sampling.StandInModelPatcher(base), comfy.model_sampling.StandInGuider(base, cond, uncond, cfg)


def package_reference(oracle, name, noise, sigmas_inf, cfg=1., **options):
    """The package's sampler from σ = ∞ on the exact oracle (integer timesteps, as ComfyUI feeds its network)."""
    model = exact_model(oracle)
    model.quantize = True
    den = CFGDenoiser(model, cfg)
    if 'noise_sampler' in comfy_sampler._params(SAMPLERS[name]):
        options['noise_sampler'] = comfy_sampler.seeded_noise_sampler(name, noise, sigmas_inf, SEED)
    return SAMPLERS[name](den, noise, sigmas_inf, extra_args={'cond': torch.tensor([0, 1]),
                                                              'uncond': torch.tensor([2, 2])}, disable=True, **options)


def load_pack(path: Path, name: str):
    """Import a node pack folder as ComfyUI does (custom_nodes/<name>/__init__.py, a top-level package)."""
    spec = importlib.util.spec_from_file_location(name, path / '__init__.py', submodule_search_locations=[str(path)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def pack(comfy, tmp_path_factory):
    """The README's install: the folder its command prints, symlinked (and copied) into custom_nodes/."""
    readme_cmd = "import os, kdiff_ztsnr.integrations.comfyui as m; print(os.path.dirname(m.__file__))"
    folder = Path(subprocess.run([sys.executable, '-c', readme_cmd], capture_output=True, text=True, check=True,
                                 cwd=PACK.parents[2]).stdout.strip())
    assert folder.resolve() == PACK.resolve()
    custom_nodes = tmp_path_factory.mktemp('ComfyUI') / 'custom_nodes'
    custom_nodes.mkdir()
    shutil.copytree(folder, custom_nodes / 'kdiff-ztsnr', ignore=shutil.ignore_patterns('__pycache__'))
    (custom_nodes / 'kdiff-ztsnr-link').symlink_to(folder, target_is_directory=True)
    link = load_pack(custom_nodes / 'kdiff-ztsnr-link', 'kdiff_ztsnr_link_pack')
    assert set(link.NODE_CLASS_MAPPINGS) == {'KDiffZTSNRSamplerSelect', 'KDiffZTSNRSigmas'}
    return load_pack(custom_nodes / 'kdiff-ztsnr', 'kdiff_ztsnr_pack')


def test_pack_exports_and_pyproject(pack):
    import tomllib
    assert set(pack.NODE_CLASS_MAPPINGS) == set(pack.NODE_DISPLAY_NAME_MAPPINGS)
    for cls in pack.NODE_CLASS_MAPPINGS.values():
        assert callable(getattr(cls, cls.FUNCTION)) and cls.RETURN_TYPES and 'required' in cls.INPUT_TYPES()
    meta = tomllib.loads((PACK / 'pyproject.toml').read_text())
    assert meta['tool']['comfy']['DisplayName'] and meta['project']['dependencies'] == ['kdiff-ztsnr']


@pytest.mark.parametrize('kind', ['native', 'recommended', 'exponential'])
def test_sigmas_node_is_the_packages_schedule(comfy, oracle, pack, kind):
    patcher, _ = comfy_model(comfy, oracle)
    (sigmas,) = pack.NODE_CLASS_MAPPINGS['KDiffZTSNRSigmas']().get_sigmas(patcher, kind, 10, 1.)
    want = schedule_policy.sigmas(exact_model(oracle), kind, 10)
    assert len(sigmas) == 11 and sigmas[-1] == 0 and math.isinf(want[0])
    assert abs(sigmas[0].item() - schedules.COMFY_SIGMA_MAX) < 1e-2      # ∞, written as ComfyUI's top σ
    torch.testing.assert_close(sigmas[1:], want[1:], rtol=2e-6, atol=0)  # the model's float32 table
    (tail,) = pack.NODE_CLASS_MAPPINGS['KDiffZTSNRSigmas']().get_sigmas(patcher, kind, 4, 0.5)
    full = comfy_sampler.comfy_sigmas(patcher.get_model_object('model_sampling'), kind, 8)
    assert torch.equal(tail, full[-5:]) and math.isfinite(tail[0]) and tail[0] < 4000   # img2img: finite start


def first_state(run) -> tuple:
    """(final x, the state x₁ after the first step) of a run(callback)."""
    seen = {}
    out = run(lambda info: seen.setdefault(info['i'], info['x'].clone()))
    return out, seen[1]


@pytest.mark.filterwarnings('ignore:Should have tb')      # torchsde round-off inside k-diffusion's Brownian tree
@pytest.mark.parametrize('name,cfg', [('euler', 1.), ('euler_ancestral', 4.), ('dpmpp_2m', 4.), ('heun', 1.),
                                      ('dpmpp_2m_sde', 4.), ('lms', 1.)])
def test_sampler_node_equals_package_sampler_on_exact_oracle(comfy, oracle, pack, name, cfg):
    patcher, guider = comfy_model(comfy, oracle, cfg)
    (sigmas,) = pack.NODE_CLASS_MAPPINGS['KDiffZTSNRSigmas']().get_sigmas(patcher, 'recommended', 8)
    (ksampler,) = pack.NODE_CLASS_MAPPINGS['KDiffZTSNRSamplerSelect']().get_sampler(name, 1., 1.)
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    got, got_1 = first_state(lambda cb: ksampler.sample(guider, sigmas, {'seed': SEED}, cb, noise))
    sigmas_inf = torch.cat([sigmas.new_full([1], math.inf), sigmas[1:]])
    want, want_1 = first_state(lambda cb: package_reference(oracle, name, noise, sigmas_inf, cfg, callback=cb))
    # The stand-in path scales n by σ₀ and recovers it, so the states at large σ can differ by an ulp of σ₁·|n|,
    # which later Euler-type steps carry to the end unchanged: the bound is 2 ulp of σ₁·max|n| (float32).
    ulp = 2 * torch.finfo(torch.float32).eps * sigmas[1].item() * noise.abs().max().item()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=max(1e-5, ulp))
    torch.testing.assert_close(got_1, want_1, rtol=1e-6, atol=1e-5)     # x₁ = σ₁·n + D(n; ∞), |x₁| ~ 10³


def test_host_first_step_differs_as_predicted(comfy, oracle):
    """ComfyUI's own Euler from 4518.76: x₁ − x₁* ≈ (σ₁·F + n)/σ₀ with F = −D(n; ∞) (what the exact step buys)."""
    from k_diffusion.sampling import sample_euler
    patcher, guider = comfy_model(comfy, oracle, 1.)
    sigmas = comfy_sampler.comfy_sigmas(patcher.get_model_object('model_sampling'), 'karras', 8)   # σ₁ 2254
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    _, host_1 = first_state(lambda cb: comfy.samplers.KSAMPLER(sample_euler).sample(guider, sigmas, {}, cb, noise))
    fn = comfy_sampler.exact_sampler_function('euler')
    _, exact_1 = first_state(lambda cb: comfy.samplers.KSAMPLER(fn).sample(guider, sigmas, {}, cb, noise))
    sigma_0, sigma_1 = sigmas[0].item(), sigmas[1].item()
    f = -(exact_1 - sigma_1 * noise)                                   # F(n; t_max) = −D(n; ∞)
    torch.testing.assert_close(host_1 - exact_1, (sigma_1 * f + noise) / sigma_0, rtol=1e-2, atol=3e-3)
    assert (host_1 - exact_1).abs().max() > 0.1                       # ≫ float32 rounding of x₁ (~1e-3)


def test_any_schedule_from_the_top_gets_the_exact_step(comfy, oracle, pack):
    """A host schedule (here Karras over [σ_min, 4518.76], as ComfyUI's 'karras') starting at the top σ."""
    patcher, guider = comfy_model(comfy, oracle, 3.)
    ms = patcher.get_model_object('model_sampling')
    sigmas = schedules.get_sigmas_karras(6, ms.sigma_min.item(), ms.sigma_max.item(), prepend_inf=False)
    (ksampler,) = pack.NODE_CLASS_MAPPINGS['KDiffZTSNRSamplerSelect']().get_sampler('euler', 1., 1.)
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    got = ksampler.sample(guider, sigmas, {}, None, noise)
    want = package_reference(oracle, 'euler', noise, torch.cat([sigmas.new_full([1], math.inf), sigmas[1:]]), 3.)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_finite_start_runs_the_sampler_unchanged(comfy, oracle):
    """img2img (denoise < 1): sigmas[0] below the top, so no σ = ∞ step — k-diffusion's sampler as is."""
    patcher, guider = comfy_model(comfy, oracle, 2.)
    sigmas = comfy_sampler.comfy_sigmas(patcher.get_model_object('model_sampling'), 'karras', 4, 0.5)
    noise, latent = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    fn = comfy_sampler.exact_sampler_function('dpmpp_2m')
    got = comfy.samplers.KSAMPLER(fn).sample(guider, sigmas, {}, None, noise, latent)
    from k_diffusion.sampling import sample_dpmpp_2m
    want = comfy.samplers.KSAMPLER(sample_dpmpp_2m).sample(guider, sigmas, {}, None, noise, latent)
    assert torch.equal(got, want)


def test_brownian_seed(comfy):
    x = torch.zeros(1, 2)
    ns = comfy_sampler.seeded_noise_sampler('dpmpp_2m_sde', x, torch.tensor([math.inf, 5., 1., 0.]), 3)
    assert isinstance(ns, BrownianTreeNoiseSampler)
    with pytest.raises(ValueError, match='unknown sampler'):
        comfy_sampler.exact_sampler_function('dpm_fast')


def test_model_without_ztsnr_keeps_finite_schedules():
    """A plain v-pred model (σ_max 14.6): no σ = ∞ anywhere, the sampler is k-diffusion's unchanged."""
    class PlainVPred:
        sigmas = schedules.sigmas_from_alphas_cumprod(schedules.sdxl_alphas_cumprod()).float()
        sigma_max = sigmas[-1]
    sigmas = comfy_sampler.comfy_sigmas(PlainVPred(), 'karras', 6)
    assert sigmas[0] == pytest.approx(schedules.SDXL_SIGMA_MAX, rel=1e-6) and len(sigmas) == 7
    assert not comfy_sampler.starts_at_top(sigmas, float(PlainVPred.sigma_max))
