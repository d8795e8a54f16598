"""The trainer's SDXL path (model.type 'sdxl') on a tiny SDXL: full fine-tune from a diffusers folder and from a
single file, exact resume, per-item size conditioning, LoRA saved in kohya format and checked with diffusers'
load_lora_weights / fuse_lora, the SGM output read back by diffusers' from_single_file, ε → v conversion,
the VAE latent cache, σ-bucket losses and previews."""

import copy
import json

import numpy as np
import pytest
import torch

pytest.importorskip('diffusers')
pytest.importorskip('peft')

from PIL import Image  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from tests.helpers import TINY, TINY_KW, write_tiny_sdxl  # noqa: E402
from kdiff_ztsnr import training  # noqa: E402
from kdiff_ztsnr.models import sdxl  # noqa: E402
from kdiff_ztsnr.models.trained import resolve_checkpoint  # noqa: E402
from kdiff_ztsnr.training.data.images import cover_crop_box  # noqa: E402
from kdiff_ztsnr.models.sdxl.lora import merge_lora, merge_lora_file  # noqa: E402
from kdiff_ztsnr.training.preview import SigmaBucketLoss  # noqa: E402

ONLY_64 = {'max_area': 64 * 64, 'max_side': 64, 'min_side': 64, 'step': 64, 'extra': [[64, 64]]}
BUCKETS_64 = {'max_area': 64 * 64, 'max_side': 128, 'min_side': 32, 'step': 32, 'extra': [[64, 64]]}


pytestmark = pytest.mark.usefixtures('fresh_process_state')   # conftest: a fresh accelerate state per test


@pytest.fixture(scope='module')
def base(tmp_path_factory):
    """The tiny SDXL as a diffusers folder, a v/ZTSNR single file and an ε single file (no markers)."""
    b = write_tiny_sdxl(tmp_path_factory.mktemp('base'))
    return {**b, 'eps': b['nomarkers']}


def sdxl_config(out, path=None, steps=2, **training_overrides) -> dict:
    model = {'type': 'sdxl', 'components': TINY}
    if path is not None:
        model['path'] = str(path)
    return {'model': model,
            'dataset': {'type': 'synthetic', 'location': str(out / 'data'), 'buckets': BUCKETS_64,
                        'synthetic': {'n': 8, 'sizes': [[64, 64]], 'seed': 0, 'solid_fraction': 0.5}},
            'optimizer': {'lr': 1e-3},
            'training': {'steps': steps, 'batch_size': 2, 'out_dir': str(out), 'cpu': True, 'log_every': 1000,
                         'checkpoint_every': 1000, **training_overrides}}


def unet_output(unet, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, ctx = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, 80, generator=g)
    cond = {'text_embeds': torch.randn(2, 40, generator=g), 'time_ids': torch.tensor([[64., 64, 0, 0, 64, 64]] * 2)}
    with torch.no_grad():
        return unet(x, torch.tensor([999., 500.]), encoder_hidden_states=ctx, added_cond_kwargs=cond).sample


def equal_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------------------- full fine-tune

@pytest.mark.parametrize('source', ['folder', 'file'])
def test_full_finetune_saves_single_file_diffusers_reads(base, tmp_path, source):
    from diffusers import UNet2DConditionModel
    tr = training.Trainer(sdxl_config(tmp_path, base[source], save_diffusers=True)).run()
    start = base['pipe'].components['unet'].state_dict()
    assert not equal_state(tr.unwrapped.unet.state_dict(), start)                    # it trained
    out = resolve_checkpoint(tmp_path) / 'sdxl.safetensors'
    with safe_open(str(out), 'pt') as f:
        keys = set(f.keys())
    assert {'v_pred', 'ztsnr'} <= keys and any(k.startswith('model.diffusion_model.') for k in keys)
    ema = tr.inner_ema.unet.state_dict()
    theirs = UNet2DConditionModel.from_single_file(str(out), config=str(base['folder']), subfolder='unet',
                                                   local_files_only=True)
    assert equal_state(theirs.state_dict(), ema)                                      # diffusers: identical
    ours = sdxl.load_sdxl(out, **TINY_KW)
    assert ours.zero_terminal_snr and equal_state(ours.components['unet'].state_dict(), ema)
    vae = base['pipe'].components['vae'].state_dict()
    assert equal_state(ours.components['vae'].state_dict(), vae)                      # frozen parts kept
    folder = resolve_checkpoint(tmp_path) / 'diffusers'
    from kdiff_ztsnr import cli
    assert cli.main(['sample', 'completely black', '--model', str(folder), '--steps', '2', '--width', '64',
                     '--out', str(tmp_path / 'samples'), '--quiet']) == 0              # kdiff-ztsnr sample --model
    assert len(list((tmp_path / 'samples').glob('*.png'))) == 1
    from kdiff_ztsnr.generation.lookup import load_pipeline
    pipe = load_pipeline(tmp_path)                                                    # --model out_dir
    assert pipe.zero_terminal_snr and equal_state(pipe.components['unet'].state_dict(), ema)


@pytest.mark.parametrize('lora, text', [(None, False), ({'rank': 2, 'dropout': 0.1}, False), (None, True)])
def test_resume_is_exact(base, tmp_path, lora, text):
    def config(name, steps):
        cfg = sdxl_config(tmp_path / name, base['file'], steps=steps, train_text_encoders=text)
        cfg['model']['lora'] = lora
        return cfg
    full = training.Trainer(config('full', 4)).run()
    training.Trainer(config('split', 2)).run()
    from accelerate.state import AcceleratorState, GradientState
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    split = training.Trainer(config('split', 4)).run(resume=tmp_path / 'split')
    assert equal_state(full.unwrapped.state_dict(), split.unwrapped.state_dict())
    assert equal_state(full.inner_ema.state_dict(), split.inner_ema.state_dict())
    if text:                                                              # trained encoders, live and EMA
        assert equal_state(full.text.state_dict(), split.text.state_dict())
        assert equal_state(full.text_ema.state_dict(), split.text_ema.state_dict())
    rows = [[json.loads(r)['loss'] for r in (tmp_path / d / 'metrics.jsonl').read_text().splitlines()]
            for d in ('full', 'split')]
    assert rows[0] == rows[1] and len(rows[0]) == 4


def test_train_text_encoders(base, tmp_path):
    """On: both encoders change (own LR group, no prompt cache) and the single file holds their EMA weights;
    off: they stay bit-identical to the base."""
    start = base['pipe'].components['text'].state_dict()
    frozen = training.Trainer(sdxl_config(tmp_path / 'off', base['file'], steps=1)).run()
    assert equal_state(frozen.text.state_dict(), start) and frozen.text_ema is None
    from accelerate.state import AcceleratorState, GradientState
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    cfg = sdxl_config(tmp_path / 'on', base['file'], steps=2, train_text_encoders=True)
    cfg['optimizer']['text_lr'] = 1e-2
    tr = training.Trainer(cfg)
    assert [g['lr'] for g in tr.opt.param_groups] == [1e-3, 1e-2] and not hasattr(tr.encode, 'memo')
    tr.train_step()                                                       # gradients reach both encoders
    assert all(any(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters())
               for enc in tr.text.encoders)
    tr.run()                                                              # to step 2, checkpointed
    for i, enc in enumerate(tr.text.encoders):                            # both encoders trained
        assert not equal_state(enc.state_dict(), base['pipe'].components['text'].encoders[i].state_dict())
    assert not equal_state(tr.text_ema.state_dict(), tr.text.state_dict())   # EMA'd, not copied
    ckpt = resolve_checkpoint(tmp_path / 'on')
    assert equal_state(load_file(str(ckpt / 'text_ema.safetensors')), tr.text_ema.state_dict())
    ours = sdxl.load_sdxl(ckpt / 'sdxl.safetensors', **TINY_KW).components['text']
    for mine, saved in zip(tr.text_ema.encoders, ours.encoders):         # the single file: the EMA encoders
        sd = saved.state_dict()
        assert all(torch.equal(sd[k], v) for k, v in mine.state_dict().items())


def test_train_text_encoders_refusals(base, tmp_path):
    cfg = sdxl_config(tmp_path, base['file'], train_text_encoders=True)
    cfg['model']['lora'] = {'rank': 2}
    with pytest.raises(ValueError, match='train_text_encoders'):
        training.Trainer(cfg)
    cfg = {'model': {'type': 'image_v1', 'input_channels': 3, 'mapping_out': 16, 'depths': [1],
                     'channels': [8], 'self_attn_depths': [False]},
           'dataset': {'type': 'synthetic'}, 'training': {'train_text_encoders': True}}
    with pytest.raises(ValueError, match="train_text_encoders' needs the SDXL full fine-tune"):
        training.load_training_config(cfg)


def test_size_conditioning_is_per_item(base, tmp_path):
    """add_time_ids = original (h, w), crop (top, left) of each item's real cover-resize + crop, target (h, w)."""
    root = tmp_path / 'imgs'
    root.mkdir()
    for i, (w, h) in enumerate([(80, 64), (64, 100), (64, 64), (128, 72)]):
        Image.new('RGB', (w, h), (40 * i, 0, 0)).save(root / f'{i}.png')
    cfg = sdxl_config(tmp_path, base['file'], steps=1)
    cfg['dataset'] = {'type': 'imagefolder', 'location': str(root), 'buckets': ONLY_64,
                      'max_ratio_error': 10.}
    cfg['training']['batch_size'] = 4
    tr = training.Trainer(cfg)
    seen = []
    tr.inner.unet.register_forward_pre_hook(lambda m, a, kw: seen.append(kw['added_cond_kwargs']['time_ids']),
                                            with_kwargs=True)
    batch = tr.data.next()
    from kdiff_ztsnr.training.data.source import mix_seed
    for i, orig, crop in zip(batch['index'].tolist(), batch['original_size'].tolist(), batch['crop'].tolist()):
        w, h = tr.dataset.sizes[i].tolist()
        _, _, left, top = cover_crop_box(w, h, 64, 64, torch.Generator().manual_seed(mix_seed(0, 0, i)))
        assert orig == [h, w] and crop == [top, left]
    assert sorted(map(tuple, batch['original_size'].tolist())) == [(64, 64), (64, 80), (72, 128), (100, 64)]
    tr.micro_loss(batch, 0)
    ids = torch.cat([batch['original_size'], batch['crop'], torch.tensor([[64, 64]] * 4)], 1).float()
    assert torch.equal(seen[0], ids)


# ------------------------------------------------------------------------------------------------ LoRA

@pytest.mark.parametrize('source', ['folder', 'file'])
def test_lora_kohya_file_loads_in_diffusers_like_merging(base, tmp_path, source):
    from diffusers import StableDiffusionXLPipeline
    cfg = sdxl_config(tmp_path, base[source], steps=2)
    cfg['model']['lora'] = {'rank': 4, 'alpha': 2, 'targets': ['to_q', 'to_k', 'to_v', 'to_out.0']}
    cfg['optimizer']['lr'] = 2e-2
    cfg['ema_sched'] = {'max_value': 0.}                                 # EMA = the trained weights
    tr = training.Trainer(cfg).run()
    base_sd = base['pipe'].components['unet'].state_dict()
    trained = tr.unwrapped.unet.state_dict()
    as_base = lambda k: '.base_layer.'.join(k.rsplit('.', 1))          # noqa: E731  peft's wrapped name
    assert all(torch.equal(trained[as_base(k) if as_base(k) in trained else k], v)
               for k, v in base_sd.items())                              # the base stays frozen
    lora = resolve_checkpoint(tmp_path) / 'lora.safetensors'
    sd = load_file(str(lora))
    assert all(k.startswith('lora_unet_') for k in sd) and sd[next(k for k in sd if k.endswith('.alpha'))] == 2
    merged = unet_output(merge_lora(copy.deepcopy(tr.inner_ema.unet)))
    assert not torch.allclose(merged, unet_output(base['pipe'].components['unet']), atol=1e-4)   # it learned
    pipe = StableDiffusionXLPipeline.from_pretrained(str(base['folder']), local_files_only=True)
    pipe.load_lora_weights(str(lora))
    loaded = unet_output(pipe.unet)
    torch.testing.assert_close(loaded, merged, atol=1e-5, rtol=1e-4)    # diffusers' loader = our merge
    pipe.fuse_lora()
    torch.testing.assert_close(unet_output(pipe.unet), merged, atol=1e-5, rtol=1e-4)
    merge_lora_file(base['folder'], lora, tmp_path / 'merged.safetensors')      # base + file → single file
    again = sdxl.load_sdxl(tmp_path / 'merged.safetensors', **TINY_KW).components['unet']
    torch.testing.assert_close(unet_output(again), merged, atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------------------ ε → v

def test_epsilon_checkpoint_converts_and_trains(base, tmp_path):
    with pytest.raises(ValueError, match='prediction type'):
        training.Trainer(sdxl_config(tmp_path / 'refused', base['eps']))
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(reset_partial_state=True)
    cfg = sdxl_config(tmp_path, base['eps'], steps=2)
    cfg['model']['source_prediction'] = 'epsilon'
    tr = training.Trainer(cfg)
    assert torch.isinf(tr.model.sigmas[-1])                            # trained on the rescaled table
    tr.run()
    with safe_open(str(resolve_checkpoint(tmp_path) / 'sdxl.safetensors'), 'pt') as f:
        assert {'v_pred', 'ztsnr'} <= set(f.keys())


# ------------------------------------------------------------------------------------- latents, logging

def test_latent_cache_through_the_vae_matches_on_the_fly(base, tmp_path):
    cfg = sdxl_config(tmp_path, base['file'], steps=1)
    live = training.Trainer(cfg)
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(reset_partial_state=True)
    cfg['dataset']['cache_latents'] = True
    cached = training.Trainer(cfg)
    assert (tmp_path / 'latents' / 'stats.safetensors').is_file()
    a, b = live.data.next(), cached.data.next()
    za, ida = live.family.prepare(a, 'cpu')
    by_id = {int(cached.dataset.entries[i]['id']): i for i in range(len(cached.dataset))}
    order = [by_id[i] for i in a['index'].tolist()]
    zb, idb = cached.family.prepare({**b, 'x0': torch.stack([cached.dataset[i]['latent'] for i in order]),
                                   'original_size': a['original_size'], 'crop': a['crop']}, 'cpu')
    torch.testing.assert_close(za, zb, atol=1e-5, rtol=1e-5)
    assert torch.equal(ida['add_time_ids'], idb['add_time_ids'])
    assert np.isfinite(cached.train_step()['loss'])


def test_sigma_bucket_loss_and_preview(base, tmp_path):
    log = SigmaBucketLoss()
    log.add(torch.tensor([0.05, 0.5, float('inf'), float('inf')]), torch.tensor([1., 2., 3., 5.]))
    assert log.pop() == {'0-0.1': 1., '0.1-1': 2., 'inf': 4.}
    cfg = sdxl_config(tmp_path, base['file'], steps=2, preview_every=2,
                      preview={'prompts': ['completely black'], 'seeds': [0, 1], 'steps': 2})
    training.Trainer(cfg).run()
    rows = [json.loads(r) for r in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
    assert all(r['loss_by_sigma'] for r in rows)
    png = Image.open(tmp_path / 'previews' / 'step-00000002.png')
    assert png.size == (128, 64)
    meta = json.loads(png.text['Comment'])
    assert meta['step'] == 2 and meta['sigma_start'] == 'inf' and len(meta['brightness'][0]) == 2


# -------------------------------------------------------------------------------------- multi-process

WORKER = '''
import json, sys
import torch
from safetensors.torch import save_file
from kdiff_ztsnr.training import Trainer

tr = Trainer(json.load(open(sys.argv[1])))
m = tr.train_step()
grads = {n: p.grad.contiguous() for n, p in tr.unwrapped.named_parameters() if p.grad is not None}
save_file(grads, f"{sys.argv[2]}/grad{tr.rank}.safetensors")
json.dump({'indices': m['indices'], 'loss': m['loss']}, open(f"{sys.argv[2]}/rank{tr.rank}.json", "w"))
'''


def test_two_ranks_agree_with_one_process(base, tmp_path):
    """torchrun --nproc_per_node 2 (gloo, CPU): the all-reduced gradient of the SDXL UNet equals the mean of the
    two ranks' micro-batch gradients computed in one process on the same items, timesteps and noise."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    cfg = sdxl_config(tmp_path / 'out', base['file'], steps=1)
    (tmp_path / 'cfg.json').write_text(json.dumps(cfg))
    (tmp_path / 'worker.py').write_text(WORKER)
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(Path(__file__).parents[2]))
    proc = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                           str(tmp_path / 'worker.py'), str(tmp_path / 'cfg.json'), str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=400, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f'rank{r}.json').read_text()) for r in (0, 1)]
    assert not set(ranks[0]['indices']) & set(ranks[1]['indices'])
    g0, g1 = (load_file(str(tmp_path / f'grad{r}.safetensors')) for r in (0, 1))
    assert equal_state(g0, g1)                                            # synchronised
    tr = training.Trainer(sdxl_config(tmp_path / 'one', base['file'], steps=1))
    tr.inner.train()
    for r, info in enumerate(ranks):                                      # rank r's micro-batch, its RNG
        batch = tr.data._load_images(0, (64, 64), info['indices'])
        batch['prompts'] = [', '.join(t) for t in batch.pop('tags')]
        tr.rank = r
        (tr.micro_loss(batch, 0) / 2).backward()
    ref = {n: p.grad for n, p in tr.unwrapped.named_parameters() if p.grad is not None}
    assert ref.keys() == g0.keys()
    for n in ref:
        torch.testing.assert_close(g0[n], ref[n], atol=1e-6, rtol=1e-4)


def test_ema_update_equals_k_diffusion():
    """training.optim.EMAUpdate (foreach, lists gathered once) = k_diffusion.utils.ema_update, bit for bit."""
    from k_diffusion import utils as k_utils
    from kdiff_ztsnr.models import build_model
    from kdiff_ztsnr.training.optim import EMAUpdate
    torch.manual_seed(0)
    model = build_model({'model': {'type': 'image_v1', 'input_channels': 3, 'mapping_out': 16, 'depths': [1, 1],
                                   'channels': [8, 16], 'self_attn_depths': [False, True]}})
    ours, ref = copy.deepcopy(model), copy.deepcopy(model)
    update = EMAUpdate(model, ours)
    for decay in (0.5, 0.9, 0.999):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        update(decay)
        k_utils.ema_update(model, ref, decay)
        assert equal_state(ours.state_dict(), ref.state_dict())
    assert not equal_state(ours.state_dict(), model.state_dict())


def test_bf16_gradient_checkpointing_lora_step(base, tmp_path):
    cfg = sdxl_config(tmp_path, base['file'], steps=1, mixed_precision='bf16', gradient_checkpointing=True)
    cfg['model']['lora'] = {'rank': 2}
    tr = training.Trainer(cfg)
    assert tr.inner.unet.is_gradient_checkpointing
    trainable = [p for p in tr.unwrapped.parameters() if p.requires_grad]
    assert trainable and sum(p.numel() for p in trainable) < sum(p.numel() for p in tr.unwrapped.parameters()) / 5
    m = tr.train_step()
    assert np.isfinite(m['loss']) and all(p.dtype == torch.float32 and p.grad is not None for p in trainable)
