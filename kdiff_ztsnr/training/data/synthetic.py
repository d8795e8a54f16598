"""A procedural, captioned image dataset for examples and tests, written as PNG + sidecar .txt tags.

Every image is a pure function of (seed, index): a solid colour (tags ``completely black``) or a shape on a
background (tags ``red circle, blue background``). Solid black and white images are the zero-terminal-SNR
test case: a model trained with σ = ∞ can produce them, one trained on SDXL's σ_max cannot (report §2.2).
Writing real files means training exercises the same folder loader, buckets and tag weights as user data.
"""

import json
from pathlib import Path
from typing import Sequence, Union

import numpy as np
from PIL import Image, ImageDraw

COLORS = {'black': (0, 0, 0), 'white': (255, 255, 255), 'red': (220, 30, 30), 'green': (30, 170, 60),
          'blue': (30, 60, 220), 'yellow': (240, 210, 40)}
SHAPES = ('circle', 'square', 'triangle')
MANIFEST = 'synthetic.json'


def synthetic_caption(index: int, seed: int = 0, solid_fraction: float = 0.25) -> dict:
    """The scene of item `index`: {'tags', 'background', 'shape', 'color', 'box' (fractions of the canvas)}."""
    rng = np.random.default_rng([seed, index])
    names = list(COLORS)
    bg = names[rng.integers(len(names))]
    if rng.random() < solid_fraction:
        return {'tags': [f'completely {bg}'], 'background': bg, 'shape': None, 'color': None, 'box': None}
    fg = names[rng.choice([k for k in range(len(names)) if names[k] != bg])]
    shape = SHAPES[rng.integers(len(SHAPES))]
    r = rng.uniform(0.2, 0.35)
    cx, cy = rng.uniform(r, 1 - r, size=2)
    return {'tags': [f'{fg} {shape}', f'{bg} background'], 'background': bg, 'shape': shape, 'color': fg,
            'box': [cx - r, cy - r, cx + r, cy + r]}


def render(scene: dict, size: tuple[int, int]) -> Image.Image:
    """Draw a scene at (w, h) pixels."""
    w, h = size
    im = Image.new('RGB', (w, h), COLORS[scene['background']])
    if scene['shape'] is None:
        return im
    x0, y0, x1, y1 = (v * s for v, s in zip(scene['box'], (w, h, w, h)))
    draw, fill = ImageDraw.Draw(im), COLORS[scene['color']]
    if scene['shape'] == 'circle':
        draw.ellipse([x0, y0, x1, y1], fill=fill)
    elif scene['shape'] == 'square':
        draw.rectangle([x0, y0, x1, y1], fill=fill)
    else:
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    return im


def make_synthetic_dataset(root: Union[str, Path], n: int = 64, sizes: Sequence[Sequence[int]] = ((32, 32),),
                           seed: int = 0, solid_fraction: float = 0.25) -> Path:
    """Write n images `{i:05d}.png` + `{i:05d}.txt` under root (sizes cycled by index) and a manifest.

    Idempotent: a folder whose manifest matches the arguments is left as is. Returns root.
    """
    root = Path(root)
    spec = {'n': n, 'sizes': [list(map(int, s)) for s in sizes], 'seed': seed, 'solid_fraction': solid_fraction}
    manifest = root / MANIFEST
    if manifest.is_file() and json.loads(manifest.read_text()) == spec:
        return root
    root.mkdir(parents=True, exist_ok=True)
    for stale in [*root.glob('[0-9]*.png'), *root.glob('[0-9]*.txt')]:
        if stale.stem.isdigit() and int(stale.stem) >= n:
            stale.unlink()
    for i in range(n):
        scene = synthetic_caption(i, seed, solid_fraction)
        render(scene, tuple(spec['sizes'][i % len(spec['sizes'])])).save(root / f'{i:05d}.png')
        (root / f'{i:05d}.txt').write_text(', '.join(scene['tags']) + '\n', encoding='utf-8')
    manifest.write_text(json.dumps(spec))
    return root


def synthetic_spec(config: dict):
    """The synthetic-set spec of a training config, or None when the model was trained on other data."""
    ds = config.get('dataset') if isinstance(config, dict) else None
    if not isinstance(ds, dict) or ds.get('type') != 'synthetic':
        return None
    return ds.get('synthetic') or {}


def caption_counts(config: dict) -> dict:
    """{caption: images} of the synthetic training set a config describes (empty for other data)."""
    from collections import Counter
    syn = synthetic_spec(config)
    if syn is None:
        return {}
    seed, solid = int(syn.get('seed', 0)), float(syn.get('solid_fraction', 0.25))
    counts = Counter(', '.join(synthetic_caption(i, seed, solid)['tags']) for i in range(int(syn.get('n', 64))))
    return dict(sorted(counts.items(), key=lambda kv: (not kv[0].startswith('completely'), kv[0])))


def mean_brightness(config: dict):
    """Mean brightness in [0, 1] of every image of the synthetic set a config describes (None for other data)."""
    syn = synthetic_spec(config)
    if syn is None:
        return None
    n, sizes = int(syn.get('n', 64)), syn.get('sizes') or [[32, 32]]
    seed, solid = int(syn.get('seed', 0)), float(syn.get('solid_fraction', 0.25))
    return np.array([np.asarray(render(synthetic_caption(i, seed, solid), tuple(sizes[i % len(sizes)])),
                                dtype=np.float64).mean() / 255. for i in range(n)])
