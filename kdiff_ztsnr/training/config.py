"""Training configs: JSON merged over ``DEFAULTS`` and then over k-diffusion's own defaults.

k-diffusion's sections ``model``, ``dataset``, ``optimizer``, ``lr_sched``, ``ema_sched`` (read by
``k_diffusion.config.load_config``) plus ``text`` and ``training``; every key and its meaning is in DEFAULTS.
"""

import copy
import json
import os
import warnings
from pathlib import Path
from typing import Union

from jsonmerge import merge
from k_diffusion import config as k_config

from ..text import text_dims
from .bounds import check_bounds
from .schema import check_merged, validate_config

DEFAULTS = {
    'model': {
        'type': 'image_v1',
        'sigma_data': 1.,
        'zero_terminal_snr': True,    # rescale SDXL's ᾱ to zero terminal SNR (σ[999] = ∞)
        'sigma_max': None,            # e.g. 20000.: clamp the table's top sigma (report A.2)
        'augment_wrapper': False,
        'cross_cond_dim': None,       # None: the text encoders' hidden size (Σ over encoders)
        'mapping_cond_dim': None,     # None: the pooled embedding size
        # type 'sdxl' (training/sdxl.py): an SDXL-architecture UNet; VAE frozen, CLIP-L/bigG unless trained
        'path': None,                 # diffusers folder or SGM single file; None: built from components
        'components': None,           # {unet, vae, text_encoder, text_encoder_2}: config dicts/JSON paths
        'source_prediction': None,    # 'epsilon': an ε checkpoint to convert to v (report §2.2)
        'latent_stats': None,         # None (SDXL ×0.13025) | 'nai_anime' | 'cache' (Welford) | [mean, std]
        'lora': None,                 # {'rank', 'alpha', 'targets', 'dropout', 'save_merged'} (lora.py)
    },
    'dataset': {
        'type': 'imagefolder',        # 'imagefolder' | 'synthetic' | 'latents'
        'location': None,             # image folder / latent cache / where to write the synthetic set
        'buckets': None,              # kwargs of buckets.make_buckets; None = the report's (§4.1.2)
        'log_space': True,
        'max_ratio_error': 0.5,
        'normalize': True,            # latents: apply the cache's scale-and-shift (appendix B)
        'cond_dropout_rate': 0.1,
        'tag_weights': None,          # None/False = off; {} or {'alpha', 'clip'}: §4.3 weights
        'synthetic': {'n': 64, 'sizes': [[32, 32]], 'seed': 0, 'solid_fraction': 0.25},
        'loader_threads': 0,
        'cache_latents': False,       # sdxl: encode the images once through the model's VAE
        'cache_dir': None,            # None: out_dir/latents
    },
    'text': {
        'type': 'clip',               # 'clip' (random tiny CLIP from config) | 'pretrained' | 'none'
        'path': None,                 # 'pretrained': an SDXL diffusers folder (local files only)
        'encoders': [{'hidden_size': 32, 'intermediate_size': 64, 'num_hidden_layers': 2,
                      'num_attention_heads': 2, 'projection_dim': None}],
        'seed': 0,
        'max_chunks': 3,
        'layer': -2,
        'final_norm': False,
        'cache': 1024,                # LRU memo of embeddings for this many prompts; 0 = off
    },
    'optimizer': {'type': 'adamw', 'lr': 1e-4, 'betas': [0.9, 0.999], 'eps': 1e-8, 'weight_decay': 1e-4,
                  'text_lr': None},   # sdxl + train_text_encoders: the encoders' LR (None: lr)
    'lr_sched': {'type': 'constant', 'warmup': 0.},
    'ema_sched': {'type': 'inverse', 'power': 0.6667, 'max_value': 0.9999},
    'training': {
        'steps': 1000,                # optimizer steps
        'batch_size': 8,              # per rank and micro-batch
        'grad_accum_steps': 1,
        'mixed_precision': 'no',      # 'no' | 'bf16'
        'tf32': False,
        'cpu': False,
        'threads': None,              # torch CPU threads (None: torch's default); 1 avoids oversubscription
        'seed': 0,
        'grad_clip': None,
        'min_snr_gamma': 5.,          # None: plain v-MSE
        'terminal_weight': 1.,        # MinSNR weight at SNR = 0 (see losses.py)
        'checkpoint_every': 1000,
        'keep_checkpoints': 0,        # 0 = keep all
        'log_every': 10,
        'out_dir': 'out/train',
        'gradient_checkpointing': False,
        'compile': False,             # torch.compile the UNet (in place)
        'save_single_file': True,     # sdxl: checkpoint-*/sdxl.safetensors (SGM, v_pred/ztsnr markers)
        'save_diffusers': False,      # sdxl: checkpoint-*/diffusers/
        'train_text_encoders': False, # sdxl full fine-tune: train CLIP-L/bigG too (EMA'd; no prompt cache)
        'preview_every': 0,           # sdxl: previews/step-N.png from σ = ∞ with the EMA weights; 0 = off
        'preview': None,              # {'prompts', 'seeds', 'steps', 'scale', 'width', 'height', 'sampler'}
    },
}


def load_training_config(config: Union[str, os.PathLike, dict]) -> dict:
    """JSON file, ``.safetensors`` checkpoint or dict, merged over DEFAULTS then k-diffusion's defaults.

    Every key is checked against `schema.SCHEMA` first: one ValueError naming the key (and the file)."""
    where = ''
    if not isinstance(config, dict):
        path, where = Path(config), f'{config}: '
        try:
            config = json.loads(read_checkpoint_config(path) if path.suffix == '.safetensors' else path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            raise ValueError(f'{where}not a valid JSON config ({str(e)[:200]})') from None
    try:
        validate_config(config)
        with warnings.catch_warnings():   # jsonmerge uses jsonschema's deprecated RefResolver
            warnings.simplefilter('ignore', DeprecationWarning)
            merged = k_config.load_config(merge(DEFAULTS, config))
        check_merged(merged)
        check_bounds(merged)
    except ValueError as e:
        raise ValueError(f'{where}{e}') from None
    return merged


def read_checkpoint_config(path: Path) -> str:
    """The ``config`` JSON in a safetensors file's metadata (errors name the file)."""
    from ..models.trained import read_metadata
    return json.dumps(read_metadata(path)['config'])


def resolve_text_dims(config: dict, cond) -> dict:
    """Fill model.cross_cond_dim / mapping_cond_dim from the text encoders (checking given values)."""
    config = copy.deepcopy(config)
    dims = text_dims(cond) if cond is not None else (0, 0)
    for key, dim in zip(('cross_cond_dim', 'mapping_cond_dim'), dims):
        if config['model'].get(key) is None:
            config['model'][key] = dim
        elif config['model'].get('type') == 'image_v1' and config['model'][key] != dim:
            raise ValueError(f'model.{key}={config["model"][key]} but the text encoders give {dim}')
    return config
