"""Write an SDXL Pipeline as a diffusers folder or as one SGM single file with ComfyUI's markers."""

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..bundle import Pipeline
from .components import PathLike
from .keys import sgm_state_dict
from .prediction import scheduler_config

MODEL_INDEX = {'_class_name': 'StableDiffusionXLPipeline', 'force_zeros_for_empty_prompt': True,
               'scheduler': ['diffusers', 'EulerDiscreteScheduler'],
               'text_encoder': ['transformers', 'CLIPTextModel'],
               'text_encoder_2': ['transformers', 'CLIPTextModelWithProjection'],
               'tokenizer': ['transformers', 'CLIPTokenizer'], 'tokenizer_2': ['transformers', 'CLIPTokenizer'],
               'unet': ['diffusers', 'UNet2DConditionModel'], 'vae': ['diffusers', 'AutoencoderKL']}


def save_pretrained(pipe: Pipeline, path: PathLike) -> None:
    """A diffusers folder (unet/ vae/ text_encoder[_2]/ tokenizer[_2]/ scheduler/ model_index.json)."""
    path, c = Path(path), pipe.components
    c['unet'].save_pretrained(path / 'unet')
    c['vae'].save_pretrained(path / 'vae')
    for sub, enc, tok in zip(('', '_2'), c['text'].encoders, c['text'].tokenizers):
        enc.save_pretrained(path / f'text_encoder{sub}')
        tok.save_pretrained(path / f'tokenizer{sub}')
    (path / 'scheduler').mkdir(parents=True, exist_ok=True)
    with open(path / 'scheduler' / 'scheduler_config.json', 'w') as f:
        json.dump(scheduler_config(pipe.zero_terminal_snr), f, indent=2)
    with open(path / 'model_index.json', 'w') as f:
        json.dump(MODEL_INDEX, f, indent=2)


def save_single_file(pipe: Pipeline, path: PathLike) -> None:
    """One SGM-layout .safetensors with ComfyUI's `v_pred` (and `ztsnr`) marker keys."""
    c = pipe.components
    sd = sgm_state_dict(c['unet'], c['vae'], *c['text'].encoders)
    sd['v_pred'] = torch.tensor([])
    if pipe.zero_terminal_snr:
        sd['ztsnr'] = torch.tensor([])
    save_file({k: v.detach().contiguous().cpu() for k, v in sd.items()}, str(path), metadata={'format': 'pt'})
