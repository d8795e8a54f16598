"""Guidance as model → model wrappers with the denoiser signature ``model(x, sigma, **extra) -> denoised``.

Classifier-free guidance runs cond and uncond in one batched forward. CFG rescale (Lin et al. 2305.08891
§3.4) acts on the v prediction, recovered from the denoised image with the ∞-safe scalings, so it is exact at
σ = ∞ (where v = −D/σ_data) and at σ = 20000. Dynamic thresholding is Imagen's (Saharia et al. 2022).
"""

import math
from typing import Any, Optional

import torch
from torch import Tensor, nn

from .denoisers import v_scalings


def cat_cond(a: Any, b: Any) -> Any:
    """Concatenate two conditionings along the batch: tensors, dicts of them, or lists of them."""
    if torch.is_tensor(a):
        return torch.cat([a, b])
    if isinstance(a, dict):
        if not isinstance(b, dict) or a.keys() != b.keys():
            raise ValueError(f'cond and uncond must have the same keys, got {sorted(a)} and '
                             f'{sorted(b) if isinstance(b, dict) else type(b).__name__}')
        return {k: cat_cond(a[k], b[k]) for k in a}
    if isinstance(a, (list, tuple)):
        return type(a)(cat_cond(x, y) for x, y in zip(a, b))
    raise TypeError(f'cannot batch a conditioning of type {type(a).__name__}')


def v_from_denoised(x: Tensor, denoised: Tensor, sigma: Tensor, sigma_data: float = 1.) -> Tensor:
    """Invert eq. 1: F = (D − c_skip·x)/c_out (finite for σ > 0, −D/σ_data at σ = ∞)."""
    c_skip, c_out, _ = [c.view(-1, *[1] * (x.ndim - 1)) for c in v_scalings(sigma, sigma_data)]
    return (denoised - c_skip * x) / c_out


def denoised_from_v(x: Tensor, v: Tensor, sigma: Tensor, sigma_data: float = 1.) -> Tensor:
    """Eq. 1: D = c_skip·x + c_out·F."""
    c_skip, c_out, _ = [c.view(-1, *[1] * (x.ndim - 1)) for c in v_scalings(sigma, sigma_data)]
    return c_skip * x + c_out * v


def rescale_cfg(v_cfg: Tensor, v_cond: Tensor, phi: float) -> Tensor:
    """Lin et al. eq. 15-16: match the per-sample std of the guided v to the conditional v, blend by φ."""
    dims = list(range(1, v_cfg.ndim))
    ratio = v_cond.std(dim=dims, keepdim=True) / v_cfg.std(dim=dims, keepdim=True).clamp(min=1e-12)
    return phi * v_cfg * ratio + (1 - phi) * v_cfg


def dynamic_threshold(denoised: Tensor, percentile: float = 0.995, threshold: float = 1.) -> Tensor:
    """Imagen's dynamic thresholding: s = max(quantile(|x̂₀|, p), threshold); clamp to [−s, s], divide by s."""
    flat = denoised.flatten(1).abs().float()
    s = torch.quantile(flat, percentile, dim=1).clamp(min=threshold).view(-1, *[1] * (denoised.ndim - 1))
    return (denoised.clamp(-s, s) / s * threshold).to(denoised.dtype)


class CFGDenoiser(nn.Module):
    """Classifier-free guidance around a denoiser, one batched forward per step.

    Call as model(x, sigma, cond=..., uncond=..., **shared_extra); cond/uncond are passed to the inner
    denoiser under ``cond_key`` (a tensor, or a dict/list of tensors, batched together).
    """

    def __init__(self,
                 inner_model: nn.Module,            # denoiser: (x, sigma, **extra) -> denoised
                 cond_scale: float = 5.,            # guidance scale s: D_u + s·(D_c − D_u)
                 rescale: float = 0.,               # CFG rescale φ (Lin et al. §3.4); 0 disables
                 sigma_range: tuple[float, float] = (0., float('inf')),  # guide only for σ in [lo, hi]
                 threshold: Optional[float] = None,  # dynamic-thresholding percentile, e.g. 0.995
                 cond_key: Optional[str] = 'cond',  # None: cond/uncond are dicts of keyword arguments
                 sigma_data: Optional[float] = None):
        super().__init__()
        lo, hi = sigma_range
        checks = {'cond_scale': (cond_scale, math.isfinite(cond_scale), 'a finite number'),
                  'rescale': (rescale, 0 <= rescale <= 1, 'in [0, 1]'),
                  'sigma_range': (sigma_range, 0 <= lo <= hi, '(lo, hi) with 0 <= lo <= hi'),
                  'threshold': (threshold, threshold is None or 0 < threshold <= 1, 'in (0, 1] or None')}
        for name, (value, ok, valid) in checks.items():
            if not ok:
                raise ValueError(f'CFGDenoiser: {name} must be {valid}, got {value}')
        self.inner_model = inner_model
        self.cond_scale, self.rescale, self.sigma_range = cond_scale, rescale, sigma_range
        self.threshold, self.cond_key = threshold, cond_key
        self.sigma_data = getattr(inner_model, 'sigma_data', 1.) if sigma_data is None else sigma_data

    def as_kwargs(self, cond: Any) -> dict:
        """cond under cond_key, or (cond_key=None) cond itself as a dict of keyword arguments."""
        return dict(cond) if self.cond_key is None else {self.cond_key: cond}

    def guided(self, sigma: Tensor) -> bool:
        """Whether this step is guided; σ is read on the host (a device sync) only for a narrowed sigma_range."""
        lo, hi = self.sigma_range
        if self.cond_scale == 1.:
            return False
        if lo == 0. and math.isinf(hi):                 # every σ ≥ 0 is in range: no need to read σ
            return True
        return lo <= sigma.flatten()[0].item() <= hi

    def forward(self, x: Tensor, sigma: Tensor, cond: Any = None, uncond: Any = None, **extra) -> Tensor:
        if uncond is None or not self.guided(sigma):
            return self.inner_model(x, sigma, **self.as_kwargs(cond), **extra)
        b = x.shape[0]
        extra = {k: cat_cond(v, v) if torch.is_tensor(v) and v.shape[:1] == (b,) else v for k, v in extra.items()}
        both = self.inner_model(torch.cat([x, x]), torch.cat([sigma, sigma]),
                                **self.as_kwargs(cat_cond(cond, uncond)), **extra)
        d_cond, d_uncond = both.chunk(2)
        denoised = d_uncond + (d_cond - d_uncond) * self.cond_scale
        if self.rescale:
            v_cfg = v_from_denoised(x, denoised, sigma, self.sigma_data)
            v_cond = v_from_denoised(x, d_cond, sigma, self.sigma_data)
            denoised = denoised_from_v(x, rescale_cfg(v_cfg, v_cond, self.rescale), sigma, self.sigma_data)
        if self.threshold is not None:
            denoised = dynamic_threshold(denoised, self.threshold)
        return denoised.to(x.dtype)
