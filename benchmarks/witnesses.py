"""Trained witnesses for the defaults study: networks made by the package's own trainer, with their data.

``python -m benchmarks.witnesses [--only NAME] [--work DIR] [--smoke]`` (re)builds them; the study calls
`pipeline(name)`, which trains a missing witness once and caches its checkpoint under --work.

* ``embedded`` — the shipped model (`kdiff_ztsnr/assets/embedded`, examples/embedded/config.json): 32×32 pixels,
  synthetic shapes, 30 % solid colours. Used for choosing.
* ``latent`` — an SDXL-architecture latent model (the tiny SDXL of benchmarks/train_sdxl.py): its tiny VAE fitted to
  the synthetic set at 64×64 (50 % solid), the UNet saved as an ε file without markers and fine-tuned by the
  trainer to v-prediction ZTSNR (``source_prediction: "epsilon"``, train_sdxl --part c's run at a fixed step
  count). Used for choosing.
* ``photos`` — held out, never used for choosing: random square crops (side ¼…1 of the short side) of the
  photographs scikit-image ships offline, resized to 32×32, captioned with the photograph's name, plus solid
  black and white images captioned "completely black" / "completely white"; a smaller image_v1 of the same kind,
  trained with the package's trainer (plain v-MSE, cond dropout 0.1).

Every witness's data is a pure function of its config (`data_images`), so its statistics — mean brightness,
spread of per-image brightness, share of solid images per prompt — are recomputed, never stored.
"""

import argparse
import copy
import functools
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

PHOTOS = ('astronaut', 'coffee', 'chelsea', 'rocket', 'camera', 'coins', 'moon', 'hubble_deep_field', 'retina',
          'page', 'text', 'clock', 'immunohistochemistry', 'cell')
WORK = Path('/tmp/kdiff_ztsnr_witnesses')
SOLID = {'completely black': 0, 'completely white': 255}
CANVAS = {'embedded': 32, 'photos': 32, 'latent': 64}          # pixels per side sampled (the training canvas)
LATENT_STEPS, LATENT_VAE_STEPS = 2500, 400


def photo_config(n: int = 1024, seed: int = 0, solid_fraction: float = 0.25, steps: int = 1500) -> dict:
    """The held-out witness's trainer config (dataset.location is filled in by `train`)."""
    return {
        'model': {'type': 'image_v1', 'input_channels': 3, 'mapping_out': 64, 'depths': [1, 1, 1],
                  'channels': [32, 48, 64], 'self_attn_depths': [False, False, True],
                  'cross_attn_depths': [False, True, True], 'sigma_data': 0.5},
        'dataset': {'type': 'imagefolder', 'location': None, 'cond_dropout_rate': 0.1, 'tag_weights': {},
                    'buckets': {'max_area': 1024, 'max_side': 32, 'min_side': 32, 'step': 16, 'extra': [[32, 32]]},
                    'photo_crops': {'n': n, 'seed': seed, 'solid_fraction': solid_fraction}},
        'text': {'type': 'clip', 'encoders': [{'hidden_size': 32, 'intermediate_size': 64, 'num_hidden_layers': 2,
                                               'num_attention_heads': 2, 'projection_dim': 32}], 'seed': 0},
        'optimizer': {'type': 'adamw', 'lr': 1e-3, 'betas': [0.9, 0.99], 'eps': 1e-8, 'weight_decay': 1e-3},
        'lr_sched': {'type': 'constant', 'warmup': 0.99},
        'ema_sched': {'type': 'inverse', 'power': 0.75, 'max_value': 0.999},
        'training': {'steps': steps, 'batch_size': 16, 'cpu': True, 'threads': 1, 'seed': 0, 'min_snr_gamma': None,
                     'terminal_weight': 1.0, 'checkpoint_every': steps, 'keep_checkpoints': 1, 'log_every': 100,
                     'out_dir': None},
    }


@functools.lru_cache(maxsize=None)
def photo(name: str) -> np.ndarray:
    """A scikit-image photograph as uint8 RGB (grey ones repeated over the channels)."""
    from skimage import data
    im = np.asarray(getattr(data, name)())
    return np.repeat(im[..., None], 3, axis=2) if im.ndim == 2 else im[..., :3]


def photo_item(index: int, seed: int = 0, solid_fraction: float = 0.25, size: int = 32) -> tuple:
    """(uint8 HWC image, caption) of item `index`: a solid black/white image or a random crop of a photograph."""
    rng = np.random.default_rng([seed, index])
    if rng.random() < solid_fraction:
        caption = ('completely black', 'completely white')[int(rng.integers(2))]
        return np.full((size, size, 3), SOLID[caption], np.uint8), caption
    name = PHOTOS[int(rng.integers(len(PHOTOS)))]
    im = photo(name)
    h, w = im.shape[:2]
    side = int(rng.integers(min(h, w) // 4, min(h, w) + 1))
    y, x = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
    crop = Image.fromarray(im[y:y + side, x:x + side]).resize((size, size), Image.BICUBIC)
    return np.asarray(crop), name.replace('_', ' ')


def write_photo_dataset(root: Path, n: int, seed: int, solid_fraction: float) -> Path:
    """The folder the trainer reads (PNG + caption .txt), idempotent on its manifest."""
    spec = {'n': n, 'seed': seed, 'solid_fraction': solid_fraction}
    manifest = root / 'photo_crops.json'
    if manifest.is_file() and json.loads(manifest.read_text()) == spec:
        return root
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        im, caption = photo_item(i, seed, solid_fraction)
        Image.fromarray(im).save(root / f'{i:05d}.png')
        (root / f'{i:05d}.txt').write_text(caption + '\n', encoding='utf-8')
    manifest.write_text(json.dumps(spec))
    return root


def embedded_config() -> dict:
    from kdiff_ztsnr.generation.lookup import EMBEDDED
    from safetensors import safe_open
    with safe_open(str(EMBEDDED / 'ema.safetensors'), 'pt') as f:
        return json.loads(f.metadata()['config'])


def latent_config(work: Path = WORK) -> dict:
    from benchmarks.train_sdxl import trainer_config
    cfg = trainer_config(work / 'latent', work / 'latent_eps.safetensors', LATENT_STEPS, 8, save_diffusers=True)
    cfg['model']['source_prediction'] = 'epsilon'
    cfg['dataset'].update(type='imagefolder', location=str(work / 'latent_data'), cache_latents=True)
    cfg['training']['checkpoint_every'] = LATENT_STEPS
    return cfg


def config(name: str) -> dict:
    return {'embedded': embedded_config, 'photos': photo_config, 'latent': latent_config}[name]()


def data_images(name: str, cfg: dict = None) -> tuple[np.ndarray, list]:
    """Every training image of the witness as float brightness-ready arrays in [0, 1] [N, H, W, 3], captions."""
    cfg = cfg or config(name)
    ds = cfg['dataset']
    if name == 'latent':                           # the synthetic set train_sdxl writes to its image folder
        ds = {'type': 'synthetic', 'synthetic': {'n': 64, 'sizes': [[64, 64]], 'seed': 0, 'solid_fraction': 0.5}}
    if ds['type'] == 'synthetic':
        from kdiff_ztsnr.training.data.synthetic import render, synthetic_caption
        sc = ds['synthetic']
        scenes = [synthetic_caption(i, sc['seed'], sc['solid_fraction']) for i in range(sc['n'])]
        ims = [np.asarray(render(s, tuple(sc['sizes'][i % len(sc['sizes'])]))) for i, s in enumerate(scenes)]
        return np.stack(ims).astype(np.float64) / 255, [', '.join(s['tags']) for s in scenes]
    pc = ds['photo_crops']
    items = [photo_item(i, pc['seed'], pc['solid_fraction']) for i in range(pc['n'])]
    return np.stack([im for im, _ in items]).astype(np.float64) / 255, [c for _, c in items]


def data_stats(name: str, cfg: dict = None) -> dict:
    """Mean and spread (std) of per-image mean brightness over the data (the unconditional target), the
    per-image brightnesses themselves, and per solid prompt its images' mean brightness and share of the data."""
    ims, caps = data_images(name, cfg)
    b = ims.mean(axis=(1, 2, 3))
    solid = {p: {'share': float(np.mean([c == p for c in caps])),
                 'mean': float(b[[c == p for c in caps]].mean())} for p in SOLID if p in caps}
    return {'n': len(b), 'mean': float(b.mean()), 'spread': float(b.std()), 'brightness': b.tolist(),
            'solid': solid}


def train(name: str, work: Path = WORK, cfg: dict = None) -> Path:
    """Train the witness with the package's trainer (cached: a finished checkpoint is reused); cfg: its config
    (default config(name))."""
    from kdiff_ztsnr.training import Trainer
    out = work / name
    done = sorted(out.glob('checkpoint-*[0-9]'))
    if done:
        return done[-1]
    if name == 'latent':
        return train_latent(work)
    cfg = copy.deepcopy(cfg or config(name))
    pc = cfg['dataset'].pop('photo_crops')
    cfg['dataset']['location'] = str(write_photo_dataset(work / f'{name}_data', pc['n'], pc['seed'],
                                                         pc['solid_fraction']))
    cfg['training']['out_dir'] = str(out)
    t0 = time.time()
    Trainer(cfg).run()
    (out / 'train_seconds.txt').write_text(f'{time.time() - t0:.0f}\n')
    return sorted(out.glob('checkpoint-*[0-9]'))[-1]


def train_latent(work: Path) -> Path:
    """train_sdxl --part c's ε → v run for LATENT_STEPS steps (its VAE fitted first), cached."""
    from safetensors.torch import load_file, save_file
    from benchmarks import train_sdxl
    from benchmarks.subjects import tiny_sdxl_pipeline
    from kdiff_ztsnr.models import sdxl
    from kdiff_ztsnr.training import Trainer
    from kdiff_ztsnr.training.data.synthetic import make_synthetic_dataset
    t0 = time.time()
    root = make_synthetic_dataset(work / 'latent_data', 64, [[64, 64]], 0, 0.5)
    vae, _ = train_sdxl.fit_vae(root, LATENT_VAE_STEPS)
    eps = work / 'latent_eps.safetensors'
    sdxl.save_single_file(tiny_sdxl_pipeline(vae), eps)
    save_file({k: v for k, v in load_file(str(eps)).items() if k not in ('v_pred', 'ztsnr')}, str(eps))
    train_sdxl.reset_accelerate()
    Trainer(latent_config(work)).run()
    (work / 'latent' / 'train_seconds.txt').write_text(f'{time.time() - t0:.0f}\n')
    return sorted((work / 'latent').glob('checkpoint-*[0-9]'))[-1]


def pipeline(name: str, work: Path = WORK):
    from kdiff_ztsnr.generation.lookup import load_pipeline
    if name == 'embedded':
        return load_pipeline('embedded')
    ckpt = train(name, work)
    return load_pipeline(ckpt / 'diffusers' if name == 'latent' else ckpt)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--only', default='photos')
    p.add_argument('--work', default=str(WORK))
    p.add_argument('--smoke', action='store_true', help='the photos witness trained 2 steps on 16 images (plumbing '
                   'only; give a --work of its own)')
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    cfg = None
    if a.smoke:
        a.only, cfg = 'photos', photo_config(n=16, steps=2)
    ckpt = train(a.only, Path(a.work), cfg) if a.only != 'embedded' else None
    print(ckpt or 'embedded ships with the package')
    st = data_stats(a.only, cfg)
    print({k: v for k, v in st.items() if k != 'brightness'})
    return {'checkpoint': ckpt, 'stats': st}


if __name__ == '__main__':
    main()
