"""Text conditioners from a config's ``text`` section, and a prompt cache for training.

``type``: 'clip' (random CLIP encoders built from ``encoders`` and ``seed`` — the tiny models of the tests and
the embedded model), 'pretrained' (an SDXL diffusers folder's encoders, local files only) or 'none'.
"""

from collections import OrderedDict
from typing import Sequence

import torch
from torch import Tensor, nn

from .encode import TextConditioner
from .tokens import BOS_ID, EOS_ID

TEXT_TYPES = ('clip', 'pretrained', 'none')


def build_text_encoders(text_config: dict) -> list[nn.Module]:
    """Random CLIP text models from ``text.encoders`` (CLIPTextModelWithProjection when projection_dim is
    set), initialised from ``text.seed`` without touching the global RNG. No download."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
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
