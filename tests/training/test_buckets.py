"""Aspect-ratio bucketing (report §4.1.2): bucket list, assignment, epoch plans, resumable sampler."""

import math

import numpy as np
import pytest
from torch.utils.data import DataLoader

from kdiff_ztsnr.training.data.buckets import BucketKey, BucketSampler, assign_buckets, make_buckets, plan_epoch

DEFAULT_BUCKETS = [  # sorted by w/h
    (256, 1024), (320, 1024), (384, 1024), (384, 960), (384, 896), (448, 832), (512, 768), (512, 704),
    (576, 640), (512, 512), (640, 576), (704, 512), (768, 512), (832, 448), (896, 384), (960, 384),
    (1024, 384), (1024, 320), (1024, 256)]


def report_buckets():
    """The §4.1.2 algorithm, literally: width 256..1024 step 64, largest height ≤ 1024 with w·h ≤ 512·768."""
    out = []
    for swap in (False, True):
        width = 256
        while width <= 1024:
            height = max(h for h in range(64, 1025, 64) if width * h <= 512 * 768)
            out.append((height, width) if swap else (width, height))
            width += 64
    return set(out) | {(512, 512)}


def test_make_buckets_default_list():
    b = make_buckets()
    assert b.dtype == np.int64 and b.shape == (19, 2)
    assert [tuple(x) for x in b.tolist()] == DEFAULT_BUCKETS
    assert set(map(tuple, b.tolist())) == report_buckets()
    for wh in [(512, 768), (768, 512), (256, 1024), (1024, 256), (1024, 384), (384, 1024), (512, 512)]:
        assert wh in DEFAULT_BUCKETS
    assert (b % 64 == 0).all() and (b.prod(1) <= 512 * 768).all() and (b <= 1024).all() and (b >= 256).all()
    assert np.all(np.diff(b[:, 0] / b[:, 1]) > 0)  # sorted, aspects distinct


def test_make_buckets_symmetric_and_parameters():
    b = make_buckets(max_area=1024 * 1024, max_side=2048, min_side=512, extra=())
    s = set(map(tuple, b.tolist()))
    assert s == {(h, w) for w, h in s}
    assert (b.prod(1) <= 1024 * 1024).all() and (1024, 1024) in s and (512, 2048) in s


def nearest_bruteforce(sizes, buckets, log_space):
    r = sizes[:, 0] / sizes[:, 1]
    rb = buckets[:, 0] / buckets[:, 1]
    err = np.abs(np.log(r[:, None] / rb)) if log_space else np.abs(r[:, None] - rb)
    return err.min(1), err


@pytest.mark.parametrize('log_space', [True, False])
def test_assign_matches_argmin(log_space):
    rng = np.random.default_rng(0)
    b = make_buckets()
    sizes = rng.integers(100, 5000, (20000, 2))
    idx, pruned = assign_buckets(sizes, b, log_space=log_space, max_ratio_error=math.inf)
    best, err = nearest_bruteforce(sizes, b, log_space)
    np.testing.assert_allclose(err[np.arange(len(idx)), idx], best, rtol=0, atol=1e-12)
    assert not pruned.any()
    b2 = b.copy()
    np.random.default_rng(1).shuffle(b2)  # bucket order must not matter
    idx2, _ = assign_buckets(sizes, b2, log_space=log_space, max_ratio_error=math.inf)
    best2, err2 = nearest_bruteforce(sizes, b2, log_space)
    np.testing.assert_allclose(err2[np.arange(len(idx2)), idx2], best2, rtol=0, atol=1e-12)


def test_assign_exact_aspects_and_log_vs_linear():
    b = make_buckets()
    sizes = b * np.array([[3], [2], [1], [5]] * 5)[:19]
    idx, pruned = assign_buckets(sizes, b)
    assert (idx == np.arange(19)).all() and not pruned.any()
    # r = 0.2805 lies between the geometric (0.2795) and arithmetic (0.28125) midpoints of 0.25 and 0.3125
    size = np.array([[561, 2000]])
    assert tuple(b[assign_buckets(size, b, log_space=True)[0][0]]) == (320, 1024)
    assert tuple(b[assign_buckets(size, b, log_space=False)[0][0]]) == (256, 1024)


def test_assign_prunes_extreme_and_invalid():
    b = make_buckets()
    sizes = np.array([[100, 2000], [2000, 100], [0, 10], [10, 0], [-5, 10], [512, 768], [160, 1000]])
    idx, pruned = assign_buckets(sizes, b)  # log error limit 0.5: r ∈ [0.25/1.65, 4·1.65]
    assert pruned.tolist() == [True, True, True, True, True, False, False]
    assert pruned.sum() == 5 and idx.shape == (7,) and (idx >= 0).all() and (idx < 19).all()
    assert tuple(b[idx[0]]) == (256, 1024) and tuple(b[idx[1]]) == (1024, 256)
    _, pruned_lin = assign_buckets(sizes[:2], b, log_space=False, max_ratio_error=4)  # NovelAI code's limit
    assert pruned_lin.tolist() == [False, True]  # linear error: |0.05 − 0.25| small, |20 − 4| large


def random_bucket_idx(m, n_buckets=19, seed=0, pruned_frac=0.05):
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(n_buckets) * 0.5)
    bi = rng.choice(n_buckets, m, p=p)
    bi[rng.random(m) < pruned_frac] = -1
    return bi


def check_plan_properties(bi, bsz, world_size, epoch=0, seed=0):
    kept = np.flatnonzero(bi >= 0)
    n_buckets = bi.max() + 1
    plans = [plan_epoch(bi, bsz, epoch, seed, r, world_size) for r in range(world_size)]
    per_rank = len(kept) // (world_size * bsz) * bsz
    all_ids = np.concatenate([p.batches.ravel() for p in plans])
    for p in plans:
        assert p.batches.shape == (per_rank // bsz, bsz) and p.batches.dtype == np.int64
        assert len(np.unique(p.batches)) == per_rank
        ordinary = ~p.catch_all
        assert (bi[p.batches[ordinary]] == p.bucket[ordinary, None]).all()  # one bucket per batch
        rest = bi[p.batches[p.catch_all]].ravel()
        assert (np.bincount(rest, minlength=n_buckets) < bsz).all()  # only remainders go to catch-all
        for row, bucket in zip(bi[p.batches[p.catch_all]], p.bucket[p.catch_all]):
            counts = np.bincount(row, minlength=n_buckets)
            assert bucket == counts.argmax()
    assert len(all_ids) == len(np.unique(all_ids)) == world_size * per_rank  # disjoint, each once
    assert (bi[all_ids] >= 0).all()
    glob = kept[np.random.default_rng([seed, epoch]).permutation(len(kept))][:world_size * per_rank]
    assert set(all_ids.tolist()) == set(glob.tolist())  # the shared shuffle, trimmed
    return plans


@pytest.mark.parametrize('world_size,bsz', [(1, 1), (1, 7), (2, 4), (3, 5)])
def test_plan_properties(world_size, bsz):
    bi = random_bucket_idx(5003, seed=world_size * 10 + bsz)
    check_plan_properties(bi, bsz, world_size)


def test_plan_1m_sizes_world_3():
    rng = np.random.default_rng(3)
    sizes = rng.integers(200, 4000, (1_000_000, 2))
    idx, pruned = assign_buckets(sizes, make_buckets())
    bi = np.where(pruned, -1, idx)
    check_plan_properties(bi, 8, 3, epoch=2, seed=11)


def test_plan_deterministic_and_epoch_dependent():
    bi = random_bucket_idx(2000)
    a, b = plan_epoch(bi, 4, 3, 5), plan_epoch(bi, 4, 3, 5)
    assert (a.batches == b.batches).all() and (a.bucket == b.bucket).all()
    assert not np.array_equal(plan_epoch(bi, 4, 4, 5).batches, a.batches)
    assert not np.array_equal(plan_epoch(bi, 4, 3, 6).batches, a.batches)


def test_plan_edge_cases():
    assert len(plan_epoch(np.full(10, -1), 4)) == 0
    assert len(plan_epoch(np.zeros(3, np.int64), 4)) == 0
    p = plan_epoch(np.array([0, 0, 0, 1, 1, 1, 2, 2]), 2)  # remainders of buckets 0 and 1 → catch-all
    assert len(p) == 4 and p.catch_all.sum() == 1
    assert sorted(p.batches[p.catch_all][0].tolist()) in ([0, 3], [0, 4], [0, 5], [1, 3], [1, 4], [1, 5],
                                                          [2, 3], [2, 4], [2, 5])
    with pytest.raises(ValueError):
        plan_epoch(np.zeros(8, np.int64), 2, rank=2, world_size=2)


def sequential_reference(sizes_in_batches, rng):
    """§4.1.2 literally: draw a bucket ∝ remaining size, take one batch, drop it when empty."""
    remaining = np.array(sizes_in_batches, dtype=float)
    out = []
    while remaining.sum() > 0:
        k = min(np.searchsorted(np.cumsum(remaining), rng.random() * remaining.sum(), 'right'),
                len(remaining) - 1)
        remaining[k] -= 1
        out.append(k)
    return np.array(out)


def test_proportional_draw_statistics():
    bsz, epochs = 10, 1500
    bi = np.repeat([0, 1, 2], [600, 300, 100])  # 60, 30 and 10 batches, no catch-all
    first, late, pos_small = np.zeros(3), 0., []
    rng = np.random.default_rng(0)
    ref_first, ref_late = np.zeros(3), 0.
    for e in range(epochs):
        lab = plan_epoch(bi, bsz, epoch=e).bucket
        assert np.bincount(lab).tolist() == [60, 30, 10]
        first[lab[0]] += 1
        late += (lab[-50:] == 2).sum()
        pos_small.append(np.flatnonzero(lab == 2).mean() / 99)
        ref = sequential_reference([60, 30, 10], rng)
        ref_first[ref[0]] += 1
        ref_late += (ref[-50:] == 2).sum()
    p = np.array([0.6, 0.3, 0.1])
    sd = np.sqrt(p * (1 - p) / epochs)
    assert (np.abs(first / epochs - p) < 4 * sd).all()
    assert (np.abs(ref_first / epochs - p) < 4 * sd).all()
    # small buckets neither empty early nor linger: half their batches fall in the last half of the epoch
    assert abs(late / (10 * epochs) - 0.5) < 0.03 and abs(ref_late / (10 * epochs) - 0.5) < 0.03
    assert abs(np.mean(pos_small) - 0.5) < 0.02


class KeyDataset:
    def __getitem__(self, key):
        return key


def test_sampler_yields_keys_and_works_with_dataloader():
    b = make_buckets()
    bi = random_bucket_idx(500, seed=4)
    s = BucketSampler(bi, b, batch_size=4, rank=1, world_size=2, seed=9)
    plan = plan_epoch(bi, 4, 0, 9, 1, 2)
    loader = DataLoader(KeyDataset(), batch_sampler=s, collate_fn=lambda keys: keys)
    s.set_epoch(0)
    got = list(loader)
    assert len(got) == len(s) == len(plan)
    for keys, row, k in zip(got, plan.batches, plan.bucket):
        assert [x.index for x in keys] == row.tolist()
        assert {(x.w, x.h) for x in keys} == {tuple(b[k])}
    s2 = BucketSampler(bi, b, batch_size=4, rank=1, world_size=2, seed=9)
    for keys, row, k in zip(s2, plan.batches, plan.bucket):
        assert all(isinstance(x, BucketKey) for x in keys)
        assert [x.index for x in keys] == row.tolist()
        assert {(x.w, x.h) for x in keys} == {tuple(b[k])}


def test_sampler_resume_mid_epoch_and_across_epochs():
    b = make_buckets()
    bi = random_bucket_idx(997, seed=5)

    def make():
        return BucketSampler(bi, b, batch_size=3, rank=0, world_size=2, seed=1)

    ref = make()
    full = []
    for e in range(3):
        ref.set_epoch(e)
        full += [(e, wh, idx) for wh, idx in ref.batches()]
    per_epoch = len(ref)
    for k in [0, 1, 7, per_epoch - 1, per_epoch, per_epoch + 5]:
        s = make()
        it, seen = None, []
        for e in range(3):
            s.set_epoch(e)
            it = s.batches()
            for wh, idx in it:
                seen.append((e, wh, idx))
                if len(seen) == k:
                    break
            if len(seen) == k:
                break
        state = s.state_dict()
        t = make()
        t.load_state_dict(state)
        rest = []
        for e in range(state['epoch'], 3):
            t.set_epoch(e)
            rest += [(e, wh, idx) for wh, idx in t.batches()]
        assert seen + rest == full, k


def test_sampler_state_position_override_and_mismatch():
    bi = random_bucket_idx(400, seed=6)
    s = BucketSampler(bi, make_buckets(), batch_size=4)
    it = iter(s)
    for _ in range(10):
        next(it)
    state = s.state_dict(position=6)  # e.g. a prefetching DataLoader: only 6 consumed
    t = BucketSampler(bi, make_buckets(), batch_size=4)
    t.load_state_dict(state)
    plan = plan_epoch(bi, 4)
    assert [x.index for x in next(iter(t))] == plan.batches[6].tolist()
    with pytest.raises(ValueError):
        BucketSampler(bi, make_buckets(), batch_size=5).load_state_dict(state)
    other = bi.copy()
    other[0] = -1 if other[0] >= 0 else 0
    with pytest.raises(ValueError):
        BucketSampler(other, make_buckets(), batch_size=4).load_state_dict(state)
