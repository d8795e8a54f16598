"""An SDXL-architecture model (UNet, VAE, two CLIP encoders) as the package's one `Pipeline`."""

import functools

import torch
from torch import Tensor, nn

from ...text import TextConditioner
from ..bundle import Pipeline
from .components import BASE_SIDE
from .unet import SDXLUNetInner, time_ids
from .vae import vae_decode, vae_encode, vae_factor


def size_cond(width: int, height: int, batch: int, device=None) -> dict[str, Tensor]:
    """SDXL size conditioning for a width × height canvas: original = target = (h, w), crop (0, 0)."""
    return {'add_time_ids': time_ids((height, width), (0, 0), (height, width), batch, device)}


def sdxl_pipeline(unet: nn.Module, vae: nn.Module, text: TextConditioner, alphas_cumprod: Tensor,
                  latent_mean: Tensor, latent_std: Tensor, info: dict) -> Pipeline:
    """The Pipeline of loaded SDXL components: latents (z − μ)/σ (appendix B; SDXL: μ = 0, σ = 1/0.13025),
    prompts through CLIP-L ⊕ bigG (report §4.2), the exact σ = ∞ wrapper on alphas_cumprod."""
    f = vae_factor(vae)
    device = next(unet.parameters()).device
    return Pipeline(inner_model=SDXLUNetInner(unet, f), alphas_cumprod=alphas_cumprod,
                    encode_prompts=torch.no_grad()(text), channels=unet.config.in_channels, factor=f,
                    encode=torch.no_grad()(functools.partial(vae_encode, vae, mean=latent_mean, std=latent_std)),
                    decode=torch.no_grad()(functools.partial(vae_decode, vae, mean=latent_mean, std=latent_std)),
                    base_side=BASE_SIDE, size_multiple=f, max_chunks=text.chunk_kwargs['max_chunks'],
                    size_cond=functools.partial(size_cond, device=device), name=info.get('name', 'sdxl'),
                    info=dict(info), components={'unet': unet, 'vae': vae, 'text': text})


def to_diffusers(pipe: Pipeline, scheduler):
    """The same loaded modules as diffusers' `StableDiffusionXLPipeline` with the given scheduler (no copy)."""
    from diffusers import StableDiffusionXLPipeline
    c = pipe.components
    return StableDiffusionXLPipeline(vae=c['vae'], text_encoder=c['text'].encoders[0],
                                     text_encoder_2=c['text'].encoders[1], tokenizer=c['text'].tokenizers[0],
                                     tokenizer_2=c['text'].tokenizers[1], unet=c['unet'], scheduler=scheduler)
