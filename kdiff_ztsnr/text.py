"""CLIP text conditioning with prompt chunking and emphasis (report §4.2, DESIGN.md item 9).

A prompt is parsed for emphasis, tokenized with the real CLIP BPE vocabulary, and split into chunks of
75 tokens, each wrapped ``BOS … EOS`` and padded to 77. Every chunk goes through the text encoder on its
own; the chosen hidden layer (penultimate by default) of all chunks is concatenated along the sequence
axis, and the pooled embedding is the MEAN of all chunks' pooled outputs, as the report does (sd-scripts
pools the first chunk only, which ignores everything after token 75). Unlike the NovelAI service, which
loses the tokens at positions 74-76 and 149-151 (user FAQ), no token is lost at a chunk boundary.

Public API::

    get_tokenizer(path=None) -> CLIPTokenizer                  # offline, real BPE from clip-anytorch
    parse_emphasis(prompt) -> list[tuple[str, float]]          # {x} ×1.05, [x] ÷1.05, (x) ×1.1, (x:1.2)
    tokenize_weighted(prompt, tokenizer, emphasis=True) -> (ids, weights)
    chunk_bounds(ids, chunk_len=75, comma_id=None, comma_window=0) -> [(start, end), …]
    tokenize_chunks(prompt, tokenizer=None, max_chunks=3, chunk_len=75, truncate=False, …) -> Chunks
    pad_chunks(chunks, k) -> Chunks                            # append empty chunks (batching)
    encode_ids(text_model, ids [N, 77], layer=-2, final_norm=False) -> (hidden [N, 77, D], pooled [N, P])
    apply_emphasis(hidden [..., 77, D], weights [..., 77]) -> hidden  # A1111: scale, then restore mean
    encode_chunks(text_model, chunks | [chunks, …], layer=-2, final_norm=False)
        -> (context [B, 77k, D], pooled [B, P])
    encode_prompts(text_models, prompts, tokenizers=None, layer=-2, final_norm=False, **chunk_kwargs)
        -> (context [B, 77k, ΣD], pooled [B, P_last])               # SDXL: CLIP-L ⊕ bigG, pooled from bigG
    TextConditioner(encoders, tokenizers=None, …)(prompts) -> {'context': …, 'pooled': …}
    TextConditioner.from_pretrained(sdxl_folder)              # diffusers layout, local files only

Conventions:

- ``text_model`` is a transformers ``CLIPTextModel`` (pooled = ``pooler_output``) or
  ``CLIPTextModelWithProjection`` (pooled = ``text_embeds``). SDXL uses the penultimate layer of both
  encoders without the final layer norm (``layer=-2, final_norm=False``); SD1 "clip skip 1" is
  ``layer=-1, final_norm=True`` (= ``last_hidden_state``).
- Padding uses ``tokenizer.pad_token_id`` (EOS for our tokenizer and SDXL's ``tokenizer``; ``!`` = 0 for
  SDXL's ``tokenizer_2``, matching open_clip), or an explicit ``pad_id``.
- A batch of prompts is padded to a common number of chunks k with empty chunks (``BOS EOS pad …``), as
  A1111 does; encode the conditional and unconditional prompts of CFG in one call so they share k. Empty
  padding chunks enter the context but not the pooled mean, so a prompt's pooled embedding does not depend
  on the other prompts of its batch.
- Emphasis is applied per prompt per chunk: hidden states are multiplied by the per-token weights, then
  rescaled so the chunk's mean is unchanged (A1111 takes that mean over the whole batch). The pooled
  embedding is not weighted. A chunk whose weights are all 1 is returned untouched.
- The tokenizer is built in memory (≈0.2 s, cached); ``get_tokenizer().save_pretrained(dir)`` writes a
  tokenizer folder, and ``get_tokenizer(dir)`` or any SDXL ``tokenizer`` folder can be used instead.
"""

import functools
import gzip
import importlib.util
import os
import re
import warnings
from dataclasses import dataclass, replace
from typing import Sequence

import torch
from torch import Tensor, nn

CHUNK_LEN = 75  # tokens per chunk, without BOS/EOS
MAX_CHUNKS = 3  # NAI: 225 tokens
BOS_ID, EOS_ID = 49406, 49407  # CLIP's <|startoftext|>, <|endoftext|>
NAI_BRACE = 1.05  # {x} multiplies, [x] divides, per level
A1111_PAREN = 1.1  # (x) multiplies per level


# ---------------------------------------------------------------------------------------------------------
# Tokenizer


def clip_bpe_path() -> str:
    """Path of the CLIP BPE merges shipped in clip-anytorch (located without importing ``clip``)."""
    spec = importlib.util.find_spec('clip')
    if spec is None or not spec.submodule_search_locations:
        raise ImportError('clip-anytorch is required for the built-in CLIP vocabulary (pip install clip-anytorch)')
    return os.path.join(spec.submodule_search_locations[0], 'bpe_simple_vocab_16e6.txt.gz')


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP reversible byte → printable-unicode table."""
    bs = [*range(ord('!'), ord('~') + 1), *range(ord('¡'), ord('¬') + 1), *range(ord('®'), ord('ÿ') + 1)]
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def clip_vocab_and_merges(bpe_path: str | None = None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's vocab (49408 entries) and BPE merges, built exactly as ``clip.simple_tokenizer`` does."""
    lines = gzip.open(bpe_path or clip_bpe_path()).read().decode('utf-8').split('\n')
    merges = [tuple(m.split()) for m in lines[1:49152 - 256 - 2 + 1]]
    chars = list(_bytes_to_unicode().values())
    vocab = chars + [c + '</w>' for c in chars] + [''.join(m) for m in merges]
    vocab += ['<|startoftext|>', '<|endoftext|>']
    return {v: i for i, v in enumerate(vocab)}, merges


@functools.lru_cache(maxsize=None)
def _builtin_tokenizer():
    from transformers import CLIPTokenizer
    vocab, merges = clip_vocab_and_merges()
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=CHUNK_LEN + 2)


def get_tokenizer(path: str | os.PathLike | None = None):
    """A transformers ``CLIPTokenizer``: from a local folder if given, else the real CLIP BPE, offline.

    The built-in one is shared (cached); BOS = 49406, EOS = pad = 49407.
    """
    if path is None:
        return _builtin_tokenizer()
    from transformers import CLIPTokenizer
    return CLIPTokenizer.from_pretrained(path, local_files_only=True)


# ---------------------------------------------------------------------------------------------------------
# Emphasis


_OPEN = {'(': ')', '[': ']', '{': '}'}
_SCALE = {'(': A1111_PAREN, '[': 1 / NAI_BRACE, '{': NAI_BRACE}
_RE_EMPHASIS = re.compile(r"""
    \\[\\(){}\[\]:]                                 # escaped character
  | :\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*\)             # ":1.2)" closing an explicit weight
  | [(){}\[\]]                                      # bracket
  | [^\\(){}\[\]:]+                                 # plain text
  | [\\:]                                           # lone backslash or colon: literal
""", re.X)


def _scale(spans: list[list], start: int, w: float) -> None:
    for s in spans[start:]:
        s[1] *= w


def parse_emphasis(prompt: str) -> list[tuple[str, float]]:
    """Split a prompt into (text, weight) spans.

    NAI ``{x}`` ×1.05 and ``[x]`` ÷1.05 per level; A1111 ``(x)`` ×1.1 per level and ``(x:1.2)`` ×1.2 (an
    explicit weight at top level; nested brackets multiply, as in A1111). ``\\( \\) \\[ \\] \\{ \\} \\: \\\\``
    are literal characters. Unbalanced brackets never raise: a closer that does not match the innermost
    open bracket is literal text, and brackets still open at the end are closed there (their weight applies
    to the rest of the prompt), as in A1111. Adjacent spans of equal weight are merged.
    """
    spans: list[list] = []  # [text, weight]
    stack: list[tuple[str, int]] = []  # (opening bracket, index of its first span)
    for m in _RE_EMPHASIS.finditer(prompt):
        s, w = m.group(0), m.group(1)
        top = stack[-1][0] if stack else None
        if len(s) == 2 and s[0] == '\\':
            spans.append([s[1], 1.])
        elif s in _OPEN:
            stack.append((s, len(spans)))
        elif w is not None and top == '(':
            _scale(spans, stack.pop()[1], float(w))
        elif top is not None and s == _OPEN[top]:
            _scale(spans, stack.pop()[1], _SCALE[top])
        else:
            spans.append([s, 1.])
    for b, start in reversed(stack):
        _scale(spans, start, _SCALE[b])
    merged: list[list] = []
    for s in spans:
        if merged and merged[-1][1] == s[1]:
            merged[-1][0] += s[0]
        elif s[0]:
            merged.append(s)
    return [(t, w) for t, w in merged]


# ---------------------------------------------------------------------------------------------------------
# Chunking


@dataclass
class Chunks:
    """A prompt as k chunks of ``BOS tokens… EOS pad…`` (77 ids each)."""
    ids: Tensor  # [k, chunk_len + 2] long
    weights: Tensor  # [k, chunk_len + 2] float32, 1 at BOS/EOS/pad
    lengths: Tensor  # [k] long, prompt tokens in each chunk (0 for an empty chunk)
    n_chunks: int  # chunks that belong to the prompt; rows past it are batch padding
    special: tuple[int, int, int]  # (bos, eos, pad) ids
    dropped: str = ''  # text cut off by truncate=True

    @property
    def n_tokens(self) -> int:
        return int(self.lengths.sum())

    def tokens(self) -> list[int]:
        """The prompt's token ids, chunk interiors concatenated (BOS/EOS/pad removed)."""
        return [t for row, n in zip(self.ids.tolist(), self.lengths.tolist()) for t in row[1:1 + n]]


def tokenize_weighted(prompt: str, tokenizer=None, emphasis: bool = True) -> tuple[list[int], list[float]]:
    """Token ids (no BOS/EOS) and per-token weights; each emphasis span is tokenized on its own (A1111)."""
    tokenizer = tokenizer or get_tokenizer()
    spans = parse_emphasis(prompt) if emphasis else [(prompt, 1.)]
    if not spans:
        return [], []
    ids = tokenizer([t for t, _ in spans], add_special_tokens=False, verbose=False)['input_ids']
    return [i for s in ids for i in s], [w for s, (_, w) in zip(ids, spans) for _ in s]


def chunk_bounds(ids: Sequence[int], chunk_len: int = CHUNK_LEN, comma_id: int | None = None,
                 comma_window: int = 0) -> list[tuple[int, int]]:
    """[start, end) of each chunk; every token is in exactly one chunk, and there is at least one chunk.

    With ``comma_window > 0`` a full chunk ends after its last comma if that comma is among its last
    ``comma_window`` tokens (A1111 uses 20); the tokens after it open the next chunk.
    """
    bounds, i = [], 0
    while len(ids) - i > chunk_len:
        end = i + chunk_len
        if comma_window > 0 and comma_id is not None:
            for j in range(end - 1, max(i, end - comma_window) - 1, -1):
                if ids[j] == comma_id:
                    end = j + 1
                    break
        bounds.append((i, end))
        i = end
    return bounds + [(i, len(ids))]


def _special_ids(tokenizer, pad_id: int | None) -> tuple[int, int, int]:
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = pad_id if pad_id is not None else tokenizer.pad_token_id
    return bos, eos, eos if pad is None else pad


def _overflow(tokenizer, ids: list[int], bounds, max_chunks: int, chunk_len: int, truncate: bool) -> str:
    """Dropped text of a prompt longer than max_chunks chunks: raise, or warn if truncating."""
    dropped = tokenizer.decode(ids[bounds[max_chunks][0]:])
    msg = (f'prompt is {len(ids)} tokens in {len(bounds)} chunks, more than max_chunks={max_chunks} '
           f'(≤ {max_chunks * chunk_len} tokens); dropped text: {dropped!r}')
    if not truncate:
        raise ValueError(msg + '. Shorten the prompt, raise max_chunks, or pass truncate=True.')
    warnings.warn(msg, stacklevel=3)
    return dropped


def tokenize_chunks(prompt: str, tokenizer=None, max_chunks: int | None = MAX_CHUNKS,
                    chunk_len: int = CHUNK_LEN, truncate: bool = False, emphasis: bool = True,
                    comma_window: int = 0, pad_id: int | None = None, min_chunks: int = 1) -> Chunks:
    """Prompt -> Chunks: ids/weights [k, chunk_len + 2], each row ``BOS tokens… EOS pad…``.

    A prompt needing more than ``max_chunks`` chunks raises ``ValueError`` naming the text that would be
    dropped; with ``truncate=True`` it warns instead and keeps the first ``max_chunks`` chunks
    (``Chunks.dropped`` holds the rest as text). ``max_chunks=None``: no limit. Rows are padded with
    empty chunks up to ``min_chunks``.
    """
    tokenizer = tokenizer or get_tokenizer()
    ids, ws = tokenize_weighted(prompt, tokenizer, emphasis)
    comma_id = tokenizer.convert_tokens_to_ids(',</w>') if comma_window else None
    bounds, dropped = chunk_bounds(ids, chunk_len, comma_id, comma_window), ''
    if max_chunks is not None and len(bounds) > max_chunks:
        dropped = _overflow(tokenizer, ids, bounds, max_chunks, chunk_len, truncate)
        bounds = bounds[:max_chunks]
    bos, eos, pad = special = _special_ids(tokenizer, pad_id)
    k = max(len(bounds), min_chunks)
    rows = torch.full((k, chunk_len + 2), pad, dtype=torch.long)
    rows[:, 0], rows[len(bounds):, 1] = bos, eos
    weights = torch.ones(k, chunk_len + 2)
    lengths = torch.zeros(k, dtype=torch.long)
    for r, (a, b) in enumerate(bounds):
        rows[r, 1:1 + b - a] = torch.tensor(ids[a:b], dtype=torch.long)
        rows[r, 1 + b - a] = eos
        weights[r, 1:1 + b - a] = torch.tensor(ws[a:b])
        lengths[r] = b - a
    return Chunks(rows, weights, lengths, len(bounds), special, dropped)


def pad_chunks(chunks: Chunks, k: int) -> Chunks:
    """Append empty chunks (``BOS EOS pad…``, weight 1) up to k rows; they do not count in ``n_chunks``."""
    n = k - chunks.ids.shape[0]
    if n <= 0:
        return chunks
    bos, eos, pad = chunks.special
    empty = torch.full((n, chunks.ids.shape[1]), pad, dtype=torch.long)
    empty[:, 0], empty[:, 1] = bos, eos
    return replace(chunks, ids=torch.cat([chunks.ids, empty]),
                   weights=torch.cat([chunks.weights, torch.ones(n, chunks.ids.shape[1])]),
                   lengths=torch.cat([chunks.lengths, torch.zeros(n, dtype=torch.long)]))


# ---------------------------------------------------------------------------------------------------------
# Encoding


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
