"""Optimizer, LR schedule and EMA schedule of a config, built from torch's and k-diffusion's pieces."""

from typing import Sequence

import torch
from k_diffusion import utils as k_utils
from torch import nn, optim


class _NoVerbose(optim.lr_scheduler._LRScheduler):
    """k-diffusion's LR schedulers pass ``verbose`` positionally, which torch ≥ 2.x no longer accepts."""

    def __init__(self, optimizer, last_epoch=-1, verbose=None):
        super().__init__(optimizer, last_epoch)


def _compat(cls):
    return type(cls.__name__, (cls, _NoVerbose), {})


def build_optimizer(opt_config: dict, model: nn.Module, extra_groups: Sequence[dict] = ()) -> optim.Optimizer:
    """AdamW or SGD as k-diffusion's train.py builds them (its param_groups when the model has them);
    ``extra_groups``: further param groups after the model's (e.g. SDXL text encoders with their own lr)."""
    lr = opt_config['lr']
    params = (model.param_groups(lr) if hasattr(model, 'param_groups')
              else [p for p in model.parameters() if p.requires_grad])   # LoRA: the adapter only
    if extra_groups:
        params = (params if params and isinstance(params[0], dict) else [{'params': params}]) + list(extra_groups)
    if opt_config['type'] == 'adamw8bit':                                 # optional extra: bitsandbytes
        import bitsandbytes as bnb
        return bnb.optim.AdamW8bit(params, lr=lr, betas=tuple(map(float, opt_config['betas'])), eps=opt_config['eps'],
                                   weight_decay=opt_config['weight_decay'])
    if opt_config['type'] == 'adamw':
        return optim.AdamW(params, lr=lr, betas=tuple(map(float, opt_config['betas'])), eps=opt_config['eps'],
                           weight_decay=opt_config['weight_decay'])
    if opt_config['type'] == 'sgd':
        return optim.SGD(params, lr=lr, momentum=opt_config.get('momentum', 0.),
                         nesterov=opt_config.get('nesterov', False), weight_decay=opt_config['weight_decay'])
    raise ValueError(f"unknown optimizer type {opt_config['type']!r}; expected 'adamw', 'adamw8bit' or 'sgd'")


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


class EMAUpdate:
    """k-diffusion's ``utils.ema_update`` (lerp each parameter toward the model's by 1 − decay, copy the buffers)
    with the tensor lists gathered once and one foreach call: the same per-tensor lerp, without walking both
    module trees every step (on a small UNet that walk cost as much as the update). Frozen parameters
    (LoRA's base) are skipped: they equal their copy from the start and lerp would keep them so."""

    def __init__(self, model: nn.Module, averaged: nn.Module):
        mp, ap = dict(model.named_parameters()), dict(averaged.named_parameters())
        mb, ab = dict(model.named_buffers()), dict(averaged.named_buffers())
        if mp.keys() != ap.keys() or mb.keys() != ab.keys():
            raise ValueError('EMA model does not match the model')
        names = [n for n, p in mp.items() if p.requires_grad]
        self.params, self.averaged = [mp[n] for n in names], [ap[n] for n in names]
        self.buffers, self.averaged_buffers = list(mb.values()), [ab[n] for n in mb]

    @torch.no_grad()
    def __call__(self, decay: float) -> None:
        if self.params:
            torch._foreach_lerp_(self.averaged, self.params, 1 - decay)
        for a, b in zip(self.averaged_buffers, self.buffers):
            a.copy_(b)
