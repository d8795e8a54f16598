"""CLIP tokenisation with emphasis and lossless 75-token chunks (report §4.2).

A prompt is parsed for emphasis (NAI ``{x}`` ×1.05 and ``[x]`` ÷1.05 per level, A1111 ``(x)`` ×1.1 and
``(x:w)``), tokenized with the real CLIP BPE vocabulary, and split into chunks of 75 tokens, each wrapped
``BOS … EOS`` and padded to 77. Unlike the NovelAI service, which loses the tokens at positions 74-76 and
149-151 (user FAQ), no token is lost at a chunk boundary.

- Padding uses ``tokenizer.pad_token_id`` (EOS for our tokenizer and SDXL's ``tokenizer``; ``!`` = 0 for
  SDXL's ``tokenizer_2``, matching open_clip), or an explicit ``pad_id``.
- A batch of prompts is padded to a common number of chunks k with empty chunks (``BOS EOS pad …``), as
  A1111 does (`pad_chunks`); encode the conditional and unconditional prompts of CFG in one call so they
  share k.
- The tokenizer is built in memory from clip-anytorch's vocabulary (cached); ``get_tokenizer(dir)`` or any
  SDXL ``tokenizer`` folder can be used instead.
"""

import functools
import math
import os
import re
import warnings
from dataclasses import dataclass, replace
from typing import Sequence

import torch
from torch import Tensor

CHUNK_LEN = 75  # tokens per chunk, without BOS/EOS
MAX_CHUNKS = 3  # NAI: 225 tokens
BOS_ID, EOS_ID = 49406, 49407  # CLIP's <|startoftext|>, <|endoftext|>
NAI_BRACE = 1.05  # {x} multiplies, [x] divides, per level
A1111_PAREN = 1.1  # (x) multiplies per level
MAX_WEIGHT = 100.  # larger emphasis weights are refused (they overflow the conditioning to inf/NaN)


# ---------------------------------------------------------------------------------------------------------
# Tokenizer


def clip_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's vocab (49408 entries) and BPE merges, from clip-anytorch's own ``simple_tokenizer``."""
    with warnings.catch_warnings():       # clip imports pkg_resources, deprecated in setuptools
        warnings.filterwarnings('ignore', message='pkg_resources is deprecated', category=UserWarning)
        from clip.simple_tokenizer import SimpleTokenizer
    st = SimpleTokenizer()
    return dict(st.encoder), sorted(st.bpe_ranks, key=st.bpe_ranks.get)


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
        if s[0] and not (math.isfinite(s[1]) and abs(s[1]) <= MAX_WEIGHT):
            raise ValueError(f'emphasis gives {s[0][:40]!r} the weight {s[1]:.3g}; weights must be finite and at '
                             f'most {MAX_WEIGHT:g} in magnitude (too many nested brackets, or a huge (x:w)?)')
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
    shown = dropped if len(dropped) <= 200 else f'{dropped[:200]}… ({len(dropped) - 200} more characters)'
    msg = (f'prompt is {len(ids)} tokens in {len(bounds)} chunks, more than max_chunks={max_chunks} '
           f'(≤ {max_chunks * chunk_len} tokens); dropped text: {shown!r}')
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
