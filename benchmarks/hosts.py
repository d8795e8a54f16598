"""The exact step from σ = ∞ vs the hosts' clamps, on the tiny SDXL model: how much the final latent moves.

    python -m benchmarks.hosts [--smoke] [--steps 28] [--seeds 4]

ComfyUI and A1111/Forge clamp a ZTSNR table's top to σ₀ = 4518.76 (ᾱ = 4.897e-8), diffusers'
``rescale_betas_zero_snr`` to 4096 (ᾱ = 2⁻²⁴), the report's A.2 variant to 20000. Each host convention is run
as the host runs it: the clamped table (the network sees t = 999 and c_in·x), x₀ = n·σ₀ (ComfyUI: n·√(1 + σ₀²))
and k-diffusion's unmodified sampler on the package's schedule with ∞ replaced by σ₀; the exact run starts at
σ = ∞ from the same unit noise n (report eq. 9). Same weights, prompt, CFG (5, rescale 0.7), per-seed noise and
ancestral noise. The tiny SDXL model has random weights: the numbers measure how far the clamp moves a sample,
not image quality. First-step prediction for Euler: x₁ − x₁* ≈ (σ₁·F + n)/σ₀ with F = −D(n; ∞).

Checks printed with the table: diffusers' own EulerDiscreteScheduler (4096, trailing) in StableDiffusionXLPipeline
against this benchmark's emulation of it, and the package's ZTSNRScheduler in the same pipeline against the
package's exact run (both should agree to float32 rounding).
"""

import argparse
import math
import time

import torch

from benchmarks import common
from benchmarks.common import md_table
from benchmarks.subjects import tiny_sdxl_pipeline
from kdiff_ztsnr import schedule_policy
from kdiff_ztsnr.denoisers import DiscreteVDenoiser
from kdiff_ztsnr.guidance import CFGDenoiser
from kdiff_ztsnr.sampling import SAMPLERS
from kdiff_ztsnr.schedules import COMFY_SIGMA_MAX, DIFFUSERS_SIGMA_MAX, ZTSNR_CLAMP

HOSTS = [('ComfyUI / A1111 / Forge', COMFY_SIGMA_MAX, math.sqrt(1 + COMFY_SIGMA_MAX ** 2)),
         ('diffusers', DIFFUSERS_SIGMA_MAX, DIFFUSERS_SIGMA_MAX),
         ('report A.2 clamp', ZTSNR_CLAMP, ZTSNR_CLAMP)]
PROMPT, UC, SCALE, RESCALE, SIDE = 'a cat', 'lowres', 5., 0.7, 64


def conditioning(pipe, b: int) -> dict:
    size = pipe.size_cond(SIDE, SIDE, b)
    c, u = pipe.encode_prompts([PROMPT] * b), pipe.encode_prompts([UC] * b)
    return {'cond': {**c, **size}, 'uncond': {**u, **size}}


def run(pipe, denoiser, sampler: str, sigmas, x, seeds) -> tuple:
    """(final latent, state after the first step, D at the first call) with per-seed ancestral noise."""
    gens = [torch.Generator().manual_seed(1000 + s) for s in seeds]
    kw = {}
    if sampler == 'euler_ancestral':
        kw['noise_sampler'] = lambda a, b: torch.stack([torch.randn(x.shape[1:], generator=g) for g in gens])
    seen = {}
    cb = lambda info: seen.setdefault(info['i'], (info['x'].clone(), info['denoised'].clone()))  # noqa: E731
    den = CFGDenoiser(denoiser, SCALE, RESCALE, cond_key=None)
    with torch.no_grad():
        out = SAMPLERS[sampler](den, x, sigmas, extra_args=conditioning(pipe, len(seeds)), callback=cb,
                                disable=True, **kw)
    return out, seen[1][0], seen[0][1]


def rel(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def compare(pipe, sampler: str, kind: str, steps: int, seeds: list) -> list:
    noise = torch.stack([torch.randn(4, SIDE // 8, SIDE // 8, generator=torch.Generator().manual_seed(s))
                         for s in seeds])
    sigmas = schedule_policy.sigmas(pipe.denoiser(), kind, steps)
    exact, exact_1, d_inf = run(pipe, pipe.denoiser(), sampler, sigmas, noise, seeds)
    rows = []
    for name, sigma_0, scale_0 in HOSTS:
        clamped = DiscreteVDenoiser(pipe.inner_model, pipe.alphas_cumprod, sigma_max=sigma_0)
        host_sigmas = torch.cat([sigmas.new_tensor([sigma_0]), sigmas[1:]])
        host, host_1, _ = run(pipe, clamped, sampler, host_sigmas, noise * scale_0, seeds)
        predicted = (sigmas[1] * -d_inf + noise) / sigma_0                   # (σ₁·F + n)/σ₀
        rows.append({'host': name, 'sigma_0': sigma_0, 'sampler': sampler, 'schedule': kind,
                     'sigma_1': sigmas[1].item(), 'first_rel': rel(host_1, exact_1),
                     'predicted_first_rel': (predicted.norm() / exact_1.norm()).item() if sampler != 'euler_ancestral'
                     else float('nan'),                               # ancestral: σ_down·n and σ_up·z differ too
                     'final_rel': rel(host, exact), 'final_max_abs': (host - exact).abs().max().item()})
    return rows


def diffusers_checks(pipe, steps: int) -> dict:
    """Real diffusers: its Euler (4096) vs this benchmark's emulation; ZTSNRScheduler vs the exact run."""
    from diffusers import EulerDiscreteScheduler
    from kdiff_ztsnr.integrations.diffusers import ZTSNRScheduler
    from kdiff_ztsnr.models.sdxl import scheduler_config, to_diffusers
    c, u = pipe.encode_prompts([PROMPT]), pipe.encode_prompts([UC])
    embeds = {'prompt_embeds': c['context'], 'pooled_prompt_embeds': c['pooled'],
              'negative_prompt_embeds': u['context'], 'negative_pooled_prompt_embeds': u['pooled']}
    out = {}
    for name, sched in [('euler_4096', EulerDiscreteScheduler.from_config(scheduler_config(True))),
                        ('ztsnr', ZTSNRScheduler.from_config(scheduler_config(True), sampler='euler',
                                                             schedule='karras'))]:
        dp = to_diffusers(pipe, sched)
        dp.set_progress_bar_config(disable=True)
        with torch.no_grad():
            got = dp(**embeds, num_inference_steps=steps, guidance_scale=SCALE, guidance_rescale=RESCALE, width=SIDE,
                     height=SIDE, output_type='latent', generator=torch.Generator().manual_seed(0)).images
        noise = torch.randn(1, 4, SIDE // 8, SIDE // 8, generator=torch.Generator().manual_seed(0))
        sigmas = sched.sigmas.float()
        model = pipe.denoiser() if name == 'ztsnr' else DiscreteVDenoiser(pipe.inner_model, pipe.alphas_cumprod,
                                                                         sigma_max=DIFFUSERS_SIGMA_MAX)
        want, _, _ = run(pipe, model, 'euler', sigmas, noise * sched.init_noise_sigma, [0])
        out[name] = {'rel': rel(got, want), 'max_abs': (got - want).abs().max().item(),
                     'sigma_0': sigmas[0].item()}
    return out


def plot(rows: list, path) -> None:
    plt = common.pyplot()
    kinds = sorted({r['schedule'] for r in rows})
    fig, axes = plt.subplots(1, len(kinds), figsize=(5 * len(kinds), 3.6), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        sub = [r for r in rows if r['schedule'] == kind]
        samplers = list(dict.fromkeys(r['sampler'] for r in sub))
        for j, (host, _, _) in enumerate(HOSTS):
            vals = [next(r['final_rel'] for r in sub if r['sampler'] == s and r['host'] == host) for s in samplers]
            ax.bar([i + 0.27 * (j - 1) for i in range(len(samplers))], vals, 0.27, label=host)
        ax.set_xticks(range(len(samplers)), samplers)
        ax.set_yscale('log')
        ax.set_title(f'schedule {kind}', fontsize=9)
        ax.set_ylabel('‖x_host − x_exact‖ / ‖x_exact‖ (final latent)')
    axes[0][0].legend(fontsize=7)
    common.save_figure(fig, path, 'host clamp vs exact σ = ∞ start (tiny SDXL, same noise)')


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--smoke', action='store_true')
    p.add_argument('--steps', type=int, default=28)
    p.add_argument('--seeds', type=int, default=4)
    p.add_argument('--samplers', nargs='+', default=['euler', 'euler_ancestral', 'dpmpp_2m'])
    p.add_argument('--schedules', nargs='+', default=['recommended', 'native'])
    p.add_argument('--out', default=None)
    a = p.parse_args(argv)
    if a.smoke:
        a.steps, a.seeds, a.schedules, a.samplers = 3, 1, ['karras'], ['euler', 'euler_ancestral']  # large σ₁: first-order check
    out, t0 = common.out_dir(a.out), time.perf_counter()
    pipe = tiny_sdxl_pipeline()
    rows = [r for kind in a.schedules for s in a.samplers for r in compare(pipe, s, kind, a.steps, list(range(a.seeds)))]
    checks = diffusers_checks(pipe, a.steps)
    table = md_table(['host convention', 'σ₀', 'sampler', 'schedule', 'σ₁', 'first step rel. Δ',
                      '(σ₁F + n)/σ₀ rel.', 'final latent rel. Δ', 'final max |Δ|'],
                     [[r['host'], r['sigma_0'], r['sampler'], r['schedule'], r['sigma_1'], r['first_rel'],
                       '—' if math.isnan(r['predicted_first_rel']) else r['predicted_first_rel'], r['final_rel'],
                       r['final_max_abs']] for r in rows])
    lines = [f'hosts: tiny SDXL (random weights), {SIDE}×{SIDE}, {a.seeds} seeds, {a.steps} steps, CFG {SCALE} '
             f'rescale {RESCALE}; exact = the package from σ = ∞', '', table, '',
             'Checks in StableDiffusionXLPipeline (1 seed, Euler, same steps): '
             f'diffusers EulerDiscreteScheduler (σ₀ {checks["euler_4096"]["sigma_0"]:.6g}) vs this emulation: rel. '
             f'{checks["euler_4096"]["rel"]:.2e}; ZTSNRScheduler vs the package from ∞: rel. '
             f'{checks["ztsnr"]["rel"]:.2e}',
             f'({time.perf_counter() - t0:.0f} s)']
    text = '\n'.join(lines)
    print(text)
    plot(rows, out / 'hosts.png')
    payload = {'rows': rows, 'checks': checks, 'steps': a.steps, 'seeds': a.seeds}
    common.write_outputs(out, 'hosts', text, payload)
    return payload


if __name__ == '__main__':
    main()
