"""What a generator needs from a model: a v network, its ᾱ table, text conditioning and an image codec.

The package's one pipeline: the embedded default model and trainer checkpoints (pixel space,
`models.trained.trained_pipeline`) and SDXL checkpoints (VAE latents, `models.sdxl.load_sdxl`) are all
presented this way, so that `generate`, the CLI, the benchmarks and the trainer's previews treat them alike.
"""

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from ..denoisers import DiscreteVDenoiser


def identity(x: Tensor) -> Tensor:
    return x


@dataclass
class Pipeline:
    inner_model: nn.Module                          # v network: (x_in, t, **cond) -> v, t in [0, T−1]
    alphas_cumprod: Tensor                          # ᾱ table [T], ᾱ[-1] = 0 for zero terminal SNR
    encode_prompts: Callable[[list], dict]          # prompts -> keyword conditioning, batch-first tensors
    channels: int = 3                               # latent channels
    factor: int = 1                                 # image pixels per latent pixel
    encode: Callable[[Tensor], Tensor] = identity   # images in [−1, 1] [B, 3, H, W] -> latents
    decode: Callable[[Tensor], Tensor] = identity   # latents -> images in [−1, 1]
    base_side: int = 32                             # canvas side the model's σ_max is meant for (§2.3)
    size_multiple: int = 8                          # width/height must be multiples of this
    max_chunks: int = 3                             # prompt chunks of 75 tokens
    size_cond: Optional[Callable[[int, int, int], dict]] = None   # (width, height, batch) -> extra cond (SDXL)
    sigma_data: float = 1.
    force_zeros_for_empty_prompt: bool = False      # empty negative prompt → all-zero embeddings (diffusers SDXL)
    name: str = 'model'
    info: dict = field(default_factory=dict)
    components: dict = field(default_factory=dict)  # the loaded modules by role (SDXL: unet, vae, text)

    def denoiser(self, clamp: Optional[float] = None, quantize: bool = False) -> DiscreteVDenoiser:
        """The exact wrapper (clamp None: the table reaches ∞) or the one whose table's top is clamp (report A.2,
        DiscreteVDenoiser's sigma_max); quantize: integer timesteps as ComfyUI / A1111 feed them."""
        return DiscreteVDenoiser(self.inner_model, self.alphas_cumprod, quantize=quantize, sigma_max=clamp,
                                 sigma_data=self.sigma_data).to(self.device)

    @property
    def zero_terminal_snr(self) -> bool:
        return bool(self.alphas_cumprod[-1] == 0)

    @property
    def device(self) -> torch.device:
        p = next(self.inner_model.parameters(), None)
        return p.device if p is not None else torch.device('cpu')


def nonfinite_weights(pipe: Pipeline, limit: int = 3) -> list[str]:
    """Names of (up to limit) parameters of the pipeline's networks holding NaN or inf, LoRA adapters included
    (one pass over the weights: for explaining a NaN output, not per step)."""
    modules = {'inner_model': pipe.inner_model, **{k: v for k, v in pipe.components.items()
                                                  if isinstance(v, nn.Module)}}
    found, seen = [], set()
    for role, module in modules.items():
        for name, p in module.named_parameters():
            if id(p) not in seen and p.is_floating_point() and not torch.isfinite(p).all():
                found.append(f'{role}.{name}')
                if len(found) == limit:
                    return found
            seen.add(id(p))
    return found
