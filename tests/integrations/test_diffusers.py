"""ZTSNRScheduler: the package's exact step from σ = ∞ inside diffusers.

Checked against independent implementations: the package's own samplers on the exact oracle (a diffusers-style
loop vs kdiff_ztsnr.sampling), and diffusers' StableDiffusionXLPipeline with this scheduler vs the package's
`generate` on the same tiny SDXL weights, noise, schedule and CFG (with CFG rescale).
"""

import dataclasses
import math

import pytest
import torch

pytest.importorskip('diffusers')

from kdiff_ztsnr.generation import generate as gen  # noqa: E402
from kdiff_ztsnr.generation.params import GenerationParams  # noqa: E402
from kdiff_ztsnr import schedule_policy, schedules  # noqa: E402
from kdiff_ztsnr.denoisers import DiscreteVDenoiser  # noqa: E402
from kdiff_ztsnr.img2img import img2img_start  # noqa: E402
from kdiff_ztsnr.integrations import SCHEDULES, STEP_SAMPLERS  # noqa: E402
from kdiff_ztsnr.integrations.diffusers import ZTSNRScheduler  # noqa: E402
from kdiff_ztsnr.oracle import brightness_dataset, exact_model  # noqa: E402
from kdiff_ztsnr.sampling import SAMPLERS  # noqa: E402

SDXL_CONFIG = {'_class_name': 'EulerDiscreteScheduler', 'beta_schedule': 'scaled_linear', 'beta_start': 0.00085,
               'beta_end': 0.012, 'num_train_timesteps': 1000, 'prediction_type': 'v_prediction',
               'rescale_betas_zero_snr': True, 'timestep_spacing': 'trailing', 'steps_offset': 1}


def scheduler(**kw) -> ZTSNRScheduler:
    return ZTSNRScheduler.from_config(SDXL_CONFIG, **kw)


@pytest.mark.parametrize('kind', SCHEDULES)
def test_schedules_are_the_packages(kind):
    model = DiscreteVDenoiser(torch.nn.Identity(), schedules.ztsnr_alphas_cumprod())
    want = schedule_policy.sigmas(model, kind, 9, sampler='euler_ancestral')
    assert math.isinf(want[0])
    s = scheduler(schedule=kind, sampler='euler_ancestral')
    s.set_timesteps(9)
    assert torch.equal(s.sigmas, want.float())


def test_from_config_and_first_timestep():
    s = scheduler(sampler='dpmpp_2m', schedule='native')
    assert s.config.sampler == 'dpmpp_2m' and s.init_noise_sigma == 1.
    s.set_timesteps(28)
    assert s.timesteps[0] == 999. and math.isinf(s.sigmas[0]) and s.sigmas[-1] == 0
    assert len(s.timesteps) == 28 and s.init_noise_sigma == 1.
    assert abs(s.sigmas[1].item() - 56.18) < 0.01                    # the report's native schedule
    n = torch.randn(1, 4, 8, 8)
    assert torch.equal(s.scale_model_input(n, s.timesteps[0]), n)  # the bypass: the network sees n
    s.set_timesteps(timesteps=[999, 500, 100])                        # custom timesteps (pipeline `timesteps=`)
    assert math.isinf(s.sigmas[0]) and len(s.sigmas) == 4 and s.sigmas[-1] == 0
    torch.testing.assert_close(s.timesteps, torch.tensor([999., 500., 100.]))
    s.set_timesteps(sigmas=[100., 10., 1.])                          # custom sigmas: finite start
    assert s.init_noise_sigma == 100. and s.sigmas.tolist()[-1] == 0
    with pytest.raises(ValueError, match='v-prediction'):
        ZTSNRScheduler.from_config({**SDXL_CONFIG, 'prediction_type': 'epsilon'})
    with pytest.raises(ValueError, match='rescale_betas_zero_snr=True'):
        ZTSNRScheduler.from_config({**SDXL_CONFIG, 'rescale_betas_zero_snr': False})


def diffusers_loop(s: ZTSNRScheduler, net, shape: tuple, steps: int, seed: int) -> torch.Tensor:
    """What a diffusers pipeline does with a scheduler (set_timesteps, noise × init_noise_sigma, scale, step)."""
    g = torch.Generator().manual_seed(seed)
    s.set_timesteps(steps)
    x = torch.randn(shape, generator=g) * s.init_noise_sigma
    for t in s.timesteps:
        v = net(s.scale_model_input(x, t), t)
        x = s.step(v, t, x, generator=g, return_dict=False)[0]
    return x


@pytest.mark.parametrize('kind', SCHEDULES)
@pytest.mark.parametrize('sampler', STEP_SAMPLERS)
def test_step_equals_package_sampler_on_exact_oracle(sampler, kind):
    data = brightness_dataset(8, (4, 8, 8))
    model = exact_model(data)
    seed, steps = 3, 7
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(2, 4, 8, 8, generator=g)
    sigmas = schedule_policy.sigmas(model, kind, steps)
    kw = {'noise_sampler': lambda a, b: torch.randn(noise.shape, generator=g)} if sampler == 'euler_ancestral' else {}
    want = SAMPLERS[sampler](model, noise, sigmas, disable=True, **kw)
    model.inner_model.calls = 0
    got = diffusers_loop(scheduler(sampler=sampler, schedule=kind), model.inner_model, noise.shape, steps, seed)
    assert model.inner_model.calls == steps                          # one network call per step, ∞ included
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_add_noise_is_img2img_start():
    s = scheduler()
    s.set_timesteps(10)
    x0, n = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    for strength in (1., 0.6, 0.3):
        x, sig = img2img_start(x0, n, s.sigmas, strength)
        i = len(s.sigmas) - len(sig)
        s.set_begin_index(i)
        torch.testing.assert_close(s.add_noise(x0, n, s.timesteps[i:i + 1]), x)
    s.set_timesteps(10)                                               # no begin index: looked up by timestep
    assert torch.equal(s.add_noise(x0, n, torch.tensor([999.])), n)   # σ = ∞: the unit noise itself
    torch.testing.assert_close(s.add_noise(x0, n, s.timesteps[3:4]), x0 + n * s.sigmas[3])
    assert torch.equal(scheduler().add_noise(x0, n, torch.tensor([999.])), n)   # before set_timesteps: t → σ


# ------------------------------------------------------------------------------------------- SDXL pipeline


@pytest.fixture(scope='module')
def tiny():
    from tests.helpers import tiny_pipeline
    return tiny_pipeline()


def diffusers_sdxl(tiny, sched):
    from kdiff_ztsnr.models.sdxl import to_diffusers
    return to_diffusers(tiny, sched)


def package_latents(tiny, p: GenerationParams) -> torch.Tensor:
    """`generate`'s final latents (decode swapped for a capture)."""
    got = []
    pipe = dataclasses.replace(tiny, decode=lambda x: got.append(x) or x)
    gen.generate(pipe, p)
    return got[0]


def sdxl_embeds(tiny, prompt: str, uc: str) -> dict:
    """The package's prompt encodings, handed to diffusers so that only the sampling differs."""
    c, u = tiny.encode_prompts([prompt]), tiny.encode_prompts([uc])
    return {'prompt_embeds': c['context'], 'pooled_prompt_embeds': c['pooled'],
            'negative_prompt_embeds': u['context'], 'negative_pooled_prompt_embeds': u['pooled']}


@pytest.mark.parametrize('sampler,kind', [('euler', 'native'), ('euler_ancestral', 'karras'),
                                          ('dpmpp_2m', 'exponential')])
def test_sdxl_pipeline_equals_generate(tiny, sampler, kind):
    p = GenerationParams(prompt='a cat', uc='lowres', steps=4, scale=5., cfg_rescale=0.7, seed=11,
                             width=64, height=64, sampler=sampler, noise_schedule=kind)
    want = package_latents(tiny, p)
    from diffusers import EulerDiscreteScheduler
    pipe = diffusers_sdxl(tiny, EulerDiscreteScheduler.from_config(SDXL_CONFIG))      # as loaded from a folder
    pipe.scheduler = ZTSNRScheduler.from_config(pipe.scheduler.config, sampler=sampler, schedule=kind)  # README
    with torch.no_grad():
        got = pipe(**sdxl_embeds(tiny, p.prompt, p.uc), num_inference_steps=p.steps, guidance_scale=p.scale,
                   guidance_rescale=p.cfg_rescale, width=p.width, height=p.height, output_type='latent',
                   generator=torch.Generator().manual_seed(p.seed)).images
    assert pipe.scheduler.timesteps[0] == 999.
    assert (got - want).abs().max() <= float32_tolerance(pipe.scheduler.sigmas, want, p.seed)


def float32_tolerance(sigmas: torch.Tensor, want: torch.Tensor, seed: int) -> float:
    """float32 rounding of the two runs. The UNet sees cond/uncond in the other order (≈1e-6 apart), and the step
    from the largest finite σ cancels the state x ≈ σ·n, so a difference there survives as ~1 ulp of σ·max|n|
    (measured 4.9e-4 at σ = 2254 with one CPU thread, 1.6e-7 with two, where the UNet agreed bit for bit)."""
    n = torch.randn(want.shape, generator=torch.Generator().manual_seed(seed))
    sigma = sigmas[torch.isfinite(sigmas)].max().item()
    return 3e-5 * want.abs().max().item() + 2 * torch.finfo(torch.float32).eps * sigma * n.abs().max().item()


@pytest.mark.parametrize('strength', [0.5, 1.])
def test_sdxl_img2img_pipeline_equals_package(tiny, strength):
    """StableDiffusionXLImg2ImgPipeline (init latents given directly) = img2img_start + the package's sampler."""
    from diffusers import StableDiffusionXLImg2ImgPipeline
    from kdiff_ztsnr.guidance import CFGDenoiser
    steps, seed = 6, 4
    x0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(99))
    sched = ZTSNRScheduler.from_config(SDXL_CONFIG, sampler='dpmpp_2m', schedule='karras')
    parts = diffusers_sdxl(tiny, sched).components
    pipe = StableDiffusionXLImg2ImgPipeline(**{k: parts[k] for k in ('vae', 'text_encoder', 'text_encoder_2',
                                                                       'tokenizer', 'tokenizer_2', 'unet',
                                                                       'scheduler')})
    with torch.no_grad():
        got = pipe(**sdxl_embeds(tiny, 'a cat', 'lowres'), image=x0, strength=strength, num_inference_steps=steps,
                   guidance_scale=5., guidance_rescale=0.7, output_type='latent',
                   generator=torch.Generator().manual_seed(seed)).images
        noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(seed))
        x, sigmas = img2img_start(x0, noise, schedule_policy.sigmas(tiny.denoiser(), 'karras', steps), strength)
        assert math.isinf(sigmas[0]) == (strength == 1.)
        size = tiny.size_cond(64, 64, 1)
        cond = {'cond': {**tiny.encode_prompts(['a cat']), **size},
                'uncond': {**tiny.encode_prompts(['lowres']), **size}}
        want = SAMPLERS['dpmpp_2m'](CFGDenoiser(tiny.denoiser(), 5., 0.7, cond_key=None), x, sigmas, extra_args=cond,
                                    disable=True)
    assert (got - want).abs().max() <= float32_tolerance(sigmas, want, seed)


def test_pipeline_save_and_reload_keeps_the_scheduler(tiny, tmp_path):
    """save_pretrained records kdiff_ztsnr.integrations.diffusers.ZTSNRScheduler; from_pretrained (with the
    module imported, as diffusers requires for components outside its libraries) gives it back, config intact."""
    from diffusers import StableDiffusionXLPipeline
    diffusers_sdxl(tiny, scheduler(sampler='dpmpp_2m', schedule='native')).save_pretrained(tmp_path / 'p')
    index = (tmp_path / 'p' / 'model_index.json').read_text()
    assert '"kdiff_ztsnr.integrations.diffusers"' in index and '"ZTSNRScheduler"' in index
    back = StableDiffusionXLPipeline.from_pretrained(tmp_path / 'p')
    assert isinstance(back.scheduler, ZTSNRScheduler)
    assert (back.scheduler.config.sampler, back.scheduler.config.schedule) == ('dpmpp_2m', 'native')


# ------------------------------------------------------------------------------------------- SDXL pipeline features


def txt2img(pipe, steps=4, seed=11, generator=None, **kw):
    with torch.no_grad():
        return pipe(**kw, num_inference_steps=steps, guidance_scale=5., width=64, height=64, output_type='latent',
                    generator=generator or torch.Generator().manual_seed(seed)).images


def test_callback_on_step_end_sees_every_step_from_infinity(tiny):
    pipe = diffusers_sdxl(tiny, scheduler(sampler='dpmpp_2m', schedule='karras'))
    seen = []

    def callback(p, i, t, kw):
        seen.append((i, float(t), kw['latents'].isfinite().all().item()))
        return {}

    got = txt2img(pipe, **sdxl_embeds(tiny, 'a cat', 'lowres'), callback_on_step_end=callback,
                  callback_on_step_end_tensor_inputs=['latents'])
    assert [s[0] for s in seen] == [0, 1, 2, 3] and all(s[2] for s in seen)
    assert [s[1] for s in seen] == pipe.scheduler.timesteps.tolist() and seen[0][1] == 999.
    assert torch.equal(got, txt2img(pipe, **sdxl_embeds(tiny, 'a cat', 'lowres')))   # the callback changes nothing


def test_generator_list_and_num_images_per_prompt_are_per_image(tiny):
    """Image k of a batch of 2 (Euler a: noise at every step) = the single run with generator k."""
    pipe = diffusers_sdxl(tiny, scheduler(sampler='euler_ancestral', schedule='karras'))
    emb = sdxl_embeds(tiny, 'a cat', 'lowres')
    batch = txt2img(pipe, **emb, num_images_per_prompt=2,
                    generator=[torch.Generator().manual_seed(5), torch.Generator().manual_seed(6)])
    assert batch.shape[0] == 2
    for k, seed in enumerate((5, 6)):
        one = txt2img(pipe, **emb, seed=seed)
        assert (batch[k:k + 1] - one).abs().max() <= float32_tolerance(pipe.scheduler.sigmas, one, seed)


def test_sigmas_argument_is_the_same_schedule(tiny):
    pipe = diffusers_sdxl(tiny, scheduler(sampler='euler', schedule='exponential'))
    emb = sdxl_embeds(tiny, 'a cat', 'lowres')
    want = txt2img(pipe, **emb)
    sigmas = pipe.scheduler.sigmas[:-1].tolist()                            # [∞, …, σ_min]; the 0 is appended
    with torch.no_grad():
        got = pipe(**emb, sigmas=sigmas, guidance_scale=5., width=64, height=64, output_type='latent',
                   generator=torch.Generator().manual_seed(11)).images
    assert math.isinf(sigmas[0]) and torch.equal(got, want)


def test_refiner_hand_off_equals_one_run(tiny):
    """Base with denoising_end=0.5, then img2img with denoising_start=0.5 on its latents = one 6-step run (Euler
    keeps no history, so the split loses nothing); the img2img part starts at set_begin_index."""
    from diffusers import StableDiffusionXLImg2ImgPipeline
    pipe = diffusers_sdxl(tiny, scheduler(sampler='euler', schedule='native'))
    emb = sdxl_embeds(tiny, 'a cat', 'lowres')
    want = txt2img(pipe, steps=6, **emb)
    half = txt2img(pipe, steps=6, **emb, denoising_end=0.5)
    refiner = StableDiffusionXLImg2ImgPipeline(**{k: pipe.components[k] for k in (
        'vae', 'text_encoder', 'text_encoder_2', 'tokenizer', 'tokenizer_2', 'unet', 'scheduler')})
    with torch.no_grad():
        got = refiner(**emb, image=half, denoising_start=0.5, num_inference_steps=6, guidance_scale=5.,
                      output_type='latent', generator=torch.Generator().manual_seed(11)).images
    first = (pipe.scheduler.timesteps >= 500).sum().item()
    assert 0 < first < 6 and pipe.scheduler.begin_index == first
    assert (got - want).abs().max() <= float32_tolerance(pipe.scheduler.sigmas, want, 11)


def test_inpaint_pipeline_keeps_the_unmasked_latents(tiny):
    """StableDiffusionXLInpaintPipeline (4-channel UNet: re-noises the init latents to σ_{i+1} with add_noise after
    each step): where the mask is 0 the result is the init latents exactly; a mask of 1 everywhere is txt2img."""
    from diffusers import StableDiffusionXLInpaintPipeline
    from PIL import Image
    import numpy as np
    base = diffusers_sdxl(tiny, scheduler(sampler='dpmpp_2m', schedule='karras'))
    pipe = StableDiffusionXLInpaintPipeline(**{k: base.components[k] for k in (
        'vae', 'text_encoder', 'text_encoder_2', 'tokenizer', 'tokenizer_2', 'unet', 'scheduler')})
    emb = sdxl_embeds(tiny, 'a cat', 'lowres')
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    left = np.zeros((64, 64), np.uint8)
    left[:, :32] = 255                                                       # repaint the left half
    runs, noise = {}, torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    for name, mask in (('left', left), ('all', np.full((64, 64), 255, np.uint8))):
        with torch.no_grad():                 # the VAE encode draws from the generator first: noise given
            runs[name] = pipe(**emb, image=image, mask_image=Image.fromarray(mask), strength=1., latents=noise,
                              num_inference_steps=4, guidance_scale=5., width=64, height=64, output_type='latent',
                              generator=torch.Generator().manual_seed(11)).images
    with torch.no_grad():
        init = pipe._encode_vae_image(pipe.image_processor.preprocess(image), torch.Generator().manual_seed(11))
    assert runs['left'].isfinite().all()
    assert torch.equal(runs['left'][..., 4:], init[..., 4:])                 # latents 8×8: columns 4… kept
    assert not torch.allclose(runs['left'][..., :4], init[..., :4])
    want = txt2img(base, **emb, latents=noise)
    assert (runs['all'] - want).abs().max() <= float32_tolerance(base.scheduler.sigmas, want, 3)
