"""k-diffusion's ``ImageDenoiserModelV1`` as an inner v network ``(x_in, t, context=None, pooled=None) -> v``.

``ImageV1Inner`` adapts k-diffusion's ``ImageDenoiserModelV1`` (a small U-Net with AdaGN, self- and
cross-attention) to that contract: the text context [B, L, D] goes to cross-attention (``cross_cond``), the
pooled embedding [B, P] to the mapping network (``mapping_cond``). ``build_image_v1`` reads a
k-diffusion-style ``model`` section.
"""

from typing import Optional

from k_diffusion import config as k_config
from torch import Tensor, nn

from .. import schedules


def noise_cond(t: Tensor, num_timesteps: int = schedules.NUM_TIMESTEPS) -> Tensor:
    """The network's noise conditioning c_noise = 2t/(T−1) − 1 ∈ [−1, 1]: linear in t, finite at t = T−1.

    k-diffusion's models take c_noise = log(σ)/4, which is ∞ at the terminal step; a linear map of t keeps
    the same O(1) range (log σ/4 spans [−0.9, 1.9] on SDXL) and resolves high-noise steps evenly.
    """
    return t.float() * (2 / (num_timesteps - 1)) - 1


class ImageV1Inner(nn.Module):
    """``ImageDenoiserModelV1`` as an inner v network ``(x_in, t, context=None, pooled=None) -> v``.

    ImageDenoiserModelV1 computes c_noise = log(sigma)/4 from its sigma argument, so it is fed the positive,
    finite pseudo-sigma exp(4·noise_cond(t)) ∈ [e⁻⁴, e⁴], giving it c_noise = noise_cond(t).
    Cross-attention runs without a padding mask (every one of the 77k context tokens is attended, as SD does).
    """

    def __init__(self, net: nn.Module, num_timesteps: int = schedules.NUM_TIMESTEPS):
        super().__init__()
        self.net = net
        self.num_timesteps = num_timesteps

    def forward(self, x_in: Tensor, t: Tensor, context: Optional[Tensor] = None,
                pooled: Optional[Tensor] = None) -> Tensor:
        pseudo_sigma = (4 * noise_cond(t, self.num_timesteps)).exp().expand(x_in.shape[0])
        kwargs = {}
        if pooled is not None:
            kwargs['mapping_cond'] = pooled.to(x_in.dtype)
        if context is not None:
            kwargs['cross_cond'] = context.to(x_in.dtype)
            kwargs['cross_cond_padding'] = context.new_zeros(context.shape[:2], dtype=x_in.dtype)
        return self.net(x_in, pseudo_sigma.to(x_in.dtype), **kwargs)

    def param_groups(self, base_lr: float) -> list[dict]:
        """k-diffusion's groups: weight decay on mapping/U-Net weights only."""
        return self.net.param_groups(base_lr)


def build_image_v1(model_config: dict) -> ImageV1Inner:
    """ImageV1Inner from a ``model`` section (k-diffusion's image_v1 keys; ``cross_attn_depths`` None means
    the self-attention stages). Uses ``k_diffusion.config.make_model`` without its augmentation wrapper."""
    mc = {'patch_size': 1, 'dropout_rate': 0., 'unet_cond_dim': 0, 'skip_stages': 0, 'has_variance': False,
          **model_config}
    if mc.get('augment_wrapper'):
        raise ValueError('model.augment_wrapper is not supported: kdiff-ztsnr trains without Karras augmentation')
    mc['cross_cond_dim'] = mc.get('cross_cond_dim') or 0
    mc['mapping_cond_dim'] = mc.get('mapping_cond_dim') or 0
    if mc.get('cross_attn_depths') is None:
        mc['cross_attn_depths'] = list(mc['self_attn_depths']) if mc['cross_cond_dim'] else None
    mc['augment_wrapper'] = False
    net = k_config.make_model({'model': mc, 'dataset': {'num_classes': 0}})
    return ImageV1Inner(net, mc.get('num_timesteps', schedules.NUM_TIMESTEPS))
