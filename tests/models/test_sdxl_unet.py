"""kdiff_ztsnr.models.sdxl.unet: SDXL's UNet as an inner v network with SDXL's size conditioning."""

import pytest
import torch

from kdiff_ztsnr.models.sdxl.components import build_component
from kdiff_ztsnr.models.sdxl.unet import SDXLUNetInner, time_ids
from tests.helpers import TINY

CTX = TINY['unet']['cross_attention_dim']
POOLED = TINY['text_encoder_2']['projection_dim']


@pytest.fixture(scope='module')
def inner():
    torch.manual_seed(0)
    unet = build_component('unet', TINY['unet']).eval()
    return SDXLUNetInner(unet, vae_factor=8)


def test_time_ids():
    ids = time_ids((64, 96), (0, 8), (128, 192), 3)
    assert ids.shape == (3, 6) and ids.dtype == torch.float32
    assert ids.tolist() == [[64., 96., 0., 8., 128., 192.]] * 3
    per_item = time_ids(torch.tensor([[64, 96], [32, 48]]), (0, 0), (64, 96), 2)
    assert per_item[:, :2].tolist() == [[64., 96.], [32., 48.]] and per_item[:, 4:].tolist() == [[64., 96.]] * 2


def test_forward_contract(inner):
    """v has x's shape; add_time_ids default to the canvas (latent size × factor), crop (0, 0); a scalar t is
    every item's."""
    x, ctx, pooled = torch.randn(2, 4, 8, 16), torch.randn(2, 77, CTX), torch.randn(2, POOLED)
    seen = []
    hook = inner.unet.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append((args[1], kwargs['added_cond_kwargs']['time_ids'])), with_kwargs=True)
    try:
        with torch.no_grad():
            v = inner(x, torch.tensor(999.), ctx, pooled)
            v_ids = inner(x, torch.tensor([999., 999.]), ctx, pooled,
                          add_time_ids=time_ids((64, 128), (0, 0), (64, 128), 2))
            v_other = inner(x, torch.tensor(999.), ctx, pooled, original_size=(128, 256), crop=(8, 8))
    finally:
        hook.remove()
    assert v.shape == x.shape and torch.isfinite(v).all()
    assert seen[0][0].tolist() == [999., 999.] and seen[0][1].tolist() == [[64., 128., 0., 0., 64., 128.]] * 2
    assert torch.equal(v, v_ids)
    assert seen[2][1].tolist() == [[128., 256., 8., 8., 64., 128.]] * 2 and not torch.allclose(v, v_other)


def test_inputs_follow_the_unets_dtype(inner):
    half = SDXLUNetInner(inner.unet.to(torch.bfloat16), 8)
    try:
        with torch.no_grad():
            v = half(torch.randn(1, 4, 8, 8), torch.tensor([10.]), torch.randn(1, 77, CTX), torch.randn(1, POOLED))
    finally:
        inner.unet.float()
    assert v.dtype == torch.bfloat16 and v.shape == (1, 4, 8, 8)
