"""The package's `generate` against diffusers' StableDiffusionXLPipeline on the same weights, in one process.

    python -m benchmarks.gpu            # CUDA: full-size SDXL, random fp16 weights, 1024², 28 steps, batch 1, 4
    python -m benchmarks.gpu --smoke    # CPU: the tiny SDXL-shaped model (CI), labelled as CPU-smoke numbers

diffusers runs Euler, v-prediction, ``rescale_betas_zero_snr``, ``trailing`` (its ZTSNR clamps σ_max to 4096);
the package runs the same σ schedule from σ = ∞ (report A.1, the exact first step). Runs are interleaved after a
warm-up; each row gives seconds per image, the ratio, peak VRAM (CUDA), the cold first run and, on CUDA, the same
with ``torch.compile`` of the UNet. A correctness row compares the package clamped at 4096 (diffusers' own top
σ) with diffusers on the same noise: both must agree to round-off. Writes results/gpu.md and gpu.json.
"""

import argparse
import copy
import math
import statistics
import time

import torch

from benchmarks import common
from benchmarks.common import md_table
from kdiff_ztsnr import schedules
from kdiff_ztsnr.generation.generate import generate, sample_noise
from kdiff_ztsnr.generation.params import GenerationParams
from kdiff_ztsnr.models import alphas_cumprod_for, sdxl
from benchmarks.subjects import tiny_sdxl_configs



def random_components(smoke: bool, dtype: torch.dtype, device: torch.device) -> dict:
    """The four SDXL components (tiny for --smoke), random weights made directly in dtype on device."""
    torch.manual_seed(0)
    out = {}
    for c in sdxl.COMPONENTS:
        cfg = tiny_sdxl_configs()[c] if smoke else sdxl.component_config(None, c)
        model = sdxl.build_component(c, cfg, empty=True)
        for mod in model.modules():
            for name, p in list(mod._parameters.items()):
                if p is not None:
                    if p.ndim >= 2:
                        t = torch.randn(p.shape, device=device, dtype=dtype) * math.prod(p.shape[1:]) ** -0.5
                    else:
                        t = (torch.ones if name == 'weight' else torch.zeros)(p.shape, device=device, dtype=dtype)
                    mod._parameters[name] = torch.nn.Parameter(t, requires_grad=False)
        out[c] = model.to(device).eval()
    return out


def pipelines(m: dict, unet=None):
    """(the package's Pipeline, diffusers' StableDiffusionXLPipeline) sharing the same modules; an fp16 VAE with
    force_upcast is upcast per call by diffusers and held in float32 by the package (as `load_sdxl` loads it)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from kdiff_ztsnr.text import TextConditioner
    unet = unet or m['unet']
    toks = sdxl.sdxl_tokenizers()
    text = TextConditioner([m['text_encoder'], m['text_encoder_2']], toks)
    vae = m['vae']
    if next(vae.parameters()).dtype == torch.float16 and vae.config.force_upcast:
        vae = copy.deepcopy(vae).float()
    mean, std = sdxl.latent_stats_for(vae)
    ours = sdxl.sdxl_pipeline(unet, vae, text, alphas_cumprod_for(True), mean, std, {'name': 'random'})
    ours.force_zeros_for_empty_prompt = True
    sched = EulerDiscreteScheduler.from_config(sdxl.scheduler_config(True))      # v, ZTSNR, trailing
    theirs = StableDiffusionXLPipeline(vae=m['vae'], text_encoder=m['text_encoder'], tokenizer=toks[0],
                                       text_encoder_2=m['text_encoder_2'], tokenizer_2=toks[1], unet=unet,
                                       scheduler=sched, force_zeros_for_empty_prompt=True)
    theirs.set_progress_bar_config(disable=True)
    return ours, theirs


def runners(ours, theirs, size: int, steps: int, batch: int, scale: float = 5.) -> dict:
    """Closures producing images in [0, 1] for the same prompt and noise: ours from ∞, diffusers, ours at 4096."""
    theirs.scheduler.set_timesteps(steps)
    top = theirs.scheduler.sigmas.float().cpu()                    # [4096, …, 0]: diffusers' own schedule
    from_inf = torch.cat([torch.tensor([math.inf]), top[1:]])
    p = GenerationParams(prompt='a cat', uc='', steps=steps, scale=scale, seed=0, n_samples=batch, width=size,
                         height=size, sampler='euler')
    _, noise = sample_noise(list(range(batch)), (4, size // 8, size // 8))
    dev = ours.device

    def diffusers_run():
        out = theirs(prompt=['a cat'] * batch, height=size, width=size, num_inference_steps=steps,
                     guidance_scale=scale, latents=noise.to(dev, theirs.unet.dtype), output_type='pt')
        return out.images.float()

    return {'package (from ∞)': lambda: (generate(ours, p, sigmas=from_inf) + 1) / 2,
            'diffusers': diffusers_run,
            'package (clamp 4096)':
                lambda: (generate(ours, p, sigmas=top, clamp=schedules.DIFFUSERS_SIGMA_MAX) + 1) / 2}


def sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def measure(fns: dict, device: torch.device, repeats: int) -> dict:
    """Cold first run, then interleaved timed runs (median seconds) and peak memory of each."""
    res = {k: {'first_s': None, 'times': [], 'peak_gib': None} for k in fns}
    for _ in range(repeats + 1):
        for k, f in fns.items():
            if device.type == 'cuda':
                torch.cuda.reset_peak_memory_stats(device)
            sync(device)
            t = time.perf_counter()
            f()
            sync(device)
            dt = time.perf_counter() - t
            if res[k]['first_s'] is None:
                res[k]['first_s'] = dt
            else:
                res[k]['times'].append(dt)
            if device.type == 'cuda':
                res[k]['peak_gib'] = torch.cuda.max_memory_allocated(device) / 2 ** 30
    for r in res.values():
        r['median_s'] = statistics.median(r.pop('times'))
    return res


def agreement(fns: dict) -> dict:
    """Max |Δ| of the images (in [0, 1]): the package clamped at 4096 vs diffusers (round-off), and from ∞."""
    theirs = fns['diffusers']()
    return {'clamp_4096_vs_diffusers': (fns['package (clamp 4096)']() - theirs).abs().max().item(),
            'from_inf_vs_diffusers': (fns['package (from ∞)']() - theirs).abs().max().item()}


def bench(m: dict, device, size: int, steps: int, batches: list, repeats: int, compiled: bool) -> list[dict]:
    rows = []
    ours, theirs = pipelines(m)
    for b in batches:
        fns = runners(ours, theirs, size, steps, b)
        agree = agreement(fns) if b == batches[0] else {}
        timed = measure({k: fns[k] for k in ('package (from ∞)', 'diffusers')}, device, repeats)
        rows.append({'batch': b, 'compile': False, **agree, **timed})
    if compiled:
        try:
            ours_c, theirs_c = pipelines(m, unet=torch.compile(m['unet']))
            fns = runners(ours_c, theirs_c, size, steps, batches[0])
            rows.append({'batch': batches[0], 'compile': True,
                         **measure({k: fns[k] for k in ('package (from ∞)', 'diffusers')}, device, repeats)})
        except Exception as e:                       # compile is optional: record why it did not run
            rows.append({'batch': batches[0], 'compile': True, 'error': f'{type(e).__name__}: {e}'[:200]})
    return rows


def table(rows: list[dict], label: str) -> str:
    out = []
    for r in rows:
        if 'error' in r:
            out.append([r['batch'], 'yes', r['error'], '', '', '', '', '', '', ''])
            continue
        p, d = r['package (from ∞)'], r['diffusers']
        gib = lambda x: '—' if x['peak_gib'] is None else f'{x["peak_gib"]:.2f}'  # noqa: E731
        out.append([r['batch'], 'yes' if r['compile'] else 'no', p['median_s'] / r['batch'], d['median_s'] / r['batch'],
                    f'{p["median_s"] / d["median_s"]:.3f}×', gib(p), gib(d), p['first_s'], d['first_s'],
                    '' if 'clamp_4096_vs_diffusers' not in r else f'{r["clamp_4096_vs_diffusers"]:.1e}'])
    return f'{label}\n\n' + md_table(['batch', 'torch.compile', 'package s/image', 'diffusers s/image', 'ratio',
                                      'package peak GiB', 'diffusers peak GiB', 'package first run s',
                                      'diffusers first run s', 'max |Δ| at 4096'], out)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--smoke', action='store_true', help='tiny SDXL-shaped model on the CPU (CI)')
    ap.add_argument('--out', default=None, help='output folder (default: benchmarks/results)')
    ap.add_argument('--repeats', type=int, default=None, help='timed runs per pipeline (default: 3)')
    ap.add_argument('--steps', type=int, default=None, help='sampling steps (default: 28, smoke 8)')
    ap.add_argument('--threads', type=int, default=None, help='CPU threads (default: torch\'s; smoke 1 — a shared '
                                                              'machine oversubscribed is 10× slower with 2)')
    ap.add_argument('--no-compile', action='store_true', help='skip the torch.compile rows')
    args = ap.parse_args(argv)
    if args.threads or args.smoke:
        torch.set_num_threads(args.threads or 1)
    cuda = torch.cuda.is_available() and not args.smoke
    device = torch.device('cuda' if cuda else 'cpu')
    dtype = torch.float16 if cuda else torch.float32
    size, batches = (64, [1, 4]) if args.smoke else (1024, [1, 4])
    steps = args.steps or (8 if args.smoke else 28)
    repeats = args.repeats or 3
    m = random_components(args.smoke, dtype, device)
    n_params = sum(p.numel() for p in m['unet'].parameters())
    with torch.inference_mode():
        rows = bench(m, device, size, steps, batches, repeats, compiled=cuda and not args.no_compile)
    where = torch.cuda.get_device_name() if cuda else 'CPU-smoke numbers (tiny SDXL-shaped model, NOT GPU numbers)'
    what = (f'{where}: '
            f'UNet {n_params / 1e9:.3g} B parameters, {str(dtype).removeprefix("torch.")}, {size}², {steps} steps, '
            f'CFG 5, Euler; diffusers: v-prediction, rescale_betas_zero_snr, trailing (σ_max 4096); package: the same '
            f'σ from ∞. Medians of {repeats} interleaved runs after a warm-up.')
    text = table(rows, what)
    print(text)
    payload = {'rows': rows, 'device': str(device), 'dtype': str(dtype), 'size': size, 'steps': steps,
               'unet_parameters': n_params, 'smoke': args.smoke}
    common.write_outputs(common.out_dir(args.out), 'gpu', text, payload)
    return payload


if __name__ == '__main__':
    main()
