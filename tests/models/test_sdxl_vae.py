"""kdiff_ztsnr.models.sdxl.vae: SDXL's VAE as the pipeline's image codec, latents (z − μ)/σ (appendix B)."""

import pytest
import torch

from kdiff_ztsnr.models.sdxl.components import build_component
from kdiff_ztsnr.models.sdxl.vae import (
    NAI_ANIME_SDXL_MEAN,
    NAI_ANIME_SDXL_STD,
    check_size,
    denormalize,
    latent_stats_for,
    normalize,
    vae_decode,
    vae_encode,
    vae_factor,
)
from tests.helpers import TINY


@pytest.fixture(scope='module')
def vae():
    torch.manual_seed(0)
    return build_component('vae', TINY['vae']).eval()


def test_normalize_round_trip():
    z = torch.randn(2, 4, 8, 8) * torch.tensor(NAI_ANIME_SDXL_STD).view(4, 1, 1) + \
        torch.tensor(NAI_ANIME_SDXL_MEAN).view(4, 1, 1)
    n = normalize(z, NAI_ANIME_SDXL_MEAN, NAI_ANIME_SDXL_STD)
    mean, std = torch.tensor(NAI_ANIME_SDXL_MEAN), torch.tensor(NAI_ANIME_SDXL_STD)
    torch.testing.assert_close(n, (z - mean.view(4, 1, 1)) / std.view(4, 1, 1))
    torch.testing.assert_close(denormalize(n, mean, std), z, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(denormalize(n[0], mean, std), z[0], rtol=1e-6, atol=1e-5)  # [C, h, w]
    const = mean.view(4, 1, 1).expand(4, 3, 3)
    assert normalize(const, mean, std).abs().max() < 1e-6
    assert normalize(z.bfloat16(), mean, std).dtype == torch.bfloat16
    assert abs(1 / std.mean().item() - 0.1343) < 1e-4  # appendix B's remark: ≈ SDXL's 0.13025


def test_latent_stats(vae):
    mean, std = latent_stats_for(vae)                       # SDXL: ×scaling_factor, no shift
    assert mean.tolist() == [0.] * 4
    torch.testing.assert_close(std, torch.full([4], 1 / 0.13025))
    mean, std = latent_stats_for(vae, 'nai_anime')
    assert mean.tolist() == pytest.approx(NAI_ANIME_SDXL_MEAN) and std.tolist() == pytest.approx(NAI_ANIME_SDXL_STD)
    mean, std = latent_stats_for(vae, (0.5, [1., 2., 3., 4.]))   # a scalar is every channel's
    assert mean.tolist() == [0.5] * 4 and std.tolist() == [1., 2., 3., 4.]
    mean[0] = 9.                                                   # a copy, not a view of one shared scalar
    assert mean.tolist() == [9., .5, .5, .5]
    with pytest.raises(ValueError, match="unknown latent stats 'anime'"):
        latent_stats_for(vae, 'anime')


def test_factor_and_size_check(vae):
    assert vae_factor(vae) == 8                                    # 4 blocks: 3 downsamplings
    check_size(64, 16, 8)
    for w, h in ((60, 64), (64, 0), (-8, 8)):
        with pytest.raises(ValueError, match=f'multiples of 8 .*got {w}x{h}'):
            check_size(w, h, 8)


def test_encode_decode(vae):
    x = torch.rand(2, 3, 64, 32) * 2 - 1
    mean, std = latent_stats_for(vae, 'nai_anime')
    with torch.no_grad():
        z = vae_encode(vae, x, mean, std)
        raw = vae.encode(x).latent_dist.mode()
        assert z.shape == (2, 4, 8, 4) and z.dtype == torch.float32
        torch.testing.assert_close(z, normalize(raw, mean, std))
        sampled = vae_encode(vae, x, mean, std, sample=True, generator=torch.Generator().manual_seed(0))
        assert not torch.equal(sampled, z)
        img = vae_decode(vae, z, mean, std)
        assert img.shape == (2, 3, 64, 32) and img.dtype == torch.float32
        torch.testing.assert_close(img, vae.decode(raw).sample, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match='image width and height must be positive multiples of 8'):
        vae_encode(vae, torch.zeros(1, 3, 64, 60), mean, std)
