"""Integer timesteps as the hosts feed them (quantize_timesteps): k-diffusion's DiscreteSchedule quantize on the
hosts' clamped table, exact at σ = ∞, and the option on generate, the command line and ZTSNRScheduler."""

import math

import pytest
import torch
from k_diffusion.external import DiscreteSchedule

from kdiff_ztsnr import cli, schedules
from kdiff_ztsnr.cli.checks import params_from_args
from kdiff_ztsnr.denoisers import DiscreteVDenoiser
from kdiff_ztsnr.generation.generate import generate
from kdiff_ztsnr.generation.params import GenerationParams
from kdiff_ztsnr.models.bundle import Pipeline

HOST_ALPHA = 4.8973451890853435e-08        # ComfyUI's and A1111's zero-SNR clamp of ᾱ[-1]


def host_table(ac: torch.Tensor) -> torch.Tensor:
    ac = ac.clone()
    ac[-1] = HOST_ALPHA
    return ((1 - ac) / ac).sqrt().float()


def test_quantized_t_is_k_diffusions_nearest_index_on_the_hosts_table(ztsnr_ac):
    model = DiscreteVDenoiser(torch.nn.Identity(), ztsnr_ac)
    kd = DiscreteSchedule(host_table(ztsnr_ac), quantize=True)
    sigma = torch.empty(50_000).uniform_(-5, 10, generator=torch.Generator().manual_seed(0)).exp()
    assert torch.equal(model.sigma_to_t(sigma, quantize=True), kd.sigma_to_t(sigma))
    assert model.sigma_to_t(torch.tensor([math.inf]), quantize=True).item() == 999       # exact at σ = ∞
    # between the last finite σ (2254.24) and the hosts' 4518.76 the nearest index in log σ decides
    t = model.sigma_to_t(torch.tensor([3000., 3641., 20000.]), quantize=True)
    assert t.tolist() == [998, 999, 999]


def test_quantized_t_on_the_clamped_table(ztsnr_ac):
    model = DiscreteVDenoiser(torch.nn.Identity(), ztsnr_ac, sigma_max=schedules.ZTSNR_CLAMP)
    kd = DiscreteSchedule(model.sigmas, quantize=True)
    sigma = torch.empty(20_000).uniform_(-5, 10.5, generator=torch.Generator().manual_seed(1)).exp()
    assert torch.equal(model.sigma_to_t(sigma, quantize=True), kd.sigma_to_t(sigma))


class Recorder(torch.nn.Module):
    """A v network that records the timesteps it is fed and returns zero."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros([]))
        self.ts = []

    def forward(self, x, t, **kwargs):
        self.ts.append(t.detach().clone())
        return x * self.w


def recorded_timesteps(ac, quantize: bool) -> torch.Tensor:
    net = Recorder()
    pipe = Pipeline(inner_model=net, alphas_cumprod=ac, encode_prompts=lambda prompts: {})
    generate(pipe, GenerationParams(prompt='x', steps=6, scale=1., width=8, height=8, sampler='euler',
                                    quantize_timesteps=quantize))
    return torch.cat([t.flatten()[:1].float() for t in net.ts])


def test_generate_feeds_integer_timesteps_when_asked(ztsnr_ac):
    smooth, integer = recorded_timesteps(ztsnr_ac, False), recorded_timesteps(ztsnr_ac, True)
    assert integer[0] == smooth[0] == 999
    assert torch.equal(integer, integer.round()) and not torch.equal(smooth, smooth.round())
    assert (integer - smooth).abs().max() <= 0.5


def test_cli_option():
    p = cli.build_parser()
    args = p.parse_args(['sample', 'a cat', '--quantize-timesteps'])
    assert params_from_args(args, 32).quantize_timesteps is True
    args = p.parse_args(['sample', 'a cat', '--no-quantize-timesteps'])
    assert params_from_args(args, 32).quantize_timesteps is False
    assert GenerationParams.from_dict({'quantize_timesteps': True}).quantize_timesteps is True


def test_diffusers_scheduler_option():
    pytest.importorskip('diffusers')
    from kdiff_ztsnr.integrations.diffusers import ZTSNRScheduler
    sched = ZTSNRScheduler(sampler='euler', schedule='karras', quantize_timesteps=True)
    sched.set_timesteps(10)
    t = sched.timesteps
    assert t[0] == 999 and torch.equal(t, t.round())
    want = DiscreteVDenoiser(torch.nn.Identity(), sched.alphas_cumprod).sigma_to_t(sched.sigmas[:-1], quantize=True)
    assert torch.equal(t, want.float())
    plain = ZTSNRScheduler(sampler='euler', schedule='karras')
    plain.set_timesteps(10)
    assert not torch.equal(plain.timesteps, plain.timesteps.round())

