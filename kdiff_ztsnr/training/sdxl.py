"""The trainer's SDXL path (``model.type: "sdxl"``): the UNet is trained, its VAE is frozen; its two CLIP encoders
are frozen (prompt embeddings memoised by `text.CachedText`) unless ``training.train_text_encoders``.

- conditioning (§4.2): CLIP-L ⊕ bigG penultimate states over up to 3 × 75-token chunks, pooled = mean of the
  chunks' pooled bigG states (`text.TextConditioner`); SDXL's size conditioning ``add_time_ids`` = original
  (h, w), crop (top, left), target (h, w) of each item's real bucket resize and crop (`data.images.load_cropped`).
- latents: images are encoded on the fly by the VAE (float32, ``dist.mode()``), or read from a latent cache
  written through the same VAE (`cache_sdxl_latents`, per bucket resolution; a complete cache is reused).
  Both are normalised (z − μ)/σ with ``model.latent_stats`` (None: SDXL's ×0.13025, what UIs assume;
  'nai_anime'; 'cache': the cache's Welford statistics, appendix B; or [mean, std]).
- outputs (in each checkpoint): ``sdxl.safetensors``, the EMA UNet with the frozen VAE/encoders as one SGM
  single file with ComfyUI's ``v_pred``/``ztsnr`` markers; ``diffusers/`` on request; for LoRA
  ``lora.safetensors`` (kohya keys) from the EMA adapter, and the merged single file on request.
- ``training.train_text_encoders`` (full fine-tune only): both encoders train (own param group, LR
  ``optimizer.text_lr`` or ``lr``), every batch is encoded with grad (no prompt cache), and they are EMA'd like
  the UNet: checkpoints hold ``text.safetensors`` (live) and ``text_ema.safetensors``; the single file and
  previews use the EMA encoders, as they use the EMA UNet.
"""

import copy
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import Tensor

from ..models.alphas import alphas_cumprod_for
from ..models.sdxl import latent_stats_for, save_pretrained, save_single_file, sdxl_pipeline, time_ids
from ..models.sdxl.parts import load_parts, text_options
from ..models.sdxl.unet import SDXLUNetInner
from ..models.sdxl.vae import normalize, vae_encode, vae_factor
from ..text import TextConditioner
from ..models.sdxl.lora import merge_lora
from .adapters import add_lora, lora_options, save_kohya_lora

CACHE_SUBDIR = 'latents'


class SDXLTraining:
    """Loads the parts, prepares batches (latents + per-item add_time_ids) and writes the loadable outputs."""

    def __init__(self, config: dict):
        mc, tc = config['model'], config['training']
        unet, vae, text, self.info = load_parts(mc)
        self.text = TextConditioner(list(text.encoders), text.tokenizers, **text_options(config['text']))
        self.train_text = bool(tc.get('train_text_encoders'))
        if self.train_text and mc.get('lora'):           # also refused by schema.check_merged
            raise ValueError('training.train_text_encoders is not available with model.lora')
        self.text.train(self.train_text).requires_grad_(self.train_text)
        self.vae = vae.float().eval().requires_grad_(False)
        self.factor = vae_factor(vae)
        self.latent_stats = mc.get('latent_stats')
        self.mean, self.std = latent_stats_for(vae, None if self.latent_stats == 'cache' else self.latent_stats)
        self.lora = lora_options(mc.get('lora'))
        if self.lora:
            add_lora(unet, self.lora['rank'], self.lora['alpha'], self.lora['targets'], self.lora['dropout'])
        if tc.get('gradient_checkpointing'):
            unet.enable_gradient_checkpointing()
        if tc.get('compile'):
            unet.compile()                      # in place: state-dict keys unchanged
        self.inner = SDXLUNetInner(unet, self.factor)
        self.zero_terminal_snr = bool(mc.get('zero_terminal_snr', True))
        self.save_single = tc.get('save_single_file', True)
        self.save_diffusers = tc.get('save_diffusers', False)

    def to(self, device) -> 'SDXLTraining':
        self.vae.to(device)
        self.text.to(device)
        return self

    def use_cache_stats(self, dataset) -> None:
        """latent_stats 'cache': normalise with the latent cache's own Welford mean/std (appendix B)."""
        if self.latent_stats == 'cache':
            if not hasattr(dataset, 'mean'):
                raise ValueError("model.latent_stats 'cache' needs a latent cache (dataset.type 'latents' or "
                                 "dataset.cache_latents)")
            self.mean, self.std = dataset.mean.float(), dataset.std.float()

    @torch.no_grad()
    def prepare(self, batch: dict, device) -> tuple[Tensor, dict]:
        """(normalised latents x0 [B, 4, h, w], {'add_time_ids' [B, 6]}) of a batch of images or raw latents."""
        x = batch['x0']
        if x.shape[1] == 3:                                  # pixels: encode through the VAE
            z = vae_encode(self.vae, x.to(device), self.mean, self.std)
        else:                                                # raw cached latents
            z = normalize(x.to(device).float(), self.mean, self.std)
        b, (h, w) = len(z), (z.shape[-2] * self.factor, z.shape[-1] * self.factor)
        ids = time_ids(batch['original_size'], batch['crop'], (h, w), b, device)
        return z.float(), {'add_time_ids': ids}

    def text_groups(self, opt_config: dict) -> list[dict]:
        """The encoders' optimizer param group (LR ``text_lr``, else ``lr``); none when they are frozen."""
        if not self.train_text:
            return []
        lr = opt_config.get('text_lr') or opt_config['lr']
        return [{'params': [p for p in self.text.parameters() if p.requires_grad], 'lr': lr}]

    def pipeline(self, inner: SDXLUNetInner, text: Optional[TextConditioner] = None):
        """The package's Pipeline around a (trained) UNet, the VAE and the (given or own) encoders, e.g. for
        previews."""
        zt = self.zero_terminal_snr
        return sdxl_pipeline(inner.unet, self.vae, text or self.text, alphas_cumprod_for(zt), self.mean, self.std,
                             {'name': 'preview', 'prediction_type': 'v', 'zero_terminal_snr': zt})

    train_text: bool
    previews = True                          # preview grids through the package's Pipeline

    def build_inner(self, config: dict, trust_code: bool = False) -> SDXLUNetInner:
        return self.inner

    def prepare_dataset(self, dataset_config: dict, dataset, out_dir: Path, seed: int, device='cpu'):
        """The dataset as the UNet trains on it: through the latent cache if asked (`sdxl_dataset`)."""
        return sdxl_dataset(self, dataset_config, dataset, out_dir, seed, device)

    def export(self, ckpt: Path, ema: SDXLUNetInner, step: int, text: Optional[TextConditioner] = None,
               meta: Optional[dict] = None) -> None:
        """The loadable outputs of one checkpoint (module docstring), from the EMA weights (UNet; ``text``: the
        EMA encoders when they are trained)."""
        unet = ema.unet
        if self.lora:
            save_kohya_lora(unet, ckpt / 'lora.safetensors', self.lora['alpha'], {'step': step})
            if not self.lora.get('save_merged'):
                return
            unet = merge_lora(copy.deepcopy(unet))
        pipe = self.pipeline(SDXLUNetInner(unet, self.factor), text)
        if self.save_single:
            save_single_file(pipe, ckpt / 'sdxl.safetensors')
        if self.save_diffusers:
            save_pretrained(pipe, ckpt / 'diffusers')


class LiveText:
    """Prompts → {'context', 'pooled'} through (trained) encoders with grad: CachedText's interface, no memo."""

    def __init__(self, cond):
        self.cond = cond

    def __call__(self, prompts: Sequence[str], device) -> dict:
        return {k: v.to(device) for k, v in self.cond(list(prompts)).items()}


def cache_sdxl_latents(parts: SDXLTraining, dataset, out_dir: Path, batch_size: int = 8, seed: int = 0,
                       device='cpu') -> Path:
    """Encode an image dataset through the model's VAE (float32, raw latents) per bucket resolution into a
    latent cache with Welford statistics; an existing complete cache (stats.safetensors written last) is
    reused, so an interrupted run resumes by re-encoding only what is missing as a whole."""
    from .data.latents import STATS_FILE, cache_latents
    if (Path(out_dir) / STATS_FILE).is_file():
        return Path(out_dir)
    vae = parts.vae.to(device)

    def encode(images: Tensor) -> Tensor:
        p = next(vae.parameters())
        return vae.encode(images.to(p.device, p.dtype)).latent_dist.mode().float()
    cache_latents(dataset, encode, out_dir, batch_size=batch_size, seed=seed)
    return Path(out_dir)


def sdxl_dataset(parts: SDXLTraining, dataset_config: dict, dataset, out_dir: Path, seed: int,
                 device='cpu'):
    """dataset.cache_latents: replace an image dataset by its latent cache (raw latents, read unnormalised)."""
    from .data.latents import LatentCacheDataset
    if dataset_config.get('cache_latents') and not isinstance(dataset, LatentCacheDataset):
        cache_dir = Path(dataset_config.get('cache_dir') or Path(out_dir) / CACHE_SUBDIR)
        cache_sdxl_latents(parts, dataset, cache_dir, seed=seed, device=device)
        dataset = LatentCacheDataset(cache_dir, normalize=False)
    elif isinstance(dataset, LatentCacheDataset):
        dataset.normalize = False                # SDXLTraining.prepare normalises with model.latent_stats
    parts.use_cache_stats(dataset)
    return dataset
