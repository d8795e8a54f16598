"""Training loop for v-prediction ZTSNR models (report §2.2, §4; k-diffusion's train.py conventions).

``kdiff-ztsnr train --config cfg.json [--resume DIR]``. The config is JSON merged over ``DEFAULTS`` and then
over k-diffusion's own defaults (``k_diffusion.config.load_config``), with k-diffusion's sections ``model``,
``dataset``, ``optimizer``, ``lr_sched``, ``ema_sched`` plus ``text`` and ``training`` (see DEFAULTS).

Per optimizer step and rank: ``grad_accum_steps`` micro-batches of ``batch_size`` from the §4.1.2 bucket
sampler (this rank's shard); t uniform over all T timesteps including T−1 (σ = ∞); per-sample v-MSE ×
MinSNR-γ on the rescaled SNR × tag weight (§4.3); the prompt (tags joined by ", ") dropped to "" with
probability ``cond_dropout_rate`` for CFG. Effective batch = batch_size × grad_accum_steps × world size.

Determinism: the data order is a pure function of (seed, epoch) (BucketSampler), crops of (seed, epoch,
index), timesteps/noise/prompt dropout of (seed, rank, step, micro-batch); the checkpoint stores the
sampler position and the global RNGs (for dropout layers), so ``--resume`` continues bit-exactly.

Checkpoint ``out_dir/checkpoint-NNNNNNNN/``: ``model.safetensors`` and ``ema.safetensors`` (the inner
network; metadata ``config`` JSON and ``step``, readable by ``k_diffusion.config.load_config``),
``text.safetensors`` (the frozen random text encoders of text.type 'clip'), ``state.pt`` (optimizer, LR/EMA schedulers, step) and
``rank-R.pt`` (bucket sampler and python/numpy/torch RNG states of rank R). The directory is written under a
temporary name and os.replace'd; ``out_dir/latest`` names the newest.
"""

import argparse
import copy
import json
import os
import random
import shutil
import time
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import numpy as np
import torch
from k_diffusion import config as k_config
from k_diffusion import utils as k_utils
from jsonmerge import merge
from safetensors.torch import load_file, save_file
from torch import Tensor, nn, optim

from . import data as kdata
from . import tags as ktags
from .buckets import BucketSampler, make_buckets
from .losses import sample_timesteps, v_loss
from .models import build_denoiser, build_model
from .synthetic import make_synthetic_dataset

DEFAULTS = {
    'model': {
        'type': 'image_v1',
        'sigma_data': 1.,
        'zero_terminal_snr': True,    # rescale SDXL's ᾱ to zero terminal SNR (σ[999] = ∞)
        'sigma_max': None,            # e.g. 20000.: clamp the table's top sigma (report A.2)
        'augment_wrapper': False,
        'cross_cond_dim': None,       # None: the text encoders' hidden size (Σ over encoders)
        'mapping_cond_dim': None,     # None: the pooled embedding size
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
    'optimizer': {'type': 'adamw', 'lr': 1e-4, 'betas': [0.9, 0.999], 'eps': 1e-8, 'weight_decay': 1e-4},
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
    },
}


def load_config(config: Union[str, os.PathLike, dict]) -> dict:
    """JSON file, ``.safetensors`` checkpoint or dict, merged over DEFAULTS then k-diffusion's defaults."""
    if not isinstance(config, dict):
        path = Path(config)
        config = (json.loads(k_utils.get_safetensors_metadata(path)['config']) if path.suffix == '.safetensors'
                  else json.loads(path.read_text()))
    with warnings.catch_warnings():   # jsonmerge uses jsonschema's deprecated RefResolver
        warnings.simplefilter('ignore', DeprecationWarning)
        return k_config.load_config(merge(DEFAULTS, config))


# ------------------------------------------------------------------------------------------------- text

def build_text_encoders(text_config: dict) -> list[nn.Module]:
    """Random CLIP text models from ``text.encoders`` (CLIPTextModelWithProjection when projection_dim is
    set), initialised from ``text.seed`` without touching the global RNG. No download."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
    from .text import BOS_ID, EOS_ID
    encoders = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(text_config['seed'])
        for ec in text_config['encoders']:
            ec = dict(ec)
            proj = ec.pop('projection_dim', None)
            cfg = CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, bos_token_id=BOS_ID,
                                 eos_token_id=EOS_ID, pad_token_id=EOS_ID, projection_dim=proj or 512, **ec)
            encoders.append((CLIPTextModelWithProjection if proj else CLIPTextModel)(cfg))
    return encoders


def build_text(text_config: dict):
    """The frozen TextConditioner of a ``text`` section (None for 'none')."""
    if text_config['type'] == 'none':
        return None
    from .text import TextConditioner
    kwargs = {k: text_config[k] for k in ('max_chunks', 'layer', 'final_norm')}
    if text_config['type'] == 'pretrained':
        cond = TextConditioner.from_pretrained(text_config['path'], **kwargs)
    elif text_config['type'] == 'clip':
        cond = TextConditioner(build_text_encoders(text_config), **kwargs)
    else:
        raise ValueError(f"unknown text type {text_config['type']!r}; expected 'clip', 'pretrained' or 'none'")
    return cond.eval().requires_grad_(False)


def text_dims(cond) -> tuple[int, int]:
    """(context width ΣD, pooled width P) of a TextConditioner, from one encoding of ''."""
    with torch.no_grad():
        out = cond([''])
    return out['context'].shape[-1], out['pooled'].shape[-1]


class CachedText:
    """Prompts → {'context', 'pooled'} with an LRU memo of up to ``cache`` prompts (the encoder is frozen);
    identical to the conditioner's own batch encoding (a batch whose prompts differ in chunk count, or with
    caching off, is encoded as one batch)."""

    def __init__(self, cond, cache: int = 1024):
        self.cond, self.cache, self.memo = cond, 1024 if cache is True else int(cache), OrderedDict()

    def _lookup(self, prompt: str) -> tuple[Tensor, Tensor]:
        if prompt in self.memo:
            self.memo.move_to_end(prompt)
        else:
            out = self.cond([prompt])
            self.memo[prompt] = (out['context'][0].cpu(), out['pooled'][0].cpu())
            while len(self.memo) > self.cache:
                self.memo.popitem(last=False)
        return self.memo[prompt]

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str], device) -> dict:
        items = [self._lookup(p) for p in prompts] if self.cache > 0 else []
        if not items or len({c.shape[0] for c, _ in items}) > 1:
            return {k: v.to(device) for k, v in self.cond(list(prompts)).items()}
        return {'context': torch.stack([c for c, _ in items]).to(device),
                'pooled': torch.stack([q for _, q in items]).to(device)}


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


# ------------------------------------------------------------------------------------------------- data

def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (numpy SeedSequence), for per-step/per-item generators."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0]) >> 1


def build_dataset(dataset_config: dict, out_dir: Union[str, Path]):
    """ImageFolderDataset ('imagefolder', 'synthetic') or LatentCacheDataset ('latents')."""
    kind, location = dataset_config['type'], dataset_config.get('location')
    if kind == 'latents':
        return kdata.LatentCacheDataset(location, normalize=dataset_config['normalize'])
    if kind == 'synthetic':
        sc = dataset_config['synthetic']
        location = make_synthetic_dataset(location or Path(out_dir) / 'synthetic', sc['n'], sc['sizes'],
                                          sc['seed'], sc['solid_fraction'])
    elif kind != 'imagefolder':
        raise ValueError(f"unknown dataset type {kind!r}; expected 'imagefolder', 'synthetic' or 'latents'")
    buckets = None if dataset_config['buckets'] is None else make_buckets(**dataset_config['buckets'])
    return kdata.ImageFolderDataset(location, buckets, dataset_config['log_space'],
                                    dataset_config['max_ratio_error'])


def dataset_captions(dataset) -> list[list[str]]:
    if isinstance(dataset, kdata.LatentCacheDataset):
        return [e['tags'] for e in dataset.entries]
    return dataset.captions()


class BatchSource:
    """Endless batches from a BucketSampler over this rank's shard: {'x0' [B', C, H, W], 'prompts',
    'index' [B'], 'skipped'}. Unreadable images are dropped (B' ≤ B) and counted; an all-unreadable batch is
    replaced by the next one, so every rank always computes a loss."""

    def __init__(self, dataset, sampler: BucketSampler, seed: int, threads: int = 0):
        self.dataset, self.sampler, self.seed, self.threads = dataset, sampler, seed, threads
        self.n_skipped = 0
        self._it: Optional[Iterator] = None

    def _batches(self) -> Iterator:
        if len(self.sampler) == 0:
            raise ValueError(f'dataset too small: no batch of {self.sampler.batch_size} per rank '
                             f'({self.sampler.world_size} ranks)')
        while True:
            epoch = self.sampler.epoch
            for wh, indices in self.sampler.batches():
                yield epoch, wh, indices

    def _load_images(self, epoch: int, wh: tuple[int, int], indices: list[int]) -> dict:
        def load(i):
            g = torch.Generator().manual_seed(mix_seed(self.seed, epoch, i))
            return self.dataset.load(i, *wh, generator=g)
        if self.threads > 1:
            from concurrent.futures import ThreadPoolExecutor
            with ThreadPoolExecutor(self.threads) as ex:
                items = list(ex.map(load, indices))
        else:
            items = [load(i) for i in indices]
        b = kdata.collate_images(items)
        return {'x0': b['image'], 'tags': b['tags'], 'index': b['index'], 'skipped': b['skipped']}

    def _load_latents(self, epoch: int, indices: list[int]) -> dict:
        g = torch.Generator().manual_seed(mix_seed(self.seed, epoch, *indices))
        b = kdata.collate_latents([self.dataset[i] for i in indices], g)
        return {'x0': b['latent'].float(), 'tags': b['tags'], 'index': b['index'], 'skipped': 0}

    def next(self) -> dict:
        if self._it is None:
            self._it = self._batches()
        skipped = 0
        while True:
            epoch, wh, indices = next(self._it)
            b = (self._load_latents(epoch, indices) if isinstance(self.dataset, kdata.LatentCacheDataset)
                 else self._load_images(epoch, wh, indices))
            skipped += b['skipped']
            if len(b['x0']):
                break
        self.n_skipped += skipped
        b['prompts'] = [', '.join(t) for t in b.pop('tags')]
        return dict(b, skipped=skipped)

    def state_dict(self) -> dict:
        return {'sampler': self.sampler.state_dict(), 'n_skipped': self.n_skipped}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state['sampler'])
        self.n_skipped, self._it = state['n_skipped'], None


# --------------------------------------------------------------------------- optimizer and schedules

class _NoVerbose(optim.lr_scheduler._LRScheduler):
    """k-diffusion's LR schedulers pass ``verbose`` positionally, which torch ≥ 2.x no longer accepts."""

    def __init__(self, optimizer, last_epoch=-1, verbose=None):
        super().__init__(optimizer, last_epoch)


def _compat(cls):
    return type(cls.__name__, (cls, _NoVerbose), {})


def build_optimizer(opt_config: dict, model: nn.Module) -> optim.Optimizer:
    """AdamW or SGD as k-diffusion's train.py builds them (its param_groups when the model has them)."""
    lr = opt_config['lr']
    params = model.param_groups(lr) if hasattr(model, 'param_groups') else model.parameters()
    if opt_config['type'] == 'adamw':
        return optim.AdamW(params, lr=lr, betas=tuple(opt_config['betas']), eps=opt_config['eps'],
                           weight_decay=opt_config['weight_decay'])
    if opt_config['type'] == 'sgd':
        return optim.SGD(params, lr=lr, momentum=opt_config.get('momentum', 0.),
                         nesterov=opt_config.get('nesterov', False), weight_decay=opt_config['weight_decay'])
    raise ValueError(f"unknown optimizer type {opt_config['type']!r}; expected 'adamw' or 'sgd'")


def build_lr_sched(sched_config: dict, opt: optim.Optimizer):
    """k-diffusion's InverseLR / ExponentialLR / ConstantLRWithWarmup."""
    kind, warmup = sched_config['type'], sched_config.get('warmup', 0.)
    if kind == 'inverse':
        return _compat(k_utils.InverseLR)(opt, inv_gamma=sched_config['inv_gamma'], power=sched_config['power'],
                                          warmup=warmup, min_lr=sched_config.get('min_lr', 0.))
    if kind == 'exponential':
        return _compat(k_utils.ExponentialLR)(opt, num_steps=sched_config['num_steps'],
                                              decay=sched_config['decay'], warmup=warmup,
                                              min_lr=sched_config.get('min_lr', 0.))
    if kind == 'constant':
        return _compat(k_utils.ConstantLRWithWarmup)(opt, warmup=warmup)
    raise ValueError(f"unknown lr_sched type {kind!r}; expected 'inverse', 'exponential' or 'constant'")


def build_ema_sched(ema_config: dict) -> k_utils.EMAWarmup:
    """k-diffusion's EMAWarmup ('inverse'), or a fixed decay ('constant', key 'value')."""
    if ema_config['type'] == 'inverse':
        return k_utils.EMAWarmup(inv_gamma=ema_config.get('inv_gamma', 1.), power=ema_config['power'],
                                 min_value=ema_config.get('min_value', 0.), max_value=ema_config['max_value'],
                                 start_at=ema_config.get('start_at', 0))
    if ema_config['type'] == 'constant':
        return k_utils.EMAWarmup(min_value=ema_config['value'], max_value=ema_config['value'])
    raise ValueError(f"unknown ema_sched type {ema_config['type']!r}; expected 'inverse' or 'constant'")


# -------------------------------------------------------------------------------------- checkpoints

def _atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_name(f'.{path.name}.tmp{os.getpid()}')
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_weights(module: nn.Module, path: Path, metadata: dict) -> None:
    """A module's state dict as safetensors (contiguous CPU copies), string metadata, atomically."""
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}
    tmp = path.with_name(f'.{path.name}.tmp{os.getpid()}')
    save_file(tensors, str(tmp), metadata={k: str(v) for k, v in metadata.items()})
    os.replace(tmp, path)


def resolve_checkpoint(path: Union[str, os.PathLike]) -> Path:
    """A checkpoint directory, an exported model directory (weights only), or an out_dir whose ``latest``
    file names a checkpoint."""
    path = Path(path)
    if (path / 'state.pt').is_file() or (path / 'ema.safetensors').is_file():
        return path
    if (path / 'latest').is_file():
        return path / (path / 'latest').read_text().strip()
    raise FileNotFoundError(f'{path} is neither a checkpoint directory nor an out_dir with a latest checkpoint')


def rng_state() -> dict:
    state = {'python': random.getstate(), 'numpy': np.random.get_state(), 'torch': torch.get_rng_state()}
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state['python'])
    np.random.set_state(state['numpy'])
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def load_trained(path: Union[str, os.PathLike], ema: bool = True, device='cpu'):
    """(denoiser, text conditioner or None, config) from a checkpoint directory or out_dir, for sampling."""
    ckpt = resolve_checkpoint(path)
    config = load_config(ckpt / ('ema.safetensors' if ema else 'model.safetensors'))
    text = build_text(config['text'])
    if text is not None and (ckpt / 'text.safetensors').is_file():
        text.load_state_dict(load_file(str(ckpt / 'text.safetensors')))
    inner = build_model(config)
    inner.load_state_dict(load_file(str(ckpt / ('ema.safetensors' if ema else 'model.safetensors'))))
    model = build_denoiser(config, inner).eval().requires_grad_(False).to(device)
    return model, (None if text is None else text.to(device)), config


# ------------------------------------------------------------------------------------------- trainer

class Trainer:
    """One training run: ``Trainer(config).run()``, or ``train_step()`` one optimizer step at a time."""

    def __init__(self, config: Union[str, os.PathLike, dict], accelerator=None):
        import accelerate
        config = load_config(config)
        tc = config['training']
        self.accelerator = accelerator or accelerate.Accelerator(
            mixed_precision=tc['mixed_precision'], gradient_accumulation_steps=tc['grad_accum_steps'],
            cpu=tc['cpu'])
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = bool(tc['tf32'])
        if tc['threads']:
            torch.set_num_threads(tc['threads'])
        self.seed, self.out_dir, self.step = tc['seed'], Path(tc['out_dir']), 0
        self.rank, self.world_size = self.accelerator.process_index, self.accelerator.num_processes
        random.seed(self.seed)
        np.random.seed(self.seed % 2 ** 32)
        torch.manual_seed(self.seed)                  # model init: identical on every rank
        self.text = build_text(config['text'])
        self.config = resolve_text_dims(config, self.text)
        self.encode = None if self.text is None else CachedText(self.text.to(self.accelerator.device),
                                                                config['text']['cache'])
        self._setup_data()
        self._setup_model()

    def _setup_data(self) -> None:
        dc = self.config['dataset']
        with self.accelerator.main_process_first():   # the synthetic set is written once
            self.dataset = build_dataset(dc, self.out_dir)
        sampler = BucketSampler(self.dataset.bucket_idx, self.dataset.buckets, self.config['training']['batch_size'],
                                self.rank, self.world_size, self.seed)
        self.data = BatchSource(self.dataset, sampler, self.seed, dc['loader_threads'])
        tw = dc['tag_weights']
        self.tag_weights = None
        if tw is not None and tw is not False:
            tw = {} if tw is True else tw
            w = ktags.image_weights(dataset_captions(self.dataset), alpha=tw.get('alpha', 0.5),
                                    clip=tuple(tw.get('clip', (0.5, 2.0))))
            self.tag_weights = torch.as_tensor(w, dtype=torch.float32)

    def _setup_model(self) -> None:
        inner = build_model(self.config)
        self.inner_ema = copy.deepcopy(inner).eval().requires_grad_(False)
        opt = build_optimizer(self.config['optimizer'], inner)
        self.lr_sched = build_lr_sched(self.config['lr_sched'], opt)
        self.ema_sched = build_ema_sched(self.config['ema_sched'])
        self.inner, self.opt = self.accelerator.prepare(inner, opt)
        self.model = build_denoiser(self.config, self.inner).to(self.accelerator.device)
        self.inner_ema.to(self.accelerator.device)

    @property
    def unwrapped(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.inner)

    def micro_loss(self, batch: dict, micro: int) -> Tensor:
        """Σ weighted per-sample losses / batch_size of one micro-batch (t, noise, dropout seeded per step)."""
        tc, dc = self.config['training'], self.config['dataset']
        g = torch.Generator().manual_seed(mix_seed(self.seed, self.rank, self.step, micro))
        x0 = batch['x0']
        t = sample_timesteps(len(x0), len(self.model.sigmas), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        drop = torch.rand(len(x0), generator=g) < dc['cond_dropout_rate']
        device = self.accelerator.device
        cond = {}
        if self.encode is not None:
            cond = self.encode(['' if d else p for d, p in zip(drop.tolist(), batch['prompts'])], device)
        weight = None if self.tag_weights is None else self.tag_weights[batch['index']].to(device)
        losses = v_loss(self.model, x0.to(device), noise.to(device), t.to(device), tc['min_snr_gamma'],
                        tc['terminal_weight'], weight, **cond)
        return losses.sum() / tc['batch_size']

    def train_step(self) -> dict:
        """One optimizer step over grad_accum_steps micro-batches; returns this rank's metrics."""
        acc, tc = self.accelerator, self.config['training']
        self.inner.train()
        self.opt.zero_grad()
        losses, indices, skipped = [], [], 0
        for micro in range(tc['grad_accum_steps']):
            batch = self.data.next()
            indices += batch['index'].tolist()
            skipped += batch['skipped']
            with acc.accumulate(self.inner):
                loss = self.micro_loss(batch, micro)
                acc.backward(loss)
                if acc.sync_gradients and tc['grad_clip']:
                    acc.clip_grad_norm_(self.inner.parameters(), tc['grad_clip'])
                self.opt.step()
            losses.append(loss.detach())
        assert acc.sync_gradients, 'gradient accumulation out of step with grad_accum_steps'
        lr = self.lr_sched.get_last_lr()[0]
        self.lr_sched.step()
        ema_decay = self.ema_sched.get_value()
        k_utils.ema_update(self.unwrapped, self.inner_ema, ema_decay)
        self.ema_sched.step()
        self.step += 1
        loss = acc.reduce(torch.stack(losses).mean(), 'mean').item()
        return {'step': self.step, 'loss': loss, 'lr': lr, 'ema_decay': ema_decay, 'skipped': skipped,
                'indices': indices}

    def save(self) -> Path:
        """Write checkpoint-{step} (all ranks call this; rank 0 writes the shared files)."""
        acc = self.accelerator
        final = self.out_dir / f'checkpoint-{self.step:08d}'
        tmp = final.with_name(final.name + '.tmp')
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        _atomic_torch_save({'data': self.data.state_dict(), 'rng': rng_state()}, tmp / f'rank-{self.rank}.pt')
        acc.wait_for_everyone()
        if acc.is_main_process:
            meta = {'config': json.dumps(self.config), 'step': self.step}
            save_weights(self.unwrapped, tmp / 'model.safetensors', meta)
            save_weights(self.inner_ema, tmp / 'ema.safetensors', meta)
            if self.config['text']['type'] == 'clip':      # random encoders: keep them with the model
                save_weights(self.text, tmp / 'text.safetensors', meta)
            _atomic_torch_save({'step': self.step, 'opt': self.opt.state_dict(), 'lr_sched': self.lr_sched.state_dict(),
                                'ema_sched': self.ema_sched.state_dict(), 'world_size': self.world_size},
                               tmp / 'state.pt')
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            latest = self.out_dir / 'latest'
            (self.out_dir / '.latest.tmp').write_text(final.name)
            os.replace(self.out_dir / '.latest.tmp', latest)
            self._prune_checkpoints()
        acc.wait_for_everyone()
        return final

    def _prune_checkpoints(self) -> None:
        keep = self.config['training']['keep_checkpoints']
        if keep:
            for old in sorted(self.out_dir.glob('checkpoint-[0-9]*[0-9]'))[:-keep]:
                shutil.rmtree(old, ignore_errors=True)

    def load(self, path: Union[str, os.PathLike]) -> Path:
        """Restore everything from a checkpoint (or an out_dir's latest) to continue exactly."""
        ckpt = resolve_checkpoint(path)
        state = torch.load(ckpt / 'state.pt', map_location='cpu', weights_only=False)   # our own files
        if state['world_size'] != self.world_size:
            raise ValueError(f"checkpoint was written by {state['world_size']} ranks, this run has {self.world_size}")
        self.unwrapped.load_state_dict(load_file(str(ckpt / 'model.safetensors')))
        self.inner_ema.load_state_dict(load_file(str(ckpt / 'ema.safetensors')))
        if self.text is not None and (ckpt / 'text.safetensors').is_file():
            self.text.load_state_dict(load_file(str(ckpt / 'text.safetensors')))
            self.encode.memo.clear()
        self.opt.load_state_dict(state['opt'])
        self.lr_sched.load_state_dict(state['lr_sched'])
        self.ema_sched.load_state_dict(state['ema_sched'])
        self.step = state['step']
        mine = torch.load(ckpt / f'rank-{self.rank}.pt', map_location='cpu', weights_only=False)
        self.data.load_state_dict(mine['data'])
        set_rng_state(mine['rng'])
        return ckpt

    def log(self, metrics: dict, t0: float) -> None:
        """Rank 0: one metrics.jsonl line per step; stdout every log_every steps."""
        if not self.accelerator.is_main_process:
            return
        row = {k: v for k, v in metrics.items() if k != 'indices'}
        row['time'] = round(time.time() - t0, 3)
        with open(self.out_dir / 'metrics.jsonl', 'a') as f:
            f.write(json.dumps(row) + '\n')
        if self.step % self.config['training']['log_every'] == 0 or self.step == 1:
            print(f"step {self.step}, loss {row['loss']:.5f}, lr {row['lr']:.3g}, ema {row['ema_decay']:.4f}",
                  flush=True)

    def _trim_metrics(self) -> None:
        """Drop metrics.jsonl lines past the resumed step (a run that went on after its last checkpoint)."""
        path = self.out_dir / 'metrics.jsonl'
        if self.accelerator.is_main_process and path.is_file():
            rows = [r for r in path.read_text().splitlines() if r and json.loads(r)['step'] <= self.step]
            path.write_text(''.join(r + '\n' for r in rows))

    def run(self, resume: Optional[Union[str, os.PathLike]] = None) -> 'Trainer':
        """Train to training.steps, checkpointing every checkpoint_every steps and at the end."""
        tc = self.config['training']
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if resume is not None:
            ckpt = self.load(resume)
            self.accelerator.print(f'resumed from {ckpt} at step {self.step}')
        self._trim_metrics()
        if self.accelerator.is_main_process:
            (self.out_dir / 'config.json').write_text(json.dumps(self.config, indent=2))
        t0 = time.time()
        saved = self.step if resume is not None else -1
        while self.step < tc['steps']:
            self.log(self.train_step(), t0)
            if self.step % tc['checkpoint_every'] == 0:
                self.save()
                saved = self.step
        if saved != self.step:
            self.save()
        return self


# ---------------------------------------------------------------------------------------------- CLI

def add_train_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument('--config', type=str, default=None,
                        help='JSON config (merged over the defaults); optional with --resume')
    parser.add_argument('--resume', type=str, default=None,
                        help='checkpoint directory, or an out_dir (continues from its latest checkpoint)')
    parser.add_argument('--steps', type=int, default=None, help='override training.steps')
    parser.add_argument('--out-dir', type=str, default=None, help='override training.out_dir')
    return parser


def train_from_args(args: argparse.Namespace) -> Trainer:
    if args.config is None and args.resume is None:
        raise SystemExit('kdiff-ztsnr train: give --config, --resume, or both')
    config = load_config(args.config if args.config is not None
                         else resolve_checkpoint(args.resume) / 'model.safetensors')
    if args.steps is not None:
        config['training']['steps'] = args.steps
    if args.out_dir is not None:
        config['training']['out_dir'] = args.out_dir
    return Trainer(config).run(resume=args.resume)


def train_main(argv: Optional[list[str]] = None) -> int:
    """``kdiff-ztsnr train --config cfg.json [--resume DIR] [--steps N] [--out-dir DIR]``."""
    parser = add_train_args(argparse.ArgumentParser(prog='kdiff-ztsnr train', description=__doc__.splitlines()[0]))
    train_from_args(parser.parse_args(argv))
    return 0


main = train_main

if __name__ == '__main__':
    raise SystemExit(train_main())
