"""The shipped default model: it loads offline, its σ = ∞ prediction is the prompt's data mean (the optimal
denoiser's value there), and sampling from ∞ complies with solid-colour prompts."""

import math

import pytest
import torch

from kdiff_ztsnr.generation.demo import brightness
from kdiff_ztsnr.generation.generate import generate
from kdiff_ztsnr.generation.params import GenerationParams
from kdiff_ztsnr.generation.lookup import EMBEDDED, load_pipeline
from kdiff_ztsnr.training.data.synthetic import COLORS

pytestmark = pytest.mark.skipif(not (EMBEDDED / 'ema.safetensors').is_file(), reason='embedded model not built')


@pytest.fixture(scope='module')
def pipe():
    return load_pipeline('embedded')


def test_prediction_at_infinity_is_the_prompts_mean_colour(pipe):
    names = ['black', 'white', 'red', 'blue']
    prompts = [f'completely {c}' for c in names]
    model = pipe.denoiser()
    n = torch.randn(len(prompts), 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        d = model(n, torch.full([len(prompts)], math.inf), **pipe.encode_prompts(prompts))
    target = torch.tensor([COLORS[c] for c in names]).float() / 127.5 - 1
    assert (d.mean((2, 3)) - target).abs().max().item() < 0.25


def test_sampling_from_infinity_complies(pipe):
    for prompt, lo, hi in (('completely black', 0., 0.1), ('completely white', 0.9, 1.)):
        b = brightness(generate(pipe, GenerationParams(prompt=prompt, steps=12, n_samples=2, width=32, height=32)))
        assert ((b >= lo) & (b <= hi)).all(), (prompt, b)
