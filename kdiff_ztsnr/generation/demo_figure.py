"""The demo's figure, drawn with PIL alone (no plotting library in the core install).

Blocks per sampler, rows per regime (σ = ∞, 20000, 14.6146), columns per (prompt, seed): tiles
nearest-upscaled on a neutral grey canvas, each tile's mean brightness under it, then per sampler the histogram
of the unconditional model's brightness per regime against the training data.
"""

import os
from typing import Optional

import numpy as np
import torch

GREY, INK, FAINT = (128, 128, 128), (255, 255, 255), (215, 215, 215)
REGIME_COLORS = {'exact inf': (40, 110, 255), 'clamp 20000': (255, 200, 0), 'sigma_max 14.6146': (230, 30, 40)}
REGIME_LABELS = {  # (unicode, ascii): the default font has no σ or ∞
    'exact inf': (('σ = ∞', 'exact, this package'), ('sigma = inf', 'exact, this package')),
    'clamp 20000': (('σ = 20000', 'clamp, report A.2'), ('sigma = 20000', 'clamp, report A.2')),
    'sigma_max 14.6146': (('σ = 14.6146', "SDXL's finite start"), ('sigma = 14.6146', "SDXL's finite start")),
}
SAMPLER_NOTES = {'euler_ancestral': "NAI's default", 'dpmpp_2m': 'multistep, second order'}
TILE, GAP, GROUP_GAP, LABEL_W = 96, 6, 22, 270


def brightness(images: torch.Tensor) -> torch.Tensor:
    """Per-image mean brightness in [0, 1] of images in [−1, 1] [B, 3, H, W]."""
    return (images.float().flatten(1).mean(1) + 1) / 2


class Fonts:
    """DejaVu Sans where the system or matplotlib has it (σ, ∞); else PIL's default font with ASCII labels."""

    def __init__(self):
        from PIL import ImageFont
        self.path = None
        for name in ('DejaVuSans.ttf', self._matplotlib_font()):
            try:
                if name:
                    ImageFont.truetype(name, 12)
                    self.path = name
                    break
            except OSError:
                continue
        self.unicode = self.path is not None
        self._cache = {}

    @staticmethod
    def _matplotlib_font() -> Optional[str]:
        import importlib.util
        spec = importlib.util.find_spec('matplotlib')
        if spec is None or not spec.submodule_search_locations:
            return None
        return os.path.join(list(spec.submodule_search_locations)[0], 'mpl-data', 'fonts', 'ttf', 'DejaVuSans.ttf')

    def __call__(self, size: int):
        from PIL import ImageFont
        if size not in self._cache:
            self._cache[size] = ImageFont.truetype(self.path, size) if self.path else ImageFont.load_default(size)
        return self._cache[size]


def to_tile(image: torch.Tensor, side: int):
    """A [3, H, W] image in [−1, 1] as a PIL tile, nearest-upscaled by an integer factor to about `side`."""
    from PIL import Image
    arr = ((image.float().cpu() + 1) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
    k = max(1, side // max(arr.shape[:2]))
    return Image.fromarray(arr).resize((arr.shape[1] * k, arr.shape[0] * k), Image.NEAREST)


def layout(results: dict, tiles: int) -> tuple[list, list, list, int]:
    """(samplers, prompts, regimes, tile side) in the order the results were made."""
    samplers = list(dict.fromkeys(k[0] for k in results))
    prompts = list(dict.fromkeys(k[1] for k in results))
    regimes = list(dict.fromkeys(k[2] for k in results))
    first = next(iter(results.values()))
    side = max(1, TILE // max(first.shape[-2:])) * max(first.shape[-2:])
    return samplers, prompts, regimes, side


def draw_tiles(draw, canvas, results: dict, fonts: Fonts, tiles: int, top: int) -> int:
    """The tile blocks from y = top; returns the y below them."""
    samplers, prompts, regimes, side = layout(results, tiles)
    group_w = tiles * side + (tiles - 1) * GAP
    y = top
    for prompt_i, prompt in enumerate(prompts):                   # column headers
        x = LABEL_W + prompt_i * (group_w + GROUP_GAP)
        draw.text((x, y), prompt or '(unconditional, scale 1)', font=fonts(19), fill=INK)
        for s in range(tiles):
            draw.text((x + s * (side + GAP), y + 26), f'seed {s}', font=fonts(14), fill=FAINT)
    y += 50
    for sampler in samplers:
        draw_sampler_header(draw, fonts, y, sampler, misses(results, sampler, regimes[0]))
        y += 34
        for regime in regimes:
            big, small = REGIME_LABELS.get(regime, ((regime, ''),) * 2)[0 if fonts.unicode else 1]
            draw.rectangle([12, y + 6, 22, y + 16], fill=REGIME_COLORS.get(regime, INK))
            draw.text((30, y), big, font=fonts(26), fill=INK)
            draw.text((30, y + 34), small, font=fonts(15), fill=FAINT)
            for prompt_i, prompt in enumerate(prompts):
                images = results[sampler, prompt, regime][:tiles]
                for s, (img, b) in enumerate(zip(images, brightness(images).tolist())):
                    x = LABEL_W + prompt_i * (group_w + GROUP_GAP) + s * (side + GAP)
                    canvas.paste(to_tile(img, side), (x, y))
                    draw.text((x + side // 2, y + side + 3), f'{b:.3f}', font=fonts(16), fill=INK, anchor='ma')
            y += side + 28
        y += 10
    return y


def draw_sampler_header(draw, fonts: Fonts, y: int, sampler: str, miss: str) -> None:
    """The sampler's name (and what it is), then any warning from `misses` after it."""
    note = SAMPLER_NOTES.get(sampler)
    title = sampler + (f' ({note})' if note else '')
    draw.text((12, y), title, font=fonts(22), fill=INK)
    if miss:
        x = max(LABEL_W, 12 + draw.textlength(title, font=fonts(22)) + 24)
        draw.text((x, y + 4), miss, font=fonts(17), fill=(255, 225, 120))


def misses(results: dict, sampler: str, regime: str) -> str:
    """A warning when this sampler's first regime leaves the solid prompts short of black (< 0.05) or white (> 0.95)."""
    short = []
    for prompt, ok in (('completely black', lambda b: b < 0.05), ('completely white', lambda b: b > 0.95)):
        if (sampler, prompt, regime) in results:
            b = brightness(results[sampler, prompt, regime]).mean().item()
            if not ok(b):
                short.append(f'{prompt.split()[-1]} ({b:.3f})')
    return f'with its default schedule, the first row misses {" and ".join(short)}' if short else ''


def histogram(values: np.ndarray, bins: int) -> np.ndarray:
    counts, _ = np.histogram(np.clip(values, 0, 1), bins=bins, range=(0, 1))
    return counts / max(1, len(values))


def draw_histogram(draw, box: tuple, series: dict, data: Optional[np.ndarray], fonts: Fonts, title: str,
                   bins: int = 20) -> None:
    """Brightness histograms (fraction per bin) in box = (x0, y0, x1, y1): data as grey bars, regimes as lines."""
    x0, y0, x1, y1 = box
    px0, py0, px1, py1 = x0 + 50, y0 + 34, x1 - 10, y1 - 40
    hists = {k: histogram(v, bins) for k, v in series.items()}
    ref = histogram(data, bins) if data is not None else None
    top = max([h.max() for h in hists.values()] + ([ref.max()] if ref is not None else []) + [1e-9]) * 1.1
    draw.text((x0, y0), title, font=fonts(18), fill=INK)
    draw.rectangle([px0, py0, px1, py1], fill=(110, 110, 110))
    bx = lambda i: px0 + (px1 - px0) * i / bins
    by = lambda f: py1 - (py1 - py0) * f / top
    if ref is not None:
        for i, f in enumerate(ref):
            draw.rectangle([bx(i) + 1, by(f), bx(i + 1) - 1, py1], fill=(185, 185, 185))
    for name, h in hists.items():            # the first drawn widest: identical curves stay visible
        width = 8 if name == next(iter(hists)) else 3
        pts = [(bx(0), py1)] + [p for i, f in enumerate(h) for p in ((bx(i), by(f)), (bx(i + 1), by(f)))] + \
              [(bx(bins), py1)]
        draw.line(pts, fill=REGIME_COLORS.get(name, INK), width=width)
    for t in (0, .25, .5, .75, 1):
        draw.line([(bx(t * bins), py1), (bx(t * bins), py1 + 5)], fill=INK)
        draw.text((bx(t * bins), py1 + 7), f'{t:g}', font=fonts(14), fill=INK, anchor='ma')
    draw.text(((px0 + px1) / 2, py1 + 22), 'mean brightness of an image', font=fonts(14), fill=FAINT, anchor='ma')
    draw.text((x0, py0), f'{top / 1.1:.2f}', font=fonts(13), fill=FAINT)
    draw.text((x0, py1 - 14), '0', font=fonts(13), fill=FAINT)


def draw_legend(draw, x: int, y: int, regimes: list, fonts: Fonts, with_data: bool) -> None:
    items = [(REGIME_COLORS.get(r, INK), REGIME_LABELS.get(r, ((r, ''),) * 2)[0 if fonts.unicode else 1][0])
             for r in regimes]
    if with_data:
        items.append(((185, 185, 185), 'training data'))
    for color, label in items:
        draw.rectangle([x, y + 4, x + 22, y + 16], fill=color)
        draw.text((x + 30, y), label, font=fonts(16), fill=INK)
        y += 24


def save_figure(results: dict, path: str, data: Optional[torch.Tensor] = None, tiles: int = 3,
                steps: Optional[int] = None) -> None:
    """Write the figure for results {(sampler, prompt, regime): images [B, 3, H, W]} to path (PNG)."""
    from PIL import Image, ImageDraw
    fonts = Fonts()
    samplers, prompts, regimes, side = layout(results, tiles)
    width = LABEL_W + len(prompts) * (tiles * side + (tiles - 1) * GAP + GROUP_GAP)
    height = 120 + 50 + len(samplers) * (44 + len(regimes) * (side + 28)) + 300
    canvas = Image.new('RGB', (width, height), GREY)
    draw = ImageDraw.Draw(canvas)
    sigma, inf = ('σ', '∞') if fonts.unicode else ('sigma', 'inf')
    draw.text((12, 10), 'Same prompts, same seeds, three starting noise levels' +
              (f' ({steps} steps, CFG 5)' if steps else ''), font=fonts(26), fill=INK)
    draw.text((12, 48), f'From {sigma} = {inf} (and its 20000 clamp) "completely black" and "completely white" reach '
              'black and white;', font=fonts(17), fill=FAINT)
    draw.text((12, 72), 'from 14.6146 they stay greyer, and the unconditional brightness histogram shifts away from '
              'the training data.', font=fonts(17), fill=FAINT)
    y = draw_tiles(draw, canvas, results, fonts, tiles, 110)
    uncond = [p for p in prompts if not p]
    if uncond:
        data_np = None if data is None else data.numpy()
        panel_w = (width - LABEL_W) // max(1, len(samplers))
        draw_legend(draw, 12, y + 40, regimes, fonts, data is not None)
        for i, sampler in enumerate(samplers):
            series = {r: brightness(results[sampler, '', r]).numpy() for r in regimes}
            n = len(next(iter(series.values())))
            draw_histogram(draw, (LABEL_W + i * panel_w, y, LABEL_W + (i + 1) * panel_w - 20, y + 280), series,
                           data_np, fonts, f'{sampler}: unconditional, {n} seeds')
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    canvas.save(path)
