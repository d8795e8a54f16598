"""Training loop for v-prediction ZTSNR models (report §2.2, §4; k-diffusion's train.py conventions).

Per optimizer step and rank: ``grad_accum_steps`` micro-batches of ``batch_size`` from the §4.1.2 bucket
sampler (this rank's shard); t uniform over all T timesteps including T−1 (σ = ∞); per-sample v-MSE ×
MinSNR-γ on the rescaled SNR × tag weight (§4.3); the prompt (tags joined by ", ") dropped to "" with
probability ``cond_dropout_rate`` for CFG. Effective batch = batch_size × grad_accum_steps × world size.

Determinism: the data order is a pure function of (seed, epoch) (BucketSampler), crops of (seed, epoch,
index), timesteps/noise/prompt dropout of (seed, rank, step, micro-batch); the checkpoint stores the
sampler position and the global RNGs (for dropout layers), so ``--resume`` continues bit-exactly.

Checkpoint ``out_dir/checkpoint-NNNNNNNN/``: ``model.safetensors`` and ``ema.safetensors`` (the inner
network; metadata ``config`` JSON and ``step``, readable by ``k_diffusion.config.load_config``),
``text.safetensors`` (the frozen random text encoders of text.type 'clip'; or the SDXL encoders when
``training.train_text_encoders``, with ``text_ema.safetensors``), ``state.pt`` (optimizer, LR/EMA schedulers, step) and
``rank-R.pt`` (bucket sampler and python/numpy/torch RNG states of rank R), both read with
``weights_only=True``. The directory is written under a temporary name and os.replace'd; ``out_dir/latest``
names the newest. ``runs`` holds the out_dir rules (no run over a previous one, pruning by step, resume checks).
"""

import copy
import json
import math
import os
import random
import shutil
import time
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .. import progress
from ..errors import quote
from ..files import load_weights, save_weights
from ..losses import sample_timesteps, v_loss
from ..models.registry import CUSTOM_CODE_HINT, build_denoiser
from ..models.trained import read_metadata, resolve_checkpoint
from ..text import CachedText
from . import runs
from .checkpoint import atomic_torch_save, rng_state, safe_torch_load, set_rng_state
from .config import load_training_config, resolve_text_dims
from .data import tags as ktags
from .data.buckets import BucketSampler
from .data.source import BatchSource, build_dataset, dataset_captions, describe_dataset, mix_seed
from .optim import EMAUpdate, build_ema_sched, build_lr_sched, build_optimizer
from .pixel import PixelTraining
from .preview import SigmaBucketLoss


def model_family(config: dict):
    """What the trainer asks of a model family (`pixel.PixelTraining`'s interface): the SDXL family for
    model.type 'sdxl' (its VAE and CLIP encoders frozen, sdxl.py), else the pixel-space one."""
    if config['model']['type'] == 'sdxl':
        from .sdxl import SDXLTraining
        return SDXLTraining(config)
    return PixelTraining(config)

class Trainer:
    """One training run: ``Trainer(config).run()``, or ``train_step()`` one optimizer step at a time."""

    def __init__(self, config: Union[str, os.PathLike, dict], accelerator=None, trust_code: bool = False):
        import accelerate
        config = load_training_config(config)
        if config['model']['type'] == 'module' and not trust_code:      # before any work
            raise ValueError(f'refused model.target {str(config["model"].get("target"))[:120]!r}: '
                             f'{CUSTOM_CODE_HINT}')
        self.trust_code = trust_code
        tc = config['training']
        if not tc['out_dir']:
            raise ValueError('training.out_dir is not set: give it in the config')
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
        self.text_ema = None
        self.family = model_family(config).to(self.accelerator.device)
        self.text = self.family.text
        self.config = resolve_text_dims(config, self.text)
        self.train_text = self.family.train_text          # encoders trained: LiveText (below)
        self.encode = None if self.text is None or self.train_text else CachedText(
            self.text.to(self.accelerator.device), config['text']['cache'])
        self.sigma_loss = SigmaBucketLoss()
        self._setup_data()
        self._setup_model()

    def _setup_data(self) -> None:
        dc = self.config['dataset']
        with self.accelerator.main_process_first():   # the synthetic set is written once
            self.dataset = build_dataset(dc, self.out_dir)
        self.accelerator.print(describe_dataset(self.dataset, dc.get('location') or self.out_dir / 'synthetic'))
        with self.accelerator.main_process_first():   # a latent cache is written once
            self.dataset = self.family.prepare_dataset(dc, self.dataset, self.out_dir, self.seed,
                                                       self.accelerator.device)
        sampler = BucketSampler(self.dataset.bucket_idx, self.dataset.buckets, self.config['training']['batch_size'],
                                self.rank, self.world_size, self.seed)
        self.data = BatchSource(self.dataset, sampler, self.seed, dc['loader_threads'])
        used = self.dataset.bucket_idx[self.dataset.bucket_idx >= 0]
        wh = np.asarray(self.dataset.buckets)[used]             # the canvas the model learns (§2.3 rule)
        self.base_side = int(round(float(np.sqrt((wh[:, 0] * wh[:, 1]).mean())))) if len(wh) else 0
        tw = dc['tag_weights']
        self.tag_weights = None
        if tw is not None and tw is not False:
            tw = {} if tw is True else tw
            w = ktags.image_weights(dataset_captions(self.dataset), alpha=tw.get('alpha', 0.5),
                                    clip=tuple(tw.get('clip', (0.5, 2.0))))
            self.tag_weights = torch.as_tensor(w, dtype=torch.float32)

    def _setup_model(self) -> None:
        inner = self.family.build_inner(self.config, self.trust_code)
        self.inner_ema = copy.deepcopy(inner).eval().requires_grad_(False)
        groups = self.family.text_groups(self.config['optimizer'])
        opt = build_optimizer(self.config['optimizer'], inner, groups)
        self.lr_sched = build_lr_sched(self.config['lr_sched'], opt)
        self.ema_sched = build_ema_sched(self.config['ema_sched'])
        if self.train_text:
            from .sdxl import LiveText
            self.text_ema = copy.deepcopy(self.text).eval().requires_grad_(False)
            self.inner, text_model, self.opt = self.accelerator.prepare(inner, self.text, opt)
            self.trained = [self.inner, text_model]
            self.encode = LiveText(text_model)         # every batch with grad, no memo
            self.text_ema_update = EMAUpdate(self.text, self.text_ema)
        else:
            self.inner, self.opt = self.accelerator.prepare(inner, opt)
            self.trained = [self.inner]
        self.model = build_denoiser(self.config, self.inner).to(self.accelerator.device)
        self.inner_ema.to(self.accelerator.device)
        self.ema_update = EMAUpdate(self.unwrapped, self.inner_ema)

    @property
    def unwrapped(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.inner)

    def micro_loss(self, batch: dict, micro: int) -> Tensor:
        """Σ weighted per-sample losses / batch_size of one micro-batch (t, noise, dropout seeded per step)."""
        tc, dc = self.config['training'], self.config['dataset']
        g = torch.Generator().manual_seed(mix_seed(self.seed, self.rank, self.step, micro))
        x0, extra = self.family.prepare(batch, self.accelerator.device)
        t = sample_timesteps(len(x0), len(self.model.sigmas), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        drop = torch.rand(len(x0), generator=g) < dc['cond_dropout_rate']
        device = self.accelerator.device
        cond = {}
        if self.encode is not None:
            cond = self.encode(['' if d else p for d, p in zip(drop.tolist(), batch['prompts'])], device)
        weight = None if self.tag_weights is None else self.tag_weights[batch['index']].to(device)
        losses = v_loss(self.model, x0.to(device), noise.to(device), t.to(device), tc['min_snr_gamma'],
                        tc['terminal_weight'], weight, **cond, **extra)
        self.sigma_loss.add(self.model.t_to_sigma(t.to(device)), losses)
        return losses.sum() / tc['batch_size']

    def train_step(self) -> dict:
        """One optimizer step over grad_accum_steps micro-batches; returns this rank's metrics."""
        acc, tc = self.accelerator, self.config['training']
        for m in self.trained:
            m.train()
        self.opt.zero_grad()
        self.sigma_loss.reset()
        losses, indices, skipped = [], [], 0
        for micro in range(tc['grad_accum_steps']):
            batch = self.data.next()
            indices += batch['index'].tolist()
            skipped += batch['skipped']
            with acc.accumulate(*self.trained):
                loss = self.micro_loss(batch, micro)
                acc.backward(loss)
                if acc.sync_gradients and tc['grad_clip']:
                    acc.clip_grad_norm_([p for m in self.trained for p in m.parameters()], tc['grad_clip'])
                self.opt.step()
            losses.append(loss.detach())
        assert acc.sync_gradients, 'gradient accumulation out of step with grad_accum_steps'
        lr = self.lr_sched.get_last_lr()[0]
        self.lr_sched.step()
        ema_decay = self.ema_sched.get_value()
        self.ema_update(ema_decay)                     # = k_diffusion.utils.ema_update, foreach
        if self.text_ema is not None:
            self.text_ema_update(ema_decay)            # trained encoders: the same EMA as the UNet
        self.ema_sched.step()
        self.step += 1
        loss = acc.reduce(torch.stack(losses).mean(), 'mean').item()
        return {'step': self.step, 'loss': loss, 'lr': lr, 'ema_decay': ema_decay, 'skipped': skipped,
                'loss_by_sigma': self.sigma_loss.pop(), 'indices': indices}

    def save(self) -> Path:
        """Write checkpoint-{step} (all ranks call this; rank 0 writes the shared files)."""
        acc = self.accelerator
        final = self.out_dir / f'checkpoint-{self.step:08d}'
        tmp = final.with_name(final.name + '.tmp')
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        atomic_torch_save({'data': self.data.state_dict(), 'rng': rng_state()}, tmp / f'rank-{self.rank}.pt')
        acc.wait_for_everyone()
        if acc.is_main_process:
            meta = {'config': json.dumps(self.config), 'step': self.step, 'base_side': self.base_side}
            save_weights(self.unwrapped, tmp / 'model.safetensors', meta)
            save_weights(self.inner_ema, tmp / 'ema.safetensors', meta)
            if self.text_ema is not None:                  # trained SDXL encoders: live and EMA
                save_weights(self.text, tmp / 'text.safetensors', meta)
                save_weights(self.text_ema, tmp / 'text_ema.safetensors', meta)
            self.family.export(tmp, self.inner_ema, self.step, self.text_ema, meta)   # the family's own files
            atomic_torch_save({'step': self.step, 'opt': self.opt.state_dict(), 'lr_sched': self.lr_sched.state_dict(),
                                'ema_sched': self.ema_sched.state_dict(), 'world_size': self.world_size},
                               tmp / 'state.pt')
            old = final.with_name(final.name + '.old')
            if final.exists():                                  # re-saving a step: the old one stays until
                shutil.rmtree(old, ignore_errors=True)          # the new one is in place
                os.replace(final, old)
            os.replace(tmp, final)
            runs.atomic_write(self.out_dir / 'latest', lambda t: Path(t).write_text(final.name))
            shutil.rmtree(old, ignore_errors=True)
            runs.prune(self.out_dir, self.config['training']['keep_checkpoints'], self.step)
        acc.wait_for_everyone()
        return final

    def preview(self) -> Optional[Path]:
        """Rank 0: out_dir/previews/step-NNNNNNNN.png sampled from σ = ∞ with the EMA weights (preview.py)."""
        if not self.family.previews or not self.accelerator.is_main_process:
            return None
        from .preview import preview_grid
        used = self.dataset.bucket_idx[self.dataset.bucket_idx >= 0]
        wh = np.asarray(self.dataset.buckets)[np.bincount(used).argmax()]     # the most common bucket
        return preview_grid(self.family.pipeline(self.inner_ema, self.text_ema), self.config['training'].get('preview'),
                            (int(wh[0]), int(wh[1])), self.out_dir / 'previews' / f'step-{self.step:08d}.png',
                            self.step)

    def load(self, path: Union[str, os.PathLike]) -> Path:
        """Restore everything from a checkpoint (or an out_dir's latest) to continue exactly."""
        ckpt = resolve_checkpoint(path)
        runs.check_resume_config(read_metadata(ckpt / 'model.safetensors')['config'], self.config, ckpt)
        state = safe_torch_load(ckpt / 'state.pt')
        if state['world_size'] != self.world_size:
            raise ValueError(f"checkpoint was written by {state['world_size']} ranks, this run has {self.world_size}")
        load_weights(self.unwrapped, ckpt / 'model.safetensors')
        load_weights(self.inner_ema, ckpt / 'ema.safetensors')
        if self.text is not None and (ckpt / 'text.safetensors').is_file():
            load_weights(self.text, ckpt / 'text.safetensors')
            if hasattr(self.encode, 'memo'):
                self.encode.memo.clear()
        if self.text_ema is not None:
            load_weights(self.text_ema, ckpt / 'text_ema.safetensors')
        self.opt.load_state_dict(state['opt'])
        self.lr_sched.load_state_dict(state['lr_sched'])
        self.ema_sched.load_state_dict(state['ema_sched'])
        self.step = state['step']
        mine = safe_torch_load(ckpt / f'rank-{self.rank}.pt')
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
            tqdm.write(f"step {self.step}, loss {row['loss']:.5f}, lr {row['lr']:.3g}, ema {row['ema_decay']:.4f}")

    def check_loss(self, loss: float) -> None:
        """Stop at a non-finite loss (every rank sees the reduced value): nothing is saved, the last good
        checkpoint stays the out_dir's latest."""
        if math.isfinite(loss):
            return
        found = runs.checkpoints(self.out_dir)
        kept = (f'the last good checkpoint {quote(found[max(found)])} is kept ({{resume={quote(self.out_dir)}}} '
                f'continues from it)'
                if found else 'no checkpoint was written before it')
        raise runs.NonFiniteLoss(f'training stopped at step {self.step}: the loss is {loss} (not finite); nothing '
                                 f'was saved for this step and {kept}; lower optimizer.lr, set training.grad_clip, '
                                 f'or check model.sigma_data and the data')

    def run(self, resume: Optional[Union[str, os.PathLike]] = None, overwrite: bool = False) -> 'Trainer':
        """Train to training.steps, checkpointing every checkpoint_every steps and at the end.

        An out_dir holding a previous run is refused unless resuming (or overwrite=True: it is cleared)."""
        tc = self.config['training']
        runs.check_out_dir(self.out_dir, resume, overwrite)
        self.accelerator.wait_for_everyone()                   # every rank checked before rank 0 writes
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if resume is not None:
            ckpt = self.load(resume)
            self.accelerator.print(f'resumed from {ckpt} at step {self.step}')
        elif overwrite and self.accelerator.is_main_process:
            runs.clear_run(self.out_dir)
        if self.accelerator.is_main_process:
            runs.trim_metrics(self.out_dir / 'metrics.jsonl', self.step)
        if self.accelerator.is_main_process:
            (self.out_dir / 'config.json').write_text(json.dumps(self.config, indent=2))
        t0 = time.time()
        saved = self.step if resume is not None else -1
        # loss, it/s and ETA on rank 0; a line per checkpoint with its path
        bar = progress.bar(total=tc['steps'], desc='training', unit='step',
                           disable=not self.accelerator.is_main_process)
        bar.update(self.step)
        while self.step < tc['steps']:
            metrics = self.train_step()
            self.check_loss(metrics['loss'])
            self.log(metrics, t0)
            bar.set_postfix_str(f"loss {metrics['loss']:.4f}", refresh=False)
            bar.update(1)
            if tc.get('preview_every') and self.step % tc['preview_every'] == 0:
                self.preview()
            if self.step % tc['checkpoint_every'] == 0:
                self.checkpoint()
                saved = self.step
        bar.close()
        if saved != self.step:
            self.checkpoint()
        return self

    def checkpoint(self) -> Path:
        """save(), then one status line naming the checkpoint (rank 0)."""
        path = self.save()
        if self.accelerator.is_main_process:
            progress.status(f'step {self.step}: checkpoint saved to {path}')
        return path


