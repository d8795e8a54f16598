"""Aspect-ratio bucketing and per-epoch batch planning (report §4.1.2).

Sizes and buckets are (w, h) integer pairs. `make_buckets` builds the report's bucket list; `assign_buckets`
finds each image's nearest-aspect bucket (pruning extreme aspects); `plan_epoch` is the pure, vectorised
batch generator; `BucketSampler` wraps it as a resumable torch batch sampler.

Catch-all bucket: each bucket's remainder (len % bsz) goes to one catch-all list, cut into batches of mixed
aspect. Such a batch is loaded at the most common bucket among its items (lowest index on ties); items of
other aspects are scaled to cover that resolution and randomly cropped like any other item (§4.1.3).
"""

import math
import zlib
from dataclasses import dataclass
from typing import Iterator, NamedTuple, Optional

import numpy as np
from torch.utils.data import Sampler


def make_buckets(max_area: int = 512 * 768, max_side: int = 1024, min_side: int = 256, step: int = 64,
                 extra: tuple[tuple[int, int], ...] = ((512, 512),)) -> np.ndarray:
    """The §4.1.2 bucket list as int64 [N, 2] (w, h), sorted by aspect ratio w/h, ties by area.

    For w = min_side, min_side + step, …, ≤ max_side: the largest h (multiple of step) with h ≤ max_side and
    w·h ≤ max_area; the same with the axes exchanged; duplicates pruned; `extra` added. Pairs whose short
    side would fall below min_side are left out (none for the defaults).
    """
    sides = np.arange(min_side, max_side + 1, step, dtype=np.int64)
    other = np.minimum(max_side, max_area // sides // step * step)
    wh = np.stack([sides, other], 1)
    wh = np.concatenate([wh, wh[:, ::-1], np.asarray(extra, dtype=np.int64).reshape(-1, 2)])
    wh = np.unique(wh[wh.min(1) >= min_side], axis=0)
    return wh[np.lexsort((wh.prod(1), wh[:, 0] / wh[:, 1]))]


def assign_buckets(sizes: np.ndarray, buckets: np.ndarray, log_space: bool = True,
                   max_ratio_error: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-aspect bucket for each (w, h) in sizes [M, 2] (§4.1.2): bucket_idx int64 [M], pruned bool [M].

    The error is |ln(r/r_b)| with log_space (the report's text), |r − r_b| otherwise (NovelAI's released
    code), r = w/h. Images with error > max_ratio_error, or a non-positive side, are pruned (their bucket_idx
    is still the nearest one); count them with pruned.sum(). The default 0.5 in log space keeps aspects
    within a factor e^0.5 ≈ 1.65 of a bucket (the crop keeps ≥ 61% of the image). One searchsorted of r over
    the midpoints between sorted bucket ratios (geometric in log space, arithmetic otherwise): O(M log N),
    no [M, N] temporaries. Exact ties go to the bucket with the smaller ratio.
    """
    buckets = np.asarray(buckets, dtype=np.int64).reshape(-1, 2)
    rb = buckets[:, 0] / buckets[:, 1]
    order = np.argsort(rb, kind='stable')
    rb = rb[order]
    mids = np.sqrt(rb[1:] * rb[:-1]) if log_space else (rb[1:] + rb[:-1]) / 2
    sizes = np.asarray(sizes).reshape(-1, 2)
    w, h = sizes[:, 0], sizes[:, 1]
    valid = (w > 0) & (h > 0)
    with np.errstate(divide='ignore', invalid='ignore'):
        r = np.divide(w, h, dtype=np.float64)
        pick = np.searchsorted(mids, r)
        if log_space:
            q = r / rb[pick]
            ok = (q <= math.exp(max_ratio_error)) & (q >= math.exp(-max_ratio_error))
        else:
            ok = np.abs(r - rb[pick]) <= max_ratio_error
    return order[pick], ~(ok & valid)


@dataclass(frozen=True)
class EpochPlan:
    """One rank's batches for one epoch: batches int64 [T, bsz] of dataset indices, bucket int64 [T] (the
    resolution to load each batch at), catch_all bool [T] (batch drawn from the mixed catch-all bucket)."""
    batches: np.ndarray
    bucket: np.ndarray
    catch_all: np.ndarray

    def __len__(self) -> int:
        return len(self.batches)


def shard_ids(kept: np.ndarray, batch_size: int, epoch: int, seed: int, rank: int,
              world_size: int) -> np.ndarray:
    """Shuffle ids with a seed shared by all ranks (seed, epoch), trim to a multiple of world_size·bsz, take
    this rank's contiguous slice: disjoint, equal-size shards (§4.1.2)."""
    if not 0 <= rank < world_size:
        raise ValueError(f'rank {rank} not in [0, {world_size})')
    ids = np.asarray(kept, dtype=np.int64)
    ids = ids[np.random.default_rng([seed, epoch]).permutation(len(ids))]
    n = len(ids) // (world_size * batch_size) * batch_size
    return ids[rank * n:(rank + 1) * n]


def _mode_bucket(bucket_rows: np.ndarray, n_buckets: int) -> np.ndarray:
    """Most common bucket per row of [K, bsz] (lowest index on ties)."""
    counts = np.zeros((len(bucket_rows), n_buckets), np.int64)
    np.add.at(counts, (np.arange(len(bucket_rows))[:, None], bucket_rows), 1)
    return counts.argmax(1)


def plan_epoch(bucket_idx: np.ndarray, batch_size: int, epoch: int = 0, seed: int = 0, rank: int = 0,
               world_size: int = 1) -> EpochPlan:
    """Pure §4.1.2 batch generation for one rank; bucket_idx int [M] per dataset index, −1 = pruned.

    Per-bucket lists keep the shuffled order; each bucket's last len % bsz ids go to the catch-all bucket.
    Drawing a bucket with probability ∝ its remaining size, taking a batch and repeating is drawing without
    replacement from an urn of batch labels, i.e. a uniformly random permutation of the multiset of labels:
    that is what is computed, with a Generator seeded by (seed, epoch, rank). Batches of a bucket come out
    in list order. The catch-all list is ordered by bucket index, so with make_buckets' aspect order each
    catch-all batch holds neighbouring aspects.
    """
    bucket_idx = np.asarray(bucket_idx, dtype=np.int64)
    n_buckets = int(bucket_idx.max(initial=-1)) + 1
    ids = shard_ids(np.flatnonzero(bucket_idx >= 0), batch_size, epoch, seed, rank, world_size)
    b = bucket_idx[ids]
    small = np.int16 if n_buckets < 2 ** 15 else np.int64     # stable sort of int16 is a radix sort
    ids = ids[np.argsort(b.astype(small), kind='stable')]
    counts = np.bincount(b, minlength=n_buckets)
    b = np.repeat(np.arange(n_buckets), counts)
    starts = np.cumsum(counts) - counts
    rest = np.arange(len(ids)) - starts[b] >= counts[b] // batch_size * batch_size
    assert rest.sum() % batch_size == 0, 'catch-all bucket size must be a multiple of the batch size'
    groups = np.concatenate([b[~rest], np.full(rest.sum(), n_buckets)])   # label n_buckets = catch-all
    rows = np.concatenate([ids[~rest], ids[rest]]).reshape(-1, batch_size)
    labels = groups[::batch_size]
    draw = np.random.default_rng([seed, epoch, rank, 1]).permutation(labels)
    row_at = np.empty(len(rows), np.int64)
    row_at[np.argsort(draw.astype(small), kind='stable')] = np.arange(len(rows))  # j-th draw → j-th batch
    batches, catch_all = rows[row_at], draw == n_buckets
    bucket = np.where(catch_all, 0, draw)
    if catch_all.any():
        bucket[catch_all] = _mode_bucket(bucket_idx[batches[catch_all]], n_buckets)
    return EpochPlan(batches, bucket, catch_all)


class BucketKey(NamedTuple):
    """What BucketSampler yields per item: a dataset index and the (w, h) its batch is loaded at."""
    index: int
    w: int
    h: int


class BucketSampler(Sampler):
    """Resumable batch sampler over plan_epoch; pass as DataLoader(batch_sampler=…).

    Yields lists of BucketKey(index, w, h), all of one (w, h): the dataset's __getitem__ receives the key, so
    the resolution travels with the item even through worker processes. `batches()` yields
    ((w, h), [index, …]) for loops without a DataLoader. Call set_epoch(e) before each epoch; state_dict()
    records (epoch, batches yielded) — the plan is a pure function of the seed, so that is the RNG state.
    A new iter() continues from the current position; the epoch advances by one after its last batch.
    """

    def __init__(self, bucket_idx: np.ndarray, buckets: np.ndarray, batch_size: int, rank: int = 0,
                 world_size: int = 1, seed: int = 0):
        self.bucket_idx = np.asarray(bucket_idx, dtype=np.int64)
        self.buckets = np.asarray(buckets, dtype=np.int64).reshape(-1, 2)
        if self.bucket_idx.max(initial=-1) >= len(self.buckets):
            raise ValueError(f'bucket_idx refers to bucket {self.bucket_idx.max()} of {len(self.buckets)}')
        self.batch_size, self.rank, self.world_size, self.seed = batch_size, rank, world_size, seed
        self.epoch, self.position = 0, 0
        self.fingerprint = zlib.crc32(self.bucket_idx.tobytes())
        self._plan: Optional[EpochPlan] = None

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.position, self._plan = epoch, 0, None

    def plan(self) -> EpochPlan:
        if self._plan is None:
            self._plan = plan_epoch(self.bucket_idx, self.batch_size, self.epoch, self.seed, self.rank,
                                    self.world_size)
        return self._plan

    def __len__(self) -> int:
        n = int((self.bucket_idx >= 0).sum())
        return n // (self.world_size * self.batch_size)

    def batches(self) -> Iterator[tuple[tuple[int, int], list[int]]]:
        """Yield ((w, h), indices) from the current position to the end of the epoch, then start the next."""
        plan = self.plan()
        while self.position < len(plan):
            i = self.position
            self.position += 1
            w, h = self.buckets[plan.bucket[i]].tolist()
            yield (w, h), plan.batches[i].tolist()
        self.set_epoch(self.epoch + 1)

    def __iter__(self) -> Iterator[list[BucketKey]]:
        for (w, h), indices in self.batches():
            yield [BucketKey(i, w, h) for i in indices]

    def state_dict(self, position: Optional[int] = None) -> dict:
        """Resume point. A DataLoader prefetches, so the sampler runs ahead of training: pass the number of
        batches actually consumed this epoch as position (or use num_workers=0)."""
        position = self.position if position is None else position
        return {'epoch': self.epoch, 'position': position, 'seed': self.seed,
                'batch_size': self.batch_size, 'rank': self.rank, 'world_size': self.world_size,
                'fingerprint': self.fingerprint}

    def load_state_dict(self, state: dict) -> None:
        """Resume exactly; refuses a state saved with another dataset, batch size or world layout."""
        for k in ('seed', 'batch_size', 'rank', 'world_size', 'fingerprint'):
            if state[k] != getattr(self, k):
                raise ValueError(f'cannot resume: {k} was {state[k]}, is {getattr(self, k)}')
        self.epoch, self.position, self._plan = state['epoch'], state['position'], None
