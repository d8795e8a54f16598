"""SDXL-architecture v-prediction ZTSNR models: configs, key layouts, UNet/VAE adaptors, loading, saving."""

from .components import BASE_SIDE, COMPONENTS, SGM_PREFIXES, build_component, component_config
from .keys import CheckpointError, component_to_sgm, diffusers_state_dicts, sgm_state_dict
from .loading import inspect_model, load_sdxl, read_checkpoint, sdxl_tokenizers
from .pipeline import sdxl_pipeline, to_diffusers
from .prediction import resolve_prediction, scheduler_config
from .saving import save_pretrained, save_single_file
from .unet import SDXLUNetInner, time_ids
from .vae import check_size, latent_stats_for, vae_decode, vae_encode, vae_factor
