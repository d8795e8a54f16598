"""kdiff_ztsnr.models.image_v1: k-diffusion's ImageDenoiserModelV1 as an inner v network (x_in, t, context, pooled)."""

import pytest
import torch

from kdiff_ztsnr import models
from kdiff_ztsnr.models import image_v1
from kdiff_ztsnr.models.image_v1 import ImageV1Inner, build_image_v1, noise_cond

MODEL = {'type': 'image_v1', 'input_channels': 3, 'mapping_out': 32, 'depths': [1, 1], 'channels': [16, 32],
         'self_attn_depths': [False, True]}


def test_noise_cond_endpoints():
    c = image_v1.noise_cond(torch.tensor([0., 499.5, 999.]))
    assert c.tolist() == [-1., 0., 1.]
    assert noise_cond(torch.tensor([0, 9]), num_timesteps=10).tolist() == [-1., 1.]   # integer t, other T


def test_image_v1_inner_contract():
    torch.manual_seed(0)
    inner = models.build_model({'model': dict(MODEL, cross_cond_dim=8, mapping_cond_dim=6)})
    for p in inner.parameters():                       # k-diffusion zero-initialises residual/output layers
        if not p.any():
            torch.nn.init.normal_(p, std=0.1)
    seen = []
    inner.net.timestep_embed.register_forward_hook(lambda m, i, o: seen.append(i[0].flatten()))
    x, ctx, pooled = torch.randn(2, 3, 16, 16), torch.randn(2, 154, 8), torch.randn(2, 6)
    t = torch.tensor([0., 999.])
    v = inner(x, t, context=ctx, pooled=pooled)
    assert v.shape == x.shape and torch.isfinite(v).all()
    assert torch.allclose(seen[0], torch.tensor([-1., 1.]), atol=1e-6)   # c_noise = log(pseudo-σ)/4
    assert not torch.allclose(inner(x, t, context=ctx, pooled=pooled * 0), v)   # pooled → mapping
    assert not torch.allclose(inner(x, t, context=ctx * 0, pooled=pooled), v)   # context → cross-attention
    assert inner.net.u_net.d_blocks[1][-1].__class__.__name__ == 'CrossAttention2d'


def test_pseudo_sigma_is_finite_at_the_terminal_step():
    """The net is fed exp(4·noise_cond(t)) ∈ [e⁻⁴, e⁴]: finite and positive at t = 999 (where σ = ∞), one per
    batch item even for a scalar t."""
    net = build_image_v1(dict(MODEL)).net
    fed = []
    net.register_forward_pre_hook(lambda m, args: fed.append(args[1]))
    ImageV1Inner(net)(torch.zeros(3, 3, 8, 8), torch.tensor(999.))
    torch.testing.assert_close(fed[0], torch.full([3], torch.e ** 4))
    ImageV1Inner(net, num_timesteps=11)(torch.zeros(1, 3, 8, 8), torch.tensor([0.]))
    torch.testing.assert_close(fed[1], torch.tensor([torch.e ** -4]))


def test_unconditional_network_takes_no_cond():
    inner = build_image_v1(dict(MODEL))
    assert not hasattr(inner.net, 'mapping_cond')                       # mapping_cond_dim None → 0
    assert not any(type(m).__name__ == 'CrossAttention2d' for m in inner.modules())
    assert inner(torch.randn(2, 3, 8, 8), torch.tensor([5., 6.])).shape == (2, 3, 8, 8)


def test_cross_attention_defaults_to_the_self_attention_stages():
    inner = build_image_v1(dict(MODEL, cross_cond_dim=8))
    kinds = [[type(m).__name__ for m in block] for block in inner.net.u_net.d_blocks]
    assert 'CrossAttention2d' not in kinds[0] and 'CrossAttention2d' in kinds[1]
    everywhere = build_image_v1(dict(MODEL, cross_cond_dim=8, cross_attn_depths=[True, True]))
    assert 'CrossAttention2d' in [type(m).__name__ for m in everywhere.net.u_net.d_blocks[0]]


def test_param_groups_are_k_diffusions():
    inner = build_image_v1(dict(MODEL))
    wd, no_wd = inner.param_groups(1e-3)
    assert wd['lr'] == no_wd['lr'] == 1e-3 and no_wd['weight_decay'] == 0.
    assert len(wd['params']) + len(no_wd['params']) == len(list(inner.parameters()))


def test_augment_wrapper_refused():
    with pytest.raises(ValueError, match='model.augment_wrapper is not supported'):
        build_image_v1(dict(MODEL, augment_wrapper=True))
