"""Tests for kdiff_ztsnr.models, .synthetic and .training: model building, the procedural dataset, the
trainer (loss falls, exact resume, latents, unreadable images, bf16) and two-rank data parallelism."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from kdiff_ztsnr import cli, models, training
from kdiff_ztsnr.losses import v_loss
from kdiff_ztsnr.models.trained import load_trained, resolve_checkpoint
from kdiff_ztsnr.text import CachedText, build_text
from kdiff_ztsnr.training.data.images import ImageFolderDataset
from kdiff_ztsnr.training.data.latents import cache_latents
from kdiff_ztsnr.sampling import sample_euler
from kdiff_ztsnr.training.data.synthetic import make_synthetic_dataset, synthetic_caption

BUCKETS_16 = {'max_area': 256, 'max_side': 32, 'min_side': 16, 'step': 16, 'extra': [[16, 16]]}
MODEL = {'type': 'image_v1', 'input_channels': 3, 'mapping_out': 32, 'depths': [1, 1], 'channels': [16, 32],
         'self_attn_depths': [False, True]}


pytestmark = pytest.mark.usefixtures('fresh_process_state')   # conftest: a fresh accelerate state per test


def tiny_config(out_dir, **training_overrides) -> dict:
    return {
        'model': dict(MODEL),
        'dataset': {'type': 'synthetic', 'location': str(Path(out_dir) / 'data'), 'buckets': BUCKETS_16,
                    'synthetic': {'n': 16, 'sizes': [[16, 16]], 'seed': 0, 'solid_fraction': 0.25}},
        'optimizer': {'lr': 1e-3},
        'training': {'steps': 4, 'batch_size': 4, 'out_dir': str(out_dir), 'cpu': True, 'log_every': 1000,
                     'checkpoint_every': 1000, **training_overrides},
    }


# ------------------------------------------------------------------------------------------- models

def test_build_model_types():
    with pytest.raises(ValueError, match='unknown model type'):
        models.build_model({'model': {'type': 'nope'}})
    custom = {'model': {'type': 'module', 'target': 'torch.nn:Conv2d',
                        'kwargs': {'in_channels': 3, 'out_channels': 3, 'kernel_size': 1}}}
    with pytest.raises(ValueError, match='--trust-code'):           # code only from a config the user trusts
        models.build_model(custom)
    conv = models.build_model(custom, trust_code=True)
    assert isinstance(conv, torch.nn.Conv2d)
    den = models.build_denoiser({'model': dict(MODEL)})
    assert math.isinf(den.t_to_sigma(torch.tensor(999.)).item())
    clamped = models.build_denoiser({'model': dict(MODEL, sigma_max=20000.)})
    assert clamped.t_to_sigma(torch.tensor(999.)).item() == 20000.


# ---------------------------------------------------------------------------------------- synthetic

def test_synthetic_dataset_deterministic(tmp_path):
    a = make_synthetic_dataset(tmp_path / 'a', n=12, sizes=[[16, 16], [24, 16]], seed=3)
    b = make_synthetic_dataset(tmp_path / 'b', n=12, sizes=[[16, 16], [24, 16]], seed=3)
    for i in range(12):
        assert (a / f'{i:05d}.png').read_bytes() == (b / f'{i:05d}.png').read_bytes()
    ds = ImageFolderDataset(a, buckets=np.array([[16, 16], [24, 16]]))
    assert ds.sizes.tolist()[:2] == [[16, 16], [24, 16]]
    caps = ds.captions()
    for i, cap in enumerate(caps):
        scene = synthetic_caption(i, 3)
        assert cap == scene['tags']
        im = np.array(Image.open(ds.paths[i]))
        if scene['shape'] is None:                    # "completely black" etc.: one colour everywhere
            assert cap[0].startswith('completely ') and (im == im[0, 0]).all()
        else:
            assert cap[1].endswith(' background') and len(np.unique(im.reshape(-1, 3), axis=0)) >= 2
    assert any(s['shape'] is None for s in map(lambda i: synthetic_caption(i, 3), range(12)))


# ------------------------------------------------------------------------------------------ trainer

def _flat(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.state_dict().values()])


def test_config_merge_and_dims(tmp_path):
    tr = training.Trainer(tiny_config(tmp_path))
    cfg = tr.config
    assert cfg['model']['cross_cond_dim'] == 32 and cfg['model']['mapping_cond_dim'] == 32   # from the tiny CLIP
    assert cfg['optimizer']['lr'] == 1e-3 and cfg['optimizer']['type'] == 'adamw'            # merged over defaults
    assert cfg['ema_sched']['type'] == 'inverse' and cfg['training']['min_snr_gamma'] == 5.
    bad = tiny_config(tmp_path)
    bad['model']['cross_cond_dim'] = 7
    with pytest.raises(ValueError, match='cross_cond_dim'):
        training.Trainer(bad)


def test_cached_text_matches_batch_encoding():
    cond = build_text(training.DEFAULTS['text'])
    cached = CachedText(cond, cache=2)
    short = ['red circle, blue background', 'completely black', '']
    for prompts in (short, short[::-1], [short[0], ' '.join(['word'] * 100)]):   # the last: 1 vs 2 chunks
        got, want = cached(prompts, 'cpu'), cond(prompts)
        for k in ('context', 'pooled'):
            assert got[k].shape == want[k].shape and torch.allclose(got[k], want[k], atol=1e-5)
    assert len(cached.memo) == 2


def fixed_eval_loss(tr: training.Trainer) -> float:
    """Loss of the current model on all images, with fixed t (incl. 999) and noise."""
    g = torch.Generator().manual_seed(123)
    x0 = torch.stack([tr.dataset[i]['image'] for i in range(len(tr.dataset))])
    prompts = [', '.join(c) for c in tr.dataset.captions()]
    cond = tr.encode(prompts, 'cpu')
    total = 0.
    with torch.no_grad():
        for _ in range(4):
            t = torch.randint(0, 1000, (len(x0),), generator=g)
            t[0] = 999
            noise = torch.randn(x0.shape, generator=g)
            total += v_loss(tr.model, x0, noise, t, gamma=None, **cond).mean().item()
    return total / 4


def test_loss_decreases_tiny_overfit(tmp_path):
    cfg = tiny_config(tmp_path, steps=120, batch_size=8)
    cfg['dataset']['synthetic']['n'] = 8
    cfg['dataset']['cond_dropout_rate'] = 0.
    cfg['optimizer']['lr'] = 3e-3
    tr = training.Trainer(cfg)
    before = fixed_eval_loss(tr)
    tr.run()
    after = fixed_eval_loss(tr)
    rows = [json.loads(r) for r in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
    assert [r['step'] for r in rows] == list(range(1, 121))
    assert all(math.isfinite(r['loss']) for r in rows)
    first, last = np.mean([r['loss'] for r in rows[:30]]), np.mean([r['loss'] for r in rows[-30:]])
    assert after < 0.6 * before, (before, after)
    assert last < first, (first, last)


def _run_cli(config: dict, path: Path, *args: str) -> None:
    path.write_text(json.dumps(config))
    assert cli.main(['train', '--config', str(path), *args]) == 0


@pytest.mark.parametrize('n,m', [(3, 3), (2, 2)])   # resume mid-epoch; resume exactly at an epoch boundary
def test_resume_is_exact(tmp_path, n, m):
    """N+M steps uninterrupted == N steps, stop, --resume, M steps (bit-exact). Exercises grad accumulation,
    dropout (global RNG), prompt dropout, tag weights and the bucket sampler's position."""
    def cfg(out):
        c = tiny_config(out, steps=n + m, grad_accum_steps=2, checkpoint_every=2)
        c['model']['dropout_rate'] = 0.1
        c['dataset'].update(tag_weights={}, cond_dropout_rate=0.5)
        c['dataset']['location'] = str(tmp_path / 'data')
        c['lr_sched'] = {'type': 'inverse', 'inv_gamma': 10., 'power': 1., 'warmup': 0.5}
        return c
    _run_cli(cfg(tmp_path / 'full'), tmp_path / 'full.json')
    _run_cli(cfg(tmp_path / 'split'), tmp_path / 'split.json', '--steps', str(n))
    _run_cli(cfg(tmp_path / 'split'), tmp_path / 'split.json', '--resume', str(tmp_path / 'split'))
    full = resolve_checkpoint(tmp_path / 'full')
    split = resolve_checkpoint(tmp_path / 'split')
    assert full.name == split.name == f'checkpoint-{n + m:08d}'
    for name in ('model.safetensors', 'ema.safetensors'):
        a, b = load_file(str(full / name)), load_file(str(split / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = (torch.load(p / 'state.pt', weights_only=True) for p in (full, split))
    for k, v in sa['opt']['state'].items():
        assert torch.equal(v['exp_avg'], sb['opt']['state'][k]['exp_avg'])
    assert sa['lr_sched']['last_epoch'] == sb['lr_sched']['last_epoch'] == n + m
    la = [json.loads(r)['loss'] for r in (tmp_path / 'full' / 'metrics.jsonl').read_text().splitlines()]
    lb = [json.loads(r)['loss'] for r in (tmp_path / 'split' / 'metrics.jsonl').read_text().splitlines()]
    assert la == lb and len(la) == n + m
    assert not torch.equal(load_file(str(full / 'model.safetensors'))['net.proj_out.weight'],
                           torch.zeros_like(load_file(str(full / 'model.safetensors'))['net.proj_out.weight']))


def test_checkpoint_layout_and_load_trained(tmp_path):
    tr = training.Trainer(tiny_config(tmp_path, steps=2, checkpoint_every=1, keep_checkpoints=1)).run()
    ckpt = resolve_checkpoint(tmp_path)
    assert ckpt.name == 'checkpoint-00000002' and not (tmp_path / 'checkpoint-00000001').exists()
    assert {p.name for p in ckpt.iterdir()} == {'model.safetensors', 'ema.safetensors', 'text.safetensors',
                                                 'state.pt', 'rank-0.pt'}
    from k_diffusion import config as k_config
    assert k_config.load_config(ckpt / 'model.safetensors')['model']['channels'] == [16, 32]
    model, text, cfg = load_trained(tmp_path)
    assert torch.equal(_flat(model.inner_model), _flat(tr.inner_ema))
    cond = text(['completely black', 'completely white'])
    x = sample_euler(model, torch.randn(2, 3, 16, 16), model.get_sigmas(4), extra_args=cond, disable=True)
    assert x.shape == (2, 3, 16, 16) and torch.isfinite(x).all()
    assert cli.main(['train', '--resume', str(tmp_path), '--steps', '3']) == 0   # config from the checkpoint
    assert resolve_checkpoint(tmp_path).name == 'checkpoint-00000003'


def test_unreadable_images_are_skipped(tmp_path):
    cfg = tiny_config(tmp_path, steps=4, batch_size=4)
    root = make_synthetic_dataset(tmp_path / 'data', **cfg['dataset']['synthetic'])
    for i in (1, 2, 5):                               # valid header, truncated pixel data
        p = root / f'{i:05d}.png'
        p.write_bytes(p.read_bytes()[:60])
    cfg['dataset'].update(type='imagefolder', location=str(root))
    tr = training.Trainer(cfg)
    assert tr.dataset.n_pruned == 0
    skipped = sum(tr.train_step()['skipped'] for _ in range(4))
    assert skipped == 3 and tr.data.n_skipped == 3    # 16 images, 4 steps of 4: one epoch, each seen once


def test_latent_cache_training(tmp_path):
    ds = ImageFolderDataset(make_synthetic_dataset(tmp_path / 'img', n=8, sizes=[[32, 32]]),
                                  buckets=np.array([[32, 32]]))
    encode = lambda x: torch.nn.functional.avg_pool2d(x, 2)[:, :2] * 3 + 1   # a stand-in "VAE": 2 × 16 × 16
    cache_latents(ds, encode, tmp_path / 'cache')
    cfg = tiny_config(tmp_path, steps=2)
    cfg['model']['input_channels'] = 2
    cfg['dataset'] = {'type': 'latents', 'location': str(tmp_path / 'cache'), 'tag_weights': {}}
    tr = training.Trainer(cfg)
    batch = tr.data.next()
    assert batch['x0'].shape == (4, 2, 16, 16)
    raw = encode(torch.stack([ds[int(tr.dataset.entries[i]['id'])]['image'] for i in batch['index']]))
    mean, std = tr.dataset.mean.float().view(1, -1, 1, 1), tr.dataset.std.float().view(1, -1, 1, 1)
    assert torch.allclose(batch['x0'], (raw - mean) / std, atol=1e-5)          # scale-and-shift applied
    assert math.isfinite(tr.train_step()['loss'])


def test_bf16_step(tmp_path):
    tr = training.Trainer(tiny_config(tmp_path, mixed_precision='bf16'))
    m = tr.train_step()
    assert math.isfinite(m['loss']) and m['loss'] > 0
    assert all(torch.isfinite(p).all() and p.dtype == torch.float32 for p in tr.unwrapped.parameters())


# -------------------------------------------------------------------------------------- multi-process

WORKER = '''
import hashlib, json, sys
import torch
from kdiff_ztsnr.training import Trainer

def digest(tensors):
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().double().contiguous().numpy().tobytes())
    return h.hexdigest()

tr = Trainer(json.load(open(sys.argv[1])))
before = digest(tr.unwrapped.parameters())
m = tr.train_step()
params = list(tr.unwrapped.parameters())
out = {'rank': tr.rank, 'world_size': tr.world_size, 'indices': m['indices'], 'params_before': before,
       'grad': digest(p.grad for p in params), 'grad_sum': float(sum(p.grad.double().sum() for p in params)),
       'params': digest(params)}
tr.save()
json.dump(out, open(f"{sys.argv[2]}/rank{tr.rank}.json", "w"))
'''


def test_two_ranks_torchrun(tmp_path):
    """torchrun --nproc_per_node 2 with Accelerator(cpu=True): disjoint equal shards, synchronised gradients,
    identical parameters after a step, one rank file per rank in the checkpoint."""
    cfg = tiny_config(tmp_path / 'out', steps=1, grad_accum_steps=2, batch_size=2)
    (tmp_path / 'cfg.json').write_text(json.dumps(cfg))
    (tmp_path / 'worker.py').write_text(WORKER)
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(Path(__file__).parents[2]))
    proc = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                           str(tmp_path / 'worker.py'), str(tmp_path / 'cfg.json'), str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f'rank{r}.json').read_text()) for r in (0, 1))
    assert r0['world_size'] == r1['world_size'] == 2
    assert len(r0['indices']) == len(r1['indices']) == 4               # batch 2 × 2 micro-batches
    assert not set(r0['indices']) & set(r1['indices'])                 # disjoint shards
    assert r0['params_before'] == r1['params_before']
    assert r0['grad'] == r1['grad'] and r0['grad_sum'] != 0            # all-reduced gradients
    assert r0['params'] == r1['params'] != r0['params_before']         # same update on both ranks
    ckpt = tmp_path / 'out' / 'checkpoint-00000001'
    assert (ckpt / 'rank-0.pt').is_file() and (ckpt / 'rank-1.pt').is_file()
