"""Tag-based loss weighting (report §4.3): rare tags within their class up-weighted, common ones down-weighted.

The report names the idea, not a formula; this module uses the following one.

Classes: `artist`, `character`, `copyright`, `general`, `meta`, from a `class:` prefix (`artist:foo`; the
prefix must be one of those names, so `re:zero` stays general) or else a {tag: class} mapping (any class
names), else `general`. Tags compare case-insensitively with `_` ≡ space.

    f_t    = number of images tagged t (a tag repeated in one caption counts once)
    m_c    = median of f_t over the distinct tags t of class c
    w_t    = clip((f_t / m_c)^(−α), w_min, w_max)                    α = 0.5, [w_min, w_max] = [0.5, 2]
    u_i    = exp( mean_{c ∈ C_i} mean_{t ∈ T_i,c} ln w_t )           u_i = 1 for an image with no tags
    w_i    = u_i / mean_j u_j

C_i are the classes present in image i and T_i,c its tags of class c: a geometric mean per class, then across
classes, so one rare artist is not drowned by thirty general tags. A tag at its class median weighs 1;
w_t is non-increasing in f_t within a class; u_i ∈ [w_min, w_max], so max w / min w ≤ w_max / w_min; the
dataset mean of w_i is 1 (up to rounding). Multiply each sample's loss by w_i.
"""

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np

TAG_CLASSES = ('artist', 'character', 'copyright', 'general', 'meta')


def normalize_tag(name: str) -> str:
    """Lower case, `_` → space, whitespace collapsed."""
    return ' '.join(name.lower().replace('_', ' ').split())


def split_tag(tag: str, mapping: Optional[Mapping[str, str]] = None, default: str = 'general') -> tuple[str, str]:
    """(class, normalised name) of a tag; mapping keys must already be normalised (see tag_table)."""
    prefix, sep, rest = tag.partition(':')
    if sep and prefix.strip().lower() in TAG_CLASSES and rest.strip():
        return prefix.strip().lower(), normalize_tag(rest)
    name = normalize_tag(tag)
    return (mapping or {}).get(name, default), name


@dataclass(frozen=True)
class TagTable:
    """A dataset's tag statistics: vocab ['class:name'] [V], tag_class [V], freq int64 [V] (images per tag),
    and the deduplicated (image, tag) incidence as two int64 arrays [P]."""
    n_images: int
    vocab: list
    tag_class: np.ndarray
    freq: np.ndarray
    pair_image: np.ndarray
    pair_tag: np.ndarray


def tag_table(captions: Sequence[Sequence[str]], mapping: Optional[Mapping[str, str]] = None,
              default: str = 'general') -> TagTable:
    """Count tags per class over a dataset's captions (lists of tags, one per image)."""
    mapping = {normalize_tag(k): v for k, v in (mapping or {}).items()}
    ids, parsed, img, tag = {}, {}, [], []
    for i, caption in enumerate(captions):
        for raw in caption:
            t = parsed.get(raw)
            if t is None:
                c, name = split_tag(raw, mapping, default)
                t = parsed[raw] = ids.setdefault(f'{c}:{name}', len(ids)) if name else -1
            if t >= 0:
                img.append(i)
                tag.append(t)
    V = max(len(ids), 1)
    pairs = np.unique(np.asarray(img, dtype=np.int64) * V + np.asarray(tag, dtype=np.int64))
    pair_image, pair_tag = pairs // V, pairs % V
    vocab = list(ids)
    return TagTable(len(captions), vocab, np.array([k.split(':', 1)[0] for k in vocab], dtype=str),
                    np.bincount(pair_tag, minlength=len(vocab)).astype(np.int64), pair_image, pair_tag)


def tag_weights(freq: np.ndarray, tag_class: np.ndarray, alpha: float = 0.5,
                clip: tuple[float, float] = (0.5, 2.0)) -> np.ndarray:
    """w_t = clip((f_t / median_class f)^(−α), w_min, w_max), float64 [V]."""
    freq = np.asarray(freq, dtype=np.float64)
    tag_class = np.asarray(tag_class)
    median = np.empty_like(freq)
    for c in np.unique(tag_class):
        sel = tag_class == c
        median[sel] = np.median(freq[sel])
    return np.clip((freq / median) ** -alpha, *clip)


def weights_from_table(table: TagTable, alpha: float = 0.5, clip: tuple[float, float] = (0.5, 2.0),
                       normalize: bool = True) -> np.ndarray:
    """Per-image weights [N]: geometric mean over classes of per-class geometric means of w_t; / mean."""
    log_w = np.log(tag_weights(table.freq, table.tag_class, alpha, clip))
    _, class_id = np.unique(table.tag_class, return_inverse=True)
    K = int(class_id.max(initial=-1)) + 1
    groups, group_of = np.unique(table.pair_image * K + class_id.reshape(-1)[table.pair_tag],
                                 return_inverse=True)
    group_of = group_of.reshape(-1)
    class_mean = np.bincount(group_of, log_w[table.pair_tag]) / np.bincount(group_of)
    n = table.n_images
    total = np.bincount(groups // K, class_mean, minlength=n) if K else np.zeros(n)
    count = np.bincount(groups // K, minlength=n) if K else np.zeros(n)
    u = np.exp(np.divide(total, count, out=np.zeros(n), where=count > 0))
    return u / u.mean() if normalize and n else u


def image_weights(captions: Sequence[Sequence[str]], mapping: Optional[Mapping[str, str]] = None,
                  alpha: float = 0.5, clip: tuple[float, float] = (0.5, 2.0), normalize: bool = True,
                  default: str = 'general') -> np.ndarray:
    """§4.3 loss weight per image, float64 [N], mean 1 over the dataset (see the module docstring)."""
    return weights_from_table(tag_table(captions, mapping, default), alpha, clip, normalize)
