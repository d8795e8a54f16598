"""CLIP encoding of chunked prompts: penultimate states concatenated, pooled = mean over chunks (§4.2).

``text_model`` is a transformers ``CLIPTextModel`` (pooled = ``pooler_output``) or
``CLIPTextModelWithProjection`` (pooled = ``text_embeds``). SDXL uses the penultimate layer of both encoders
without the final layer norm (``layer=-2, final_norm=False``); SD1 "clip skip 1" is ``layer=-1,
final_norm=True``. Emphasis scales hidden states per token, then restores each chunk's mean (A1111); the
pooled embedding is not weighted. Empty padding chunks enter the context but not the pooled mean.
"""

import os
from typing import Sequence

import torch
from torch import Tensor, nn

from .tokens import MAX_CHUNKS, Chunks, get_tokenizer, pad_chunks, tokenize_chunks


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def _final_layer_norm(text_model: nn.Module) -> nn.Module:
    """``final_layer_norm`` of a CLIP text model (on the model itself or on its ``text_model``)."""
    inner = getattr(text_model, 'text_model', text_model)
    return inner.final_layer_norm


def encode_ids(text_model: nn.Module, ids: Tensor, layer: int = -2,
               final_norm: bool = False) -> tuple[Tensor, Tensor]:
    """Hidden states ``hidden_states[layer]`` [N, L, D] and pooled output [N, P] of a CLIP text model.

    Pooled is ``text_embeds`` for ``CLIPTextModelWithProjection``, ``pooler_output`` for ``CLIPTextModel``.
    ``final_norm`` applies the model's final layer norm to the chosen layer.
    """
    out = text_model(input_ids=ids.to(_device(text_model)), output_hidden_states=True)
    h = out.hidden_states[layer]
    if final_norm:
        h = _final_layer_norm(text_model)(h)
    pooled = getattr(out, 'text_embeds', None)
    return h, out.pooler_output if pooled is None else pooled


def apply_emphasis(hidden: Tensor, weights: Tensor) -> Tensor:
    """A1111 emphasis: hidden [..., L, D] × weights [..., L], rescaled so each chunk keeps its mean."""
    w = weights.to(hidden.device, torch.float32)
    if bool((w == 1).all()):
        return hidden
    h = hidden.float()
    hw = h * w[..., None]
    return (hw * (h.mean((-2, -1), keepdim=True) / hw.mean((-2, -1), keepdim=True))).to(hidden.dtype)


def encode_chunks(text_model: nn.Module, chunks: Chunks | Sequence[Chunks], layer: int = -2,
                  final_norm: bool = False) -> tuple[Tensor, Tensor]:
    """Context [B, L·k, D] (chunks' hidden states concatenated) and pooled [B, P] (mean over chunks).

    Prompts are padded to the batch's largest k with empty chunks; the pooled mean runs over each
    prompt's own ``n_chunks`` only (report §4.2; sd-scripts uses the first chunk's pooled state only).
    """
    cs = [chunks] if isinstance(chunks, Chunks) else list(chunks)
    k = max(c.ids.shape[0] for c in cs)
    cs = [pad_chunks(c, k) for c in cs]
    ids, weights = torch.stack([c.ids for c in cs]), torch.stack([c.weights for c in cs])
    b, _, length = ids.shape
    h, pooled = encode_ids(text_model, ids.view(b * k, length), layer, final_norm)
    context = apply_emphasis(h.view(b, k, length, -1), weights).reshape(b, k * length, -1)
    n = torch.tensor([c.n_chunks for c in cs], device=pooled.device)
    mask = (torch.arange(k, device=pooled.device) < n[:, None]).to(pooled.dtype)  # [B, k]
    pooled = (pooled.view(b, k, -1) * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    return context, pooled


def _as_list(x, n: int) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x] * n


def encode_prompts(text_models: nn.Module | Sequence[nn.Module], prompts: str | Sequence[str],
                   tokenizers=None, layer: int = -2, final_norm: bool = False,
                   **chunk_kwargs) -> tuple[Tensor, Tensor]:
    """Prompts -> context [B, L·k, ΣD] and pooled [B, P] with one or more text encoders.

    Each encoder gets its own tokenization (``tokenizers``: one, or one per encoder; default the built-in
    tokenizer); contexts are concatenated along features (SDXL: CLIP-L 768 ⊕ bigG 1280 = 2048) and the
    pooled embedding comes from the last encoder (SDXL: bigG with projection). All prompts and encoders
    share the same k. ``chunk_kwargs`` go to :func:`tokenize_chunks`.
    """
    models = [text_models] if isinstance(text_models, nn.Module) else list(text_models)
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    toks = [t or get_tokenizer() for t in _as_list(tokenizers, len(models))]
    if len(toks) != len(models):
        raise ValueError(f'{len(toks)} tokenizers for {len(models)} text encoders')
    chunked = [[tokenize_chunks(p, t, **chunk_kwargs) for p in prompts] for t in toks]
    k = max(c.ids.shape[0] for cs in chunked for c in cs)
    outs = [encode_chunks(m, [pad_chunks(c, k) for c in cs], layer, final_norm) for m, cs in zip(models, chunked)]
    return torch.cat([c for c, _ in outs], -1), outs[-1][1]


class TextConditioner(nn.Module):
    """Prompts -> ``{'context': [B, 77k, ΣD], 'pooled': [B, P]}`` with one (SD) or two (SDXL) CLIP encoders."""

    def __init__(self,
                 encoders: nn.Module | Sequence[nn.Module],  # SDXL order: CLIPTextModel, CLIPTextModelWithProjection
                 tokenizers=None,           # one, or one per encoder; default the built-in CLIP tokenizer
                 layer: int = -2,           # hidden_states index (penultimate, as SDXL and NAI)
                 final_norm: bool = False,  # apply final layer norm to that layer (SDXL: no)
                 max_chunks: int | None = MAX_CHUNKS,
                 truncate: bool = False,    # warn and drop instead of raising on overlong prompts
                 emphasis: bool = True,     # parse {…} […] (…) (…:w)
                 comma_window: int = 0):    # A1111-style break at a comma near a chunk's end; 0 = off
        super().__init__()
        encoders = [encoders] if isinstance(encoders, nn.Module) else list(encoders)
        self.encoders = nn.ModuleList(encoders)
        self.tokenizers = [t or get_tokenizer() for t in _as_list(tokenizers, len(encoders))]
        for i, enc in enumerate(encoders):
            n = getattr(getattr(enc, 'config', None), 'num_hidden_layers', None)
            if n is not None and not -(n + 1) <= layer <= n:
                raise ValueError(f'text layer {layer} is outside the hidden states [{-(n + 1)}, {n}] of text '
                                 f'encoder {i} ({n} layers; -1: the last, -2: the penultimate)')
        self.layer, self.final_norm = layer, final_norm
        self.chunk_kwargs = dict(max_chunks=max_chunks, truncate=truncate, emphasis=emphasis,
                                 comma_window=comma_window)

    def forward(self, prompts: str | Sequence[str]) -> dict[str, Tensor]:
        context, pooled = encode_prompts(list(self.encoders), prompts, self.tokenizers, self.layer,
                                         self.final_norm, **self.chunk_kwargs)
        return {'context': context, 'pooled': pooled}

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, torch_dtype: torch.dtype | None = None,
                        **kwargs) -> 'TextConditioner':
        """Load an SDXL diffusers folder's ``text_encoder[_2]`` and ``tokenizer[_2]`` (local files only).

        A missing ``tokenizer*`` folder falls back to the built-in tokenizer; a missing ``text_encoder_2``
        gives a single-encoder (SD1/2) conditioner.
        """
        from transformers import CLIPTextModel, CLIPTextModelWithProjection
        encoders, tokenizers = [], []
        for i, (sub, model_cls) in enumerate([('', CLIPTextModel), ('_2', CLIPTextModelWithProjection)]):
            enc_dir, tok_dir = os.path.join(path, 'text_encoder' + sub), os.path.join(path, 'tokenizer' + sub)
            if i and not os.path.isdir(enc_dir):
                break
            encoders.append(model_cls.from_pretrained(enc_dir, local_files_only=True, dtype=torch_dtype))
            tokenizers.append(get_tokenizer(tok_dir) if os.path.isdir(tok_dir) else None)
        return cls(encoders, tokenizers, **kwargs)
