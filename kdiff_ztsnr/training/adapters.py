"""LoRA on an SDXL UNet through peft (as diffusers' own training scripts do), saved in the kohya/A1111 format.

The adapter is added with diffusers' ``UNet2DConditionModel.add_adapter(LoraConfig)``; B starts at zero, so
step 0 is the base model. ``kohya_state_dict`` converts peft's state dict with diffusers' shipped converter
(``convert_state_dict_to_kohya``: ``lora_unet_<diffusers path>.lora_down/lora_up.weight``) and writes the
configured alpha (the converter writes alpha = rank). ComfyUI, A1111/Forge, diffusers' ``load_lora_weights`` and
the package's own reader (`models.sdxl.lora`, which also folds adapters into weights) read that format.
"""

import os
from typing import Optional, Sequence, Union

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

# diffusers' SDXL LoRA scripts' default targets: the attention projections of every transformer block
DEFAULT_TARGETS = ('to_q', 'to_k', 'to_v', 'to_out.0')
LORA_DEFAULTS = {'rank': 16, 'alpha': None, 'targets': list(DEFAULT_TARGETS), 'dropout': 0.}


def lora_options(lora_config: Union[dict, bool, None]) -> Optional[dict]:
    """``model.lora`` merged over LORA_DEFAULTS (alpha None = rank); None when LoRA is off."""
    if not lora_config:
        return None
    opts = {**LORA_DEFAULTS, **({} if lora_config is True else lora_config)}
    opts['alpha'] = opts['rank'] if opts['alpha'] is None else opts['alpha']
    return opts


def add_lora(unet: nn.Module, rank: int, alpha: float, targets: Sequence[str] = DEFAULT_TARGETS,
             dropout: float = 0.) -> nn.Module:
    """Freeze the UNet and add a trainable peft LoRA adapter (rank, alpha, target module names)."""
    from peft import LoraConfig
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=int(rank), lora_alpha=float(alpha), target_modules=list(targets),
                                lora_dropout=float(dropout), init_lora_weights='gaussian'))
    return unet


def kohya_state_dict(unet: nn.Module, alpha: float) -> dict[str, Tensor]:
    """The UNet's LoRA weights in kohya keys (``lora_unet_…``), float32, with alpha tensors."""
    from diffusers.utils import convert_state_dict_to_kohya
    from peft.utils import get_peft_model_state_dict
    peft_sd = {f'unet.{k}': v for k, v in get_peft_model_state_dict(unet).items()}
    sd = convert_state_dict_to_kohya(peft_sd)
    return {k: (torch.tensor(float(alpha)) if k.endswith('.alpha') else v.detach().float().cpu().contiguous())
            for k, v in sd.items()}


def save_kohya_lora(unet: nn.Module, path: Union[str, os.PathLike], alpha: float,
                    metadata: Optional[dict] = None) -> None:
    """Write kohya_state_dict as .safetensors (metadata: ss_network_dim/alpha as kohya writes them)."""
    sd = kohya_state_dict(unet, alpha)
    rank = next(v.shape[0] for k, v in sd.items() if k.endswith('lora_down.weight'))
    meta = {'ss_network_module': 'networks.lora', 'ss_network_dim': str(rank), 'ss_network_alpha': str(alpha),
            'ss_v_parameterization': 'true', 'ss_zero_terminal_snr': 'true',
            **{k: str(v) for k, v in (metadata or {}).items()}}
    save_file(sd, str(path), metadata=meta)
