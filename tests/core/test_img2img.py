import math

import pytest
import torch

from kdiff_ztsnr import sampling as S
from kdiff_ztsnr.img2img import img2img_start, start_index


def test_start_index():
    assert start_index(28, 1.) == 0 and start_index(28, 0.) == 28 and start_index(28, 0.5) == 14
    with pytest.raises(ValueError, match='strength'):
        start_index(28, 1.5)


def test_img2img_start_noises_to_sigma_i(exact):
    sigmas = exact.get_sigmas(28)
    x0, n = torch.randn(1, 4, 16, 16), torch.randn(1, 4, 16, 16)
    x, tail = img2img_start(x0, n, sigmas, 0.5)
    assert torch.equal(tail, sigmas[14:])
    torch.testing.assert_close(x, x0 + sigmas[14] * n)
    x, tail = img2img_start(x0, n, sigmas, 1.)
    assert math.isinf(tail[0]) and torch.equal(x, n)          # strength 1 from ∞: init fully destroyed
    x, tail = img2img_start(x0, n, sigmas, 0.)
    assert torch.equal(x, x0) and tail.tolist() == [0.]


def test_img2img_keeps_init_at_low_strength(exact):
    data = exact.inner_model.data
    x0, n = data[3:4], torch.randn(1, *data.shape[1:])
    x, tail = img2img_start(x0, n, exact.get_sigmas(28), 0.3)
    out = S.sample_euler(exact, x, tail, disable=True)
    # the oracle snaps to the nearest data image: the init's
    nearest = (data - out).flatten(1).norm(dim=1).argmin().item()
    assert nearest == 3
