"""ZTSNRScheduler against the scheduler contract that diffusers' own `SchedulerCommonTest` checks.

Written from the properties that suite (tests/schedulers/test_schedulers.py of diffusers, read at the commit
the README names) asserts for every scheduler, with the package's own numbers where they have a closed form:
config round trips, `from_config` across the compatibles, step output shapes/types and `return_dict=False`,
the public API, `add_noise`, the default schedule built in `__init__`, trained betas, `scale_model_input`
before and after `set_timesteps`, the step_index / begin_index state, custom timesteps/sigmas, `getattr`.
"""

import inspect
import logging
import math

import numpy as np
import pytest
import torch

pytest.importorskip('diffusers')

from diffusers import DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler  # noqa
from diffusers.schedulers.scheduling_utils import SchedulerOutput  # noqa: E402

from kdiff_ztsnr import schedules  # noqa: E402
from kdiff_ztsnr.denoisers import v_scalings  # noqa: E402
from kdiff_ztsnr.integrations import STEP_SAMPLERS  # noqa: E402
from kdiff_ztsnr.integrations.diffusers import ZTSNRScheduler  # noqa: E402

# diffusers' own test config for Euler (linear betas, 1100 steps) and the SDXL one a pipeline folder holds
EULER_TEST_CONFIG = {'num_train_timesteps': 1100, 'beta_start': 0.0001, 'beta_end': 0.02, 'beta_schedule': 'linear'}
SDXL_CONFIG = {'_class_name': 'EulerDiscreteScheduler', 'beta_schedule': 'scaled_linear', 'beta_start': 0.00085,
               'beta_end': 0.012, 'num_train_timesteps': 1000, 'prediction_type': 'v_prediction',
               'rescale_betas_zero_snr': True, 'timestep_spacing': 'trailing', 'steps_offset': 1,
               'interpolation_type': 'linear', 'use_karras_sigmas': False, 'sample_max_value': 1.0}
CONFIGS = [{}, {'num_train_timesteps': 10}, {'num_train_timesteps': 100, 'beta_schedule': 'scaled_linear'},
           {'beta_start': 0.00001, 'beta_end': 0.0002}, {'sampler': 'dpmpp_2m', 'schedule': 'native'},
           {'sampler': 'euler', 'schedule': 'exponential'}, {'eta': 0.5, 's_noise': 0.9}]


def make(**kw) -> ZTSNRScheduler:
    return ZTSNRScheduler(**{**EULER_TEST_CONFIG, **kw})


def sample(seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    return torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(seed)).to(dtype)


def plain(config) -> dict:
    return {k: v for k, v in dict(config).items() if k != '_use_default_values'}


class Warnings(logging.Handler):
    """diffusers' logger records (its config warnings go through `logging`, not `warnings`)."""

    def __enter__(self):
        self.records = []
        self.logger = logging.getLogger('diffusers')
        self.logger.addHandler(self)
        return self

    def emit(self, record):
        self.records.append(record.getMessage())

    def __exit__(self, *exc):
        self.logger.removeHandler(self)


# ------------------------------------------------------------------------------------------- default schedule


@pytest.mark.parametrize('kw', [{}, {'num_train_timesteps': 10}, {'trained_betas': [0.1, 0.3]}])
def test_default_schedule_is_built_in_init(kw):
    """Before set_timesteps: the training schedule t = T−1, …, 0 with σ(T−1) = ∞ first and 0 appended."""
    s = make(**kw)
    n = len(s.alphas_cumprod)
    assert torch.equal(s.timesteps, torch.arange(n - 1, -1, -1, dtype=torch.float32))
    want = schedules.sigmas_from_alphas_cumprod(s.alphas_cumprod).flip(0).float()
    assert math.isinf(s.sigmas[0]) and s.sigmas[-1] == 0 and torch.equal(s.sigmas[:-1], want)
    assert s.init_noise_sigma == 1. and s.num_inference_steps is None
    assert s.step_index is None and s.begin_index is None


def test_tables_are_the_zero_terminal_snr_ones():
    """betas/alphas/alphas_cumprod: the rescaled table (Lin et al.), consistent, and diffusers' own up to its clamp."""
    s = ZTSNRScheduler.from_config(SDXL_CONFIG)
    assert torch.equal(s.alphas_cumprod, schedules.ztsnr_alphas_cumprod())
    torch.testing.assert_close(torch.cumprod(s.alphas, 0), s.alphas_cumprod, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(s.alphas + s.betas, torch.ones_like(s.betas), rtol=0, atol=0)
    assert s.alphas_cumprod[-1] == 0 and s.betas[-1] == 1
    ref = EulerDiscreteScheduler.from_config(SDXL_CONFIG)                  # clamps ᾱ[-1] to 2⁻²⁴, float32 tables
    torch.testing.assert_close(s.alphas_cumprod[:-1].float(), ref.alphas_cumprod[:-1], rtol=1e-5, atol=1e-7)
    assert ref.alphas_cumprod[-1].item() == 2. ** -24


def test_trained_betas_survive_save_and_load(tmp_path):
    s = make(trained_betas=np.array([0.1, 0.3]))
    s.save_pretrained(tmp_path)
    back = ZTSNRScheduler.from_pretrained(tmp_path)
    assert back.betas.tolist() == s.betas.tolist() and list(back.config.trained_betas) == [0.1, 0.3]
    torch.testing.assert_close(s.alphas_cumprod, torch.tensor([0.9, 0.], dtype=torch.float64))  # ᾱ₀ kept, last 0
    del_betas = lambda c: {k: v for k, v in plain(c).items() if k != 'trained_betas'}  # noqa: E731 (array vs list)
    assert del_betas(back.config) == del_betas(s.config)


# ------------------------------------------------------------------------------------------- config round trips


def first_steps(s: ZTSNRScheduler, steps) -> list:
    """Outputs of the first two steps (σ = ∞, then finite) and of a step at t = 0, from a fixed generator."""
    if steps:
        s.set_timesteps(steps)
    x, out = sample(), []
    for t in s.timesteps[:2]:
        v = 0.1 * s.scale_model_input(x, t)
        x = s.step(v, t, x, generator=torch.Generator().manual_seed(0)).prev_sample
        out.append(x)
    s.set_begin_index(len(s.timesteps) - 1)
    out.append(s.step(0.1 * sample(1), s.timesteps[-1], sample(1), generator=torch.Generator().manual_seed(0))
               .prev_sample)
    return out


@pytest.mark.parametrize('steps', [None, 10])
@pytest.mark.parametrize('kw', CONFIGS)
def test_save_config_and_from_pretrained_round_trip(kw, steps, tmp_path):
    s = make(**kw)
    s.save_config(tmp_path)
    back = ZTSNRScheduler.from_pretrained(tmp_path)
    assert plain(back.config) == plain(s.config)
    for a, b in zip(first_steps(s, steps), first_steps(back, steps)):
        assert torch.equal(a, b) and a.isfinite().all()


def test_readme_swap_logs_no_unexpected_keys():
    """`ZTSNRScheduler.from_config(pipe.scheduler.config, …)`: Euler's keys are a compatible's, dropped silently."""
    euler = EulerDiscreteScheduler.from_config(SDXL_CONFIG)
    with Warnings() as w:
        s = ZTSNRScheduler.from_config(euler.config, sampler='dpmpp_2m', schedule='karras')
    assert not [m for m in w.records if 'not expected' in m], w.records
    assert (s.config.sampler, s.config.schedule, s.config.num_train_timesteps) == ('dpmpp_2m', 'karras', 1000)
    with Warnings() as w:
        ZTSNRScheduler.from_config({**SDXL_CONFIG, 'no_such_key': 1})
    assert any("{'no_such_key': 1}" in m and 'not expected' in m for m in w.records)    # a real stray key still is


def test_from_config_across_compatibles():
    s = make(sampler='dpmpp_2m', schedule='native')
    names = {c.__name__ for c in s.compatibles}
    assert {'EulerDiscreteScheduler', 'EulerAncestralDiscreteScheduler', 'DPMSolverMultistepScheduler'} <= names
    init_keys = set(inspect.signature(ZTSNRScheduler.__init__).parameters)
    for cls in s.compatibles:
        other = cls.from_config(s.config)
        assert isinstance(other, cls) and other.config.num_train_timesteps == 1100
        back = ZTSNRScheduler.from_config(other.config)
        assert {k: v for k, v in back.config.items() if k in s.config} == dict(s.config), cls.__name__
        assert not (set(back.config) - set(s.config)) & init_keys                 # extras are only the other's


# ------------------------------------------------------------------------------------------- step, public API


@pytest.mark.parametrize('dtype', [torch.float32, torch.float16])
@pytest.mark.parametrize('sampler', STEP_SAMPLERS)
def test_step_output_shape_type_and_return_dict(sampler, dtype):
    """Two schedulers in lockstep, one returning SchedulerOutput, one (return_dict=False) a 1-tuple: equal."""
    a, b = make(sampler=sampler), make(sampler=sampler)
    a.set_timesteps(10)
    b.set_timesteps(10)
    x = sample(dtype=dtype)
    for i in range(3):                                                       # ∞, then two finite steps
        t = a.timesteps[i]
        v = 0.1 * a.scale_model_input(x, t)
        out = a.step(v, t, x, generator=torch.Generator().manual_seed(i))
        tup = b.step(v, t, x, generator=torch.Generator().manual_seed(i), return_dict=False)
        assert isinstance(out, SchedulerOutput) and isinstance(tup, tuple) and len(tup) == 1
        assert out.prev_sample.shape == x.shape and out.prev_sample.dtype == dtype
        assert torch.equal(out.prev_sample, tup[0]) and tup[0].isfinite().all()
        x = out.prev_sample
    assert a.step_index == b.step_index == 3


def test_public_api_and_scale_model_input_before_set_timesteps():
    s = make()
    assert isinstance(s.init_noise_sigma, float) and callable(s.scale_model_input) and callable(s.step)
    x = sample()
    assert torch.equal(s.scale_model_input(x, 1099.), x)                       # σ = ∞: the unit noise itself
    s = make()
    _, _, c_in = v_scalings(s.sigmas[-2].view(1))
    torch.testing.assert_close(s.scale_model_input(x, 0.), x * c_in, rtol=0, atol=0)
    assert s.step_index == len(s.timesteps) - 1
    s.set_timesteps(10)                                                       # after: the 10-step schedule
    assert s.step_index is None and s.num_inference_steps == 10
    _, _, c_in = v_scalings(s.sigmas[3].view(1))
    torch.testing.assert_close(s.scale_model_input(x, s.timesteps[3]), x * c_in, rtol=0, atol=0)


def test_add_noise_shape_and_values():
    s = make()
    s.set_timesteps(50)
    x0, n = sample(0), torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    t = s.timesteps[5][None]
    noised = s.add_noise(x0, n, t)
    assert noised.shape == x0.shape
    torch.testing.assert_close(noised, x0 + n * s.sigmas[5])
    assert torch.equal(s.add_noise(x0, n, s.timesteps[:1]), n)               # σ = ∞: the unit noise
    assert torch.equal(make().add_noise(x0, n, torch.tensor([1099.])), n)    # the default schedule too


# ------------------------------------------------------------------------------------------- step state


def test_step_index_and_begin_index():
    s = make(sampler='euler')
    s.set_timesteps(6)
    x = sample()
    s.set_begin_index(2)                                                      # img2img: start part-way
    assert s.begin_index == 2 and s.step_index is None
    s.step(0.1 * x, 12345., x)                                                # the timestep is not looked up
    assert s.step_index == 3
    s.set_timesteps(6)
    assert s.step_index is None and s.begin_index is None
    s.step(0.1 * x, s.timesteps[4], x)                                        # no begin index: by timestep
    assert s.step_index == 5
    s.step(0.1 * x, s.timesteps[5], x)
    with pytest.raises(ValueError, match='all 6 steps of the schedule are done; call set_timesteps'):
        s.step(0.1 * x, s.timesteps[5], x)
    with pytest.raises(ValueError, match='begin_index 6 is outside the schedule of 6 steps'):
        s.set_begin_index(6)
    with pytest.raises(ValueError, match=r'timestep 500.5 is not in the 6-step schedule; pass one of'):
        s.set_timesteps(6)
        s.scale_model_input(x, 500.5)
    with pytest.raises(ValueError, match=r'not in the training schedule \(t = 1099, …, 0; call set_timesteps'):
        make().scale_model_input(x, 500.5)


def full_loop(s: ZTSNRScheduler) -> torch.Tensor:
    """diffusers' loop with its deterministic dummy model (sample·t/(t+1)) and a fixed generator."""
    g = torch.Generator().manual_seed(0)
    x = torch.arange(4 * 3 * 8 * 8).reshape(3, 8, 8, 4).permute(3, 0, 1, 2) / (4 * 3 * 8 * 8) * s.init_noise_sigma
    for t in s.timesteps:
        x_in = s.scale_model_input(x, t)
        x = s.step(x_in * t / (t + 1), t, x, generator=g).prev_sample
    return x


@pytest.mark.parametrize('sampler', STEP_SAMPLERS)
def test_custom_timesteps_and_sigmas_reproduce_the_schedule(sampler):
    s = make(sampler=sampler)
    s.set_timesteps(10)
    want = full_loop(s)
    by_t, by_sigma = make(sampler=sampler), make(sampler=sampler)
    by_t.set_timesteps(timesteps=s.timesteps)
    by_sigma.set_timesteps(sigmas=s.sigmas)
    torch.testing.assert_close(by_t.sigmas, s.sigmas, rtol=1e-5, atol=0)
    assert torch.equal(by_sigma.sigmas, s.sigmas) and torch.equal(by_sigma.timesteps, s.timesteps)
    torch.testing.assert_close(full_loop(by_t), want, rtol=1e-4, atol=1e-6)
    assert torch.equal(full_loop(by_sigma), want)


# ------------------------------------------------------------------------------------------- class hygiene


def test_no_deprecated_kwargs_and_getattr():
    assert 'kwargs' not in inspect.signature(ZTSNRScheduler.__init__).parameters
    assert ZTSNRScheduler._deprecated_kwargs == []
    s = make()
    s.dummy_attribute = 5
    s.register_to_config(test_attribute=5)
    assert s.dummy_attribute == 5 and getattr(s, 'save_pretrained') == s.save_pretrained
    with pytest.warns(FutureWarning):
        assert s.test_attribute == 5                                          # config keys via .config
    with pytest.raises(AttributeError, match="'ZTSNRScheduler' object has no attribute 'does_not_exist'"):
        s.does_not_exist


@pytest.mark.parametrize('kw,match', [({'prediction_type': 'epsilon'}, 'v-prediction'),
                                      ({'rescale_betas_zero_snr': False}, 'rescale_betas_zero_snr=True'),
                                      ({'beta_schedule': 'squaredcos_cap_v2'}, "choose from 'scaled_linear'"),
                                      ({'sampler': 'heun'}, 'unknown sampler'),
                                      ({'schedule': 'Karras'}, 'unknown schedule')])
def test_configs_it_refuses_say_why(kw, match):
    with pytest.raises(ValueError, match=match):
        make(**kw)
