"""Tag-based loss weighting (report §4.3): class parsing and the properties of the chosen formula."""

import numpy as np
import pytest

from kdiff_ztsnr.training.data.tags import image_weights, normalize_tag, split_tag, tag_table, tag_weights, weights_from_table


def test_split_tag_prefixes_and_mapping():
    assert split_tag('artist:foo') == ('artist', 'foo')
    assert split_tag(' Artist: Foo_Bar ') == ('artist', 'foo bar')
    assert split_tag('character:hatsune_miku') == ('character', 'hatsune miku')
    assert split_tag('copyright:vocaloid')[0] == 'copyright' and split_tag('meta:absurdres')[0] == 'meta'
    assert split_tag('re:zero') == ('general', 're:zero')  # not a class prefix
    assert split_tag(':d') == ('general', ':d') and split_tag('artist:') == ('general', 'artist:')
    assert split_tag('1girl') == ('general', '1girl')
    assert split_tag('hatsune miku', {'hatsune miku': 'character'}) == ('character', 'hatsune miku')
    assert split_tag('x', default='meta') == ('meta', 'x')
    assert normalize_tag('  Long_Hair  ') == 'long hair'


def test_tag_table_counts_once_per_image_and_merges_spellings():
    caps = [['artist:A', 'long_hair', 'long hair', 'Long Hair'], ['a'], [], ['artist:a', 'hatsune_miku']]
    t = tag_table(caps, mapping={'Hatsune_Miku': 'character'})
    freq = dict(zip(t.vocab, t.freq.tolist()))
    assert freq == {'artist:a': 2, 'general:long hair': 1, 'general:a': 1, 'character:hatsune miku': 1}
    assert t.n_images == 4 and len(t.pair_image) == 5


def synthetic_captions(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    artists = [f'artist:a{k}' for k in range(60)]
    chars = [f'c{k}' for k in range(40)]
    general = [f'g{k}' for k in range(300)]
    pa = 1 / np.arange(1, 61) ** 1.1
    pg = 1 / np.arange(1, 301) ** 0.8
    caps = []
    for _ in range(n):
        k = rng.integers(0, 12)
        cap = list(rng.choice(general, k, replace=False, p=pg / pg.sum()))
        if rng.random() < 0.8:
            cap.append(str(rng.choice(artists, p=pa / pa.sum())))
        if rng.random() < 0.5:
            cap.append(chars[rng.integers(0, 40)])
        caps.append(cap)
    return caps, {c: 'character' for c in chars}


def test_tag_weights_monotone_within_class_and_bounded():
    caps, mapping = synthetic_captions()
    t = tag_table(caps, mapping)
    w = tag_weights(t.freq, t.tag_class)
    assert set(t.tag_class.tolist()) == {'artist', 'character', 'general'}
    assert (w >= 0.5).all() and (w <= 2.0).all() and (w == 2.0).any() and (w == 0.5).any()
    for c in set(t.tag_class.tolist()):
        sel = t.tag_class == c
        order = np.argsort(t.freq[sel], kind='stable')
        assert (np.diff(w[sel][order]) <= 0).all()  # non-increasing in frequency
        at_median = t.freq[sel] == np.median(t.freq[sel])
        assert np.allclose(w[sel][at_median], 1.0)


def test_rarity_is_relative_to_class():
    freq = np.array([2, 2, 2, 100, 100, 200])
    cls = np.array(['artist', 'artist', 'artist', 'general', 'general', 'general'])
    w = tag_weights(np.append(freq, 2), np.append(cls, 'general'), alpha=0.5, clip=(0.1, 10))
    assert np.allclose(w[:3], 1) and np.isclose(w[-1], (2 / 100) ** -0.5)  # same count, different class


def test_image_weights_mean_one_and_ratio_bounded():
    caps, mapping = synthetic_captions(seed=1)
    raw = image_weights(caps, mapping, normalize=False)
    w = image_weights(caps, mapping)
    assert w.shape == (len(caps),) and w.dtype == np.float64
    assert abs(w.mean() - 1) < 1e-12
    assert (raw >= 0.5 - 1e-12).all() and (raw <= 2 + 1e-12).all()
    assert w.max() / w.min() <= 4 + 1e-9
    np.testing.assert_allclose(w, raw / raw.mean())
    no_tags = np.array([len(c) == 0 for c in caps])
    assert no_tags.any() and np.allclose(raw[no_tags], 1.0)


def test_image_weight_is_geometric_mean_over_classes():
    caps = [['artist:r'], ['artist:c'] * 1, ['artist:c'], ['artist:c'], ['g1', 'g2'], ['g1'], ['g1'],
            ['artist:r', 'g1', 'g2'], []]
    t = tag_table(caps)
    w_tag = dict(zip(t.vocab, tag_weights(t.freq, t.tag_class, clip=(0.01, 100)).tolist()))
    raw = weights_from_table(t, clip=(0.01, 100), normalize=False)
    assert np.isclose(raw[0], w_tag['artist:r'])
    assert np.isclose(raw[4], np.sqrt(w_tag['general:g1'] * w_tag['general:g2']))
    expect7 = np.exp((np.log(w_tag['artist:r']) + 0.5 * np.log(w_tag['general:g1'] * w_tag['general:g2'])) / 2)
    assert np.isclose(raw[7], expect7) and raw[8] == 1.0
    assert raw[0] > raw[1]  # rare artist up-weighted relative to a common one


@pytest.mark.parametrize('caps', [[], [[]], [[], []], [['a']]])
def test_degenerate_datasets(caps):
    w = image_weights(caps)
    assert w.shape == (len(caps),) and np.allclose(w, 1.0)
