"""kdiff_ztsnr.generation.demo_figure: the demo's figure (PIL only): brightness, nearest-upscaled tiles placed on
a grey canvas by sampler × regime rows and prompt × seed columns, the "misses black/white" warning, histograms."""

import numpy as np
import pytest
import torch
from PIL import Image

from kdiff_ztsnr.generation import demo_figure as fig


def solid(value: float, n: int = 2, h: int = 16, w: int = 16) -> torch.Tensor:
    return torch.full((n, 3, h, w), value)


def test_brightness_is_the_mean_in_0_1():
    images = torch.stack([torch.full((3, 4, 4), -1.), torch.full((3, 4, 4), 1.), torch.linspace(-1, 0, 48).view(3, 4, 4)])
    torch.testing.assert_close(fig.brightness(images), torch.tensor([0., 1., 0.25]))


def test_to_tile_upscales_by_an_integer_factor_with_nearest():
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, 8, 16), generator=g).float() / 127.5 - 1
    tile = fig.to_tile(image, 96)
    assert tile.size == (96, 48)                                    # k = 96 // 16 = 6, aspect kept
    arr, want = np.asarray(tile), ((image + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    assert np.array_equal(arr[::6, ::6], want) and np.array_equal(arr[5::6, 5::6], want)
    assert fig.to_tile(image, 10).size == (16, 8)                   # never shrunk


def test_layout_keeps_the_order_results_were_made():
    results = {('dpmpp_2m', 'b', 'r2'): solid(0, h=8, w=8), ('dpmpp_2m', 'a', 'r1'): solid(0, h=8, w=8),
               ('euler', 'b', 'r1'): solid(0, h=8, w=8)}
    assert fig.layout(results, 3) == (['dpmpp_2m', 'euler'], ['b', 'a'], ['r2', 'r1'], 96)


def test_misses_warns_when_solid_prompts_fall_short():
    ok = {('euler', 'completely black', 'exact inf'): solid(-0.95), ('euler', 'completely white', 'exact inf'): solid(0.95)}
    assert fig.misses(ok, 'euler', 'exact inf') == ''
    short = {('euler', 'completely black', 'exact inf'): solid(-0.6), ('euler', 'completely white', 'exact inf'): solid(0.8)}
    assert fig.misses(short, 'euler', 'exact inf') == \
        'with its default schedule, the first row misses black (0.200) and white (0.900)'
    assert fig.misses(short, 'euler', 'other regime') == '' and fig.misses({}, 'euler', 'exact inf') == ''


def test_histogram_is_fractions_of_the_clipped_values():
    assert fig.histogram(np.array([0., 0.5, 1.2, -1.]), 4).tolist() == [0.5, 0., 0.25, 0.25]
    assert fig.histogram(np.array([]), 3).tolist() == [0., 0., 0.]


def test_fonts_are_cached_and_match_their_labels():
    fonts = fig.Fonts()
    assert fonts(14) is fonts(14) and fonts.unicode == (fonts.path is not None)


@pytest.mark.parametrize('steps', [None, 6])
def test_figure_places_each_tile(tmp_path, steps):
    regimes = ['exact inf', 'sigma_max 14.6146']
    g = torch.Generator().manual_seed(1)
    results = {('euler_ancestral', 'completely black', regimes[0]): solid(-1.),
               ('euler_ancestral', 'completely black', regimes[1]): solid(0.6),
               ('euler_ancestral', '', regimes[0]): torch.rand(4, 3, 16, 16, generator=g) * 2 - 1,
               ('euler_ancestral', '', regimes[1]): torch.rand(4, 3, 16, 16, generator=g) * 2 - 1}
    path = tmp_path / 'new' / 'regimes.png'
    fig.save_figure(results, str(path), data=torch.rand(10, generator=g), tiles=2, steps=steps)
    with Image.open(path) as im:
        canvas = np.asarray(im.convert('RGB'))
    side, group = 96, 2 * 96 + fig.GAP                               # 16-pixel images upscaled ×6
    assert canvas.shape == (120 + 50 + 44 + 2 * (side + 28) + 300, fig.LABEL_W + 2 * (group + fig.GROUP_GAP), 3)
    assert (canvas[-3, -3] == fig.GREY).all()
    rows = [110 + 50 + 34, 110 + 50 + 34 + side + 28]                # one sampler header, then a row per regime
    for seed in range(2):
        x = fig.LABEL_W + seed * (side + fig.GAP)
        assert (canvas[rows[0]:rows[0] + side, x:x + side] == 0).all()        # black, exactly the tile
        assert (canvas[rows[1]:rows[1] + side, x:x + side] == 204).all()      # (0.6 + 1) · 127.5
    x = fig.LABEL_W + group + fig.GROUP_GAP                           # the unconditional column
    want = fig.to_tile(results['euler_ancestral', '', regimes[0]][1], side)
    assert np.array_equal(canvas[rows[0]:rows[0] + side, x + side + fig.GAP:x + 2 * side + fig.GAP], np.asarray(want))
    y = rows[1] + side + 28 + 10              # the histogram panel: background, data bars, a line per regime
    panel = {tuple(c) for c in canvas[y + 34:y + 240, fig.LABEL_W + 50:canvas.shape[1] - 30].reshape(-1, 3)}
    assert {(110, 110, 110), (185, 185, 185), *(fig.REGIME_COLORS[r] for r in regimes)} <= panel
