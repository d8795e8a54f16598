"""SDXL's VAE as the pipeline's image codec, with the latent scale-and-shift of the report's appendix B.

Latents are normalised per channel, (z − μ)/σ: SDXL's own ×scaling_factor is μ = 0, σ = 1/0.13025; the
report's anime numbers (appendix B, fig. 8) are ``NAI_ANIME_SDXL_MEAN/STD``.
"""

from typing import Optional

import torch
from torch import Tensor, nn

NAI_ANIME_SDXL_MEAN = (4.8119, 0.1607, 1.3538, -1.7753)  # appendix B, fig. 8: SDXL VAE, anime
NAI_ANIME_SDXL_STD = (9.9181, 6.2753, 7.5978, 5.9956)


def _channels(v, z: Tensor) -> Tensor:
    return torch.as_tensor(v, dtype=torch.float32, device=z.device).view(-1, 1, 1)


def normalize(z: Tensor, mean, std) -> Tensor:
    """VAE latents → standard Gaussian per channel: (z − μ)/σ (appendix B); z [B, C, h, w] or [C, h, w]."""
    return ((z.float() - _channels(mean, z)) / _channels(std, z)).to(z.dtype)


def denormalize(z: Tensor, mean, std) -> Tensor:
    """Inverse of normalize: z·σ + μ, back to the VAE decoder's distribution (appendix B)."""
    return (z.float() * _channels(std, z) + _channels(mean, z)).to(z.dtype)


def vae_factor(vae: nn.Module) -> int:
    """Image pixels per latent pixel (8 for SDXL's VAE)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def check_size(width: int, height: int, multiple: int, what: str = 'width and height') -> None:
    if width <= 0 or height <= 0 or width % multiple or height % multiple:
        raise ValueError(f'{what} must be positive multiples of {multiple} (the VAE factor), got {width}x{height}')


def latent_stats_for(vae: nn.Module, stats=None) -> tuple[Tensor, Tensor]:
    """Per-channel (μ, σ) with latents = (z − μ)/σ: None → (shift_factor or 0, 1/scaling_factor) — SDXL's
    ×0.13025; 'nai_anime' → the report's appendix-B SDXL-VAE numbers; or a (mean, std) pair."""
    c = vae.config.latent_channels
    if stats is None:
        mean, std = getattr(vae.config, 'shift_factor', None) or 0., 1 / vae.config.scaling_factor
    elif isinstance(stats, str):
        if stats != 'nai_anime':
            raise ValueError(f'unknown latent stats {stats!r}; use None, "nai_anime" or (mean, std)')
        mean, std = NAI_ANIME_SDXL_MEAN, NAI_ANIME_SDXL_STD
    else:
        mean, std = stats
    mean, std = [torch.as_tensor(v, dtype=torch.float32).flatten().expand(c).clone() for v in (mean, std)]
    return mean, std


def vae_encode(vae: nn.Module, images: Tensor, mean: Tensor, std: Tensor, sample: bool = False,
               generator: Optional[torch.Generator] = None) -> Tensor:
    """Images in [−1, 1] [B, 3, H, W] → normalised latents (z − μ)/σ [B, C, H/f, W/f], float32."""
    check_size(images.shape[-1], images.shape[-2], vae_factor(vae), 'image width and height')
    p = next(vae.parameters())
    dist = vae.encode(images.to(p.device, p.dtype)).latent_dist
    z = dist.sample(generator) if sample else dist.mode()
    return normalize(z.float(), mean, std)


def vae_decode(vae: nn.Module, latents: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """Normalised latents → images (about [−1, 1]) [B, 3, H·f, W·f], float32."""
    p = next(vae.parameters())
    z = denormalize(latents.float(), mean, std)
    return vae.decode(z.to(p.device, p.dtype)).sample.float()
