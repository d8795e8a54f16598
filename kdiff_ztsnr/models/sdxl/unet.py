"""SDXL's UNet2DConditionModel as an inner v network, with SDXL's size conditioning (``add_time_ids``)."""

from typing import Optional

import torch
from torch import Tensor, nn


def time_ids(original_size, crop, target_size, batch: int, device=None) -> Tensor:
    """SDXL's added time ids [B, 6]: original (h, w), crop (top, left), target (h, w); tuples or [B, 2]."""
    parts = [torch.as_tensor(v, dtype=torch.float32, device=device).reshape(-1, 2).expand(batch, 2)
             for v in (original_size, crop, target_size)]
    return torch.cat(parts, 1)


class SDXLUNetInner(nn.Module):
    """SDXL's UNet2DConditionModel as an inner v network ``(x_in, t, context, pooled, …) -> v``.

    ``add_time_ids`` [B, 6] is used as given; otherwise it is built from original_size / crop / target_size
    ((h, w) in pixels), which default to the canvas size (latent size × vae_factor) and (0, 0).
    """

    def __init__(self, unet: nn.Module, vae_factor: int = 8):
        super().__init__()
        self.unet, self.vae_factor = unet, vae_factor

    def forward(self, x_in: Tensor, t: Tensor, context: Tensor, pooled: Tensor,
                add_time_ids: Optional[Tensor] = None, original_size=None, crop=(0, 0),
                target_size=None) -> Tensor:
        # not self.unet.dtype: diffusers' ModelMixin.dtype walks every parameter, 3–11 ms a call on a CPU (most
        # of the package's per-step overhead against diffusers' own pipeline, which reads it once per image)
        b, dtype = x_in.shape[0], next(self.unet.parameters()).dtype
        if add_time_ids is None:
            size = (x_in.shape[-2] * self.vae_factor, x_in.shape[-1] * self.vae_factor)
            add_time_ids = time_ids(original_size or size, crop, target_size or size, b, x_in.device)
        t = torch.as_tensor(t, device=x_in.device).float().expand(b)
        cond = {'text_embeds': pooled.to(x_in.device, dtype), 'time_ids': add_time_ids.to(x_in.device, dtype)}
        return self.unet(x_in.to(dtype), t, encoder_hidden_states=context.to(x_in.device, dtype),
                         added_cond_kwargs=cond).sample
