"""SDXL fine-tuning benchmarks: ``python -m benchmarks.train_sdxl [--part a|c|all] [--smoke]``.

(a) overhead: median seconds per optimizer step of ``kdiff_ztsnr.training.Trainer`` (model.type 'sdxl', latents
    from its VAE cache, prompts from its text cache) against a bare hand-written loop on the same tiny SDXL
    UNet, batch, AdamW and table (t uniform over 1000 incl. σ = ∞, v target, MinSNR-5 with terminal weight 1),
    with and without an EMA update; steps interleaved so machine load hits both alike. Goal ≤ 1.05×.
(b) full-size SDXL on a GPU: not run here (no GPU was available to this work).
(c) ε → v on CPU: a tiny SDXL (its VAE first fitted to the synthetic set, UNet random, saved as an ε single file
    without markers) fine-tuned with ``source_prediction: "epsilon"`` on the synthetic captioned set until
    sampling "completely black" from σ = ∞ (exact sampler, EMA weights) gives mean brightness < 0.15 and
    "completely white" > 0.85; the final check runs ``kdiff-ztsnr sample`` on the saved diffusers folder.

``--smoke`` runs both parts at toy sizes (a few steps, a smaller synthetic set) to check they run end to end.
"""

import argparse
import copy
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import common
from kdiff_ztsnr import schedules
from kdiff_ztsnr.losses import min_snr_weight
from kdiff_ztsnr.models import alphas_cumprod_for, sdxl
from benchmarks.subjects import tiny_sdxl_configs, tiny_sdxl_pipeline
from kdiff_ztsnr.training.data.images import ImageFolderDataset
from kdiff_ztsnr.training.data.synthetic import make_synthetic_dataset

TINY = tiny_sdxl_configs()
PARTS = ('a', 'c', 'all')
BUCKETS = {'max_area': 64 * 64, 'max_side': 64, 'min_side': 64, 'step': 64, 'extra': [[64, 64]]}


def reset_accelerate() -> None:
    from accelerate.state import AcceleratorState, GradientState
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def trainer_config(out: Path, path: Path, steps: int, batch: int, n: int = 64, **over) -> dict:
    return {'model': {'type': 'sdxl', 'path': str(path), 'components': TINY},
            'dataset': {'type': 'synthetic', 'location': str(out / 'data'), 'buckets': BUCKETS,
                        'synthetic': {'n': n, 'sizes': [[64, 64]], 'seed': 0, 'solid_fraction': 0.5}},
            'optimizer': {'lr': 1e-3, 'weight_decay': 0.}, 'ema_sched': {'max_value': 0.999},
            'training': {'steps': steps, 'batch_size': batch, 'out_dir': str(out), 'cpu': True, 'threads': 1,
                         'log_every': 100, 'checkpoint_every': 10 ** 9, **over}}


# ---------------------------------------------------------------------------------------------- (a)

class BareLoop:
    """The hand-written reference: one fixed batch, the UNet called directly, plain AdamW (+ optional EMA)."""

    def __init__(self, unet, x0, context, pooled, time_ids, lr: float, ema: bool):
        self.unet, self.x0 = unet.train(), x0
        self.cond = {'encoder_hidden_states': context, 'added_cond_kwargs': {'text_embeds': pooled,
                                                                             'time_ids': time_ids}}
        self.opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.)
        ac = alphas_cumprod_for(True).float()
        self.a, self.s = ac.sqrt(), (1 - ac).sqrt()
        self.snr = schedules.snr(schedules.sigmas_from_alphas_cumprod(alphas_cumprod_for(True)), 1.)
        self.ema = [p.detach().clone() for p in unet.parameters()] if ema else None
        self.g = torch.Generator().manual_seed(0)

    def step(self) -> None:
        b = len(self.x0)
        t = torch.randint(0, 1000, (b,), generator=self.g)
        noise = torch.randn(self.x0.shape, generator=self.g)
        a, s = self.a[t].view(-1, 1, 1, 1), self.s[t].view(-1, 1, 1, 1)
        v = self.unet(a * self.x0 + s * noise, t.float(), **self.cond).sample
        w = min_snr_weight(self.snr[t], 5., 1.).float()
        loss = (((v - (a * noise - s * self.x0)) ** 2).mean((1, 2, 3)) * w).mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        if self.ema is not None:
            torch._foreach_lerp_(self.ema, [p.detach() for p in self.unet.parameters()], 1 - 0.999)


def part_a(work: Path, repeats: int, batch: int, n: int = 64) -> dict:
    from kdiff_ztsnr import training
    pipe = tiny_sdxl_pipeline()
    sdxl.save_single_file(pipe, work / 'a.safetensors')
    reset_accelerate()
    cfg = trainer_config(work / 'a', work / 'a.safetensors', 10 ** 6, batch, n)
    cfg['dataset'].update(cache_latents=True, cond_dropout_rate=0., tag_weights=None)
    tr = training.Trainer(cfg)
    from kdiff_ztsnr.training.data.source import dataset_captions
    for tags in dataset_captions(tr.dataset):          # steady state: every prompt already in the text cache
        tr.encode([', '.join(tags)], 'cpu')
    b = tr.data.next()
    x0, extra = tr.family.prepare(b, 'cpu')
    cond = tr.encode(b['prompts'], 'cpu')
    n_params = sum(p.numel() for p in tr.unwrapped.parameters())
    loops = {k: BareLoop(copy.deepcopy(tr.unwrapped.unet), x0, cond['context'], cond['pooled'],
                         extra['add_time_ids'], 1e-3, ema) for k, ema in (('bare', False), ('bare+ema', True))}
    med = common.interleaved({'trainer': tr.train_step, 'bare': loops['bare'].step,
                              'bare+ema': loops['bare+ema'].step}, repeats)
    return {'seconds': med, 'ratio_vs_bare': med['trainer'] / med['bare'],
            'ratio_vs_bare_ema': med['trainer'] / med['bare+ema'], 'batch': batch, 'repeats': repeats,
            'unet_params': n_params, 'latent': list(x0.shape)}


# ---------------------------------------------------------------------------------------------- (c)

def fit_vae(root: Path, steps: int, seed: int = 0):
    """The tiny VAE fitted to the synthetic images (MSE on the posterior mode + 1e-6 KL), scaling_factor
    set to 1/std of its latents so SDXL's ×scaling_factor convention gives unit-variance latents."""
    torch.manual_seed(seed)
    vae = sdxl.build_component('vae', TINY['vae']).train()
    ds = ImageFolderDataset(root, np.array([[64, 64]]))
    images = torch.stack([ds[i]['image'] for i in range(len(ds))])
    opt = torch.optim.Adam(vae.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = images[torch.randint(len(images), (16,), generator=g)]
        post = vae.encode(x).latent_dist
        loss = ((vae.decode(post.mode()).sample - x) ** 2).mean() + 1e-6 * post.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        z = vae.encode(images).latent_dist.mode()
        mse = float(((vae.decode(z).sample - images) ** 2).mean())
    vae.register_to_config(scaling_factor=float(1 / z.std()))
    return vae, mse


def brightness(pipe, prompts, n: int, steps: int, scale: float) -> dict:
    from kdiff_ztsnr.generation.generate import generate
    from kdiff_ztsnr.generation.params import GenerationParams
    out = {}
    for prompt in prompts:
        p = GenerationParams(prompt=prompt, steps=steps, scale=scale, n_samples=n, width=64, height=64,
                             sampler='euler_ancestral', regime='exact')
        with torch.no_grad():
            out[prompt] = float(((generate(pipe, p) + 1) / 2).mean())
    return out


def part_c(work: Path, max_steps: int, every: int, vae_steps: int, n: int = 64, sample_steps: int = 20) -> dict:
    from kdiff_ztsnr import cli, training
    root = make_synthetic_dataset(work / 'c' / 'data', n, [[64, 64]], 0, 0.5)
    t0 = time.time()
    vae, mse = fit_vae(root, vae_steps)
    t_vae = time.time() - t0
    pipe = tiny_sdxl_pipeline(vae)
    sdxl.save_single_file(pipe, work / 'eps.safetensors')
    from safetensors.torch import load_file, save_file
    sd = {k: v for k, v in load_file(str(work / 'eps.safetensors')).items() if k not in ('v_pred', 'ztsnr')}
    save_file(sd, str(work / 'eps.safetensors'))                          # an ε file: no markers
    reset_accelerate()
    cfg = trainer_config(work / 'c', work / 'eps.safetensors', max_steps, 8, save_diffusers=True)
    cfg['model']['source_prediction'] = 'epsilon'
    cfg['dataset'].update(type='imagefolder', location=str(root), cache_latents=True)
    tr = training.Trainer(cfg)
    tr.out_dir.mkdir(parents=True, exist_ok=True)
    history, t0, train_s = [], time.time(), 0.
    prompts = ['completely black', 'completely white']
    while tr.step < max_steps:
        ts = time.time()
        for _ in range(every):
            tr.train_step()
        train_s += time.time() - ts
        b = brightness(tr.family.pipeline(tr.inner_ema), prompts, 4, sample_steps, 5.)
        history.append({'step': tr.step, 'train_s': round(train_s, 1), **b})
        print(history[-1], flush=True)
        if b[prompts[0]] < 0.15 and b[prompts[1]] > 0.85:
            break
    ckpt = tr.save()
    cli_b = {}
    for prompt in prompts:
        out = work / 'c' / 'samples' / prompt.replace(' ', '_')
        cli.main(['sample', prompt, '--model', str(ckpt / 'diffusers'), '--steps', str(sample_steps), '-n', '4',
                  '--width', '64',
                  '--out', str(out), '--quiet'])
        from PIL import Image
        cli_b[prompt] = float(np.mean([np.asarray(Image.open(p), dtype=np.float64).mean() / 255
                                       for p in sorted(out.glob('*.png'))]))
    return {'vae_steps': vae_steps, 'vae_recon_mse': mse, 'vae_s': t_vae, 'history': history,
            'steps': tr.step, 'train_s': train_s, 'wall_s': time.time() - t0, 'cli_brightness': cli_b,
            'passed': cli_b[prompts[0]] < 0.15 and cli_b[prompts[1]] > 0.85}


def table(res: dict) -> str:
    parts = []
    if 'a' in res:
        a = res['a']
        s = a['seconds']
        parts.append('(a) seconds per optimizer step, tiny SDXL UNet, batch '
                     f'{a["batch"]} of latents {a["latent"][1:]}, median of {a["repeats"]} interleaved\n\n'
                     + common.md_table(['loop', 's/step', 'trainer ÷ loop'],
                                       [['trainer', s['trainer'], 1.],
                                        ['bare (no EMA)', s['bare'], a['ratio_vs_bare']],
                                        ['bare + EMA', s['bare+ema'], a['ratio_vs_bare_ema']]]))
    parts.append('(b) full-size SDXL on a GPU: not run (no GPU available to this work).')
    if 'c' in res:
        c = res['c']
        rows = [[h['step'], h['train_s'], h['completely black'], h['completely white']] for h in c['history']]
        parts.append(f'(c) ε → v on CPU: VAE fitted in {c["vae_steps"]} steps ({c["vae_s"]:.0f} s, recon MSE '
                     f'{c["vae_recon_mse"]:.4f}); brightness of 4 samples from σ = ∞ (20 steps, CFG 5)\n\n'
                     + common.md_table(['step', 'train s', 'completely black', 'completely white'], rows)
                     + f'\n\nkdiff-ztsnr sample on the saved model after {c["steps"]} steps: '
                     + ', '.join(f'"{k}" {v:.3f}' for k, v in c['cli_brightness'].items())
                     + f' — {"passed" if c["passed"] else "NOT passed"} (< 0.15 / > 0.85).')
    return '\n\n'.join(parts)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--part', choices=PARTS, default='all')
    ap.add_argument('--repeats', type=int, default=30)
    ap.add_argument('--batch', type=int, default=8)
    ap.add_argument('--max-steps', type=int, default=3000)
    ap.add_argument('--every', type=int, default=100)
    ap.add_argument('--vae-steps', type=int, default=400)
    ap.add_argument('--work', default='/tmp/kdiff_ztsnr_train_sdxl')
    ap.add_argument('--out', default=None)
    ap.add_argument('--smoke', action='store_true', help='toy sizes: check that both parts run end to end')
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    res = {}
    if args.part in ('a', 'all'):
        res['a'] = part_a(work, 2, 2, 8) if args.smoke else part_a(work, args.repeats, args.batch)
    if args.part in ('c', 'all'):
        res['c'] = part_c(work, 2, 1, 2, 8, 2) if args.smoke else \
            part_c(work, args.max_steps, args.every, args.vae_steps)
    text = table(res)
    print(text)
    common.write_outputs(common.out_dir(args.out), f'train_sdxl_{args.part}', text, res, script='train_sdxl')
    return res


if __name__ == '__main__':
    main()
