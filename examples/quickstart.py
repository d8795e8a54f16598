"""Sample a closed-form model from σ = ∞, from σ = 20000 (clamped) and from SDXL's σ_max = 14.6146.

The model is the exact optimal denoiser of a small dataset whose images span dark to bright
(kdiff_ztsnr.oracle), wrapped as a v-prediction network on the zero-terminal-SNR schedule. Prints the
per-sample mean-brightness spread of each regime against the data's (the report's Figure 2 effect as a
number) and writes a histogram plot.

    python examples/quickstart.py [--out out/quickstart.png] [--samples 128] [--steps 28]
"""

import argparse
import math
import os

import torch

import kdiff_ztsnr as kz
from kdiff_ztsnr import oracle, sampling


def regimes(model: kz.DiscreteVDenoiser, clamped: kz.DiscreteVDenoiser, steps: int) -> dict:
    native = model.get_sigmas(steps)
    sdxl = torch.cat([torch.tensor([kz.schedules.SDXL_SIGMA_MAX]), native[native < kz.schedules.SDXL_SIGMA_MAX]])
    return {'exact ∞': (model, native), 'clamp 20000': (clamped, clamped.get_sigmas(steps)),
            'σ_max 14.6146 (SDXL)': (model, sdxl)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--out', default='out/quickstart.png')
    p.add_argument('--samples', type=int, default=128)
    p.add_argument('--steps', type=int, default=28)
    p.add_argument('--sampler', default='euler_ancestral', choices=sorted(sampling.SAMPLERS))
    args = p.parse_args(argv)

    data = oracle.brightness_dataset(k=16, shape=(4, 32, 32))
    model = oracle.exact_model(data)                                           # DiscreteVDenoiser, exact at ∞
    clamped = oracle.exact_model(data, sigma_max=kz.schedules.ZTSNR_CLAMP)     # report A.2

    target = oracle.mean_brightness(data)
    q = (torch.arange(args.samples) + 0.5) / args.samples
    torch.manual_seed(0)
    n = torch.randn(args.samples, *data.shape[1:])
    results = {}
    print(f'{"regime":24s} {"σ₀":>10s} {"brightness std":>15s} {"W1 to data":>11s}')
    print(f'{"data":24s} {"":>10s} {target.std().item():15.3f} {0:11.3f}')
    for name, (m, sigmas) in regimes(model, clamped, args.steps).items():
        x = n if math.isinf(sigmas[0]) else n * sigmas[0]
        out = sampling.SAMPLERS[args.sampler](m, x, sigmas, disable=True)
        b = oracle.mean_brightness(out)
        w1 = (b.sort().values - torch.quantile(target, q)).abs().mean().item()
        results[name] = b
        print(f'{name:24s} {sigmas[0].item():10.4g} {b.std().item():15.3f} {w1:11.3f}')
    plot(results, target, args.out)


def plot(results: dict, target: torch.Tensor, path: str) -> None:
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        print('matplotlib not installed: no plot written')
        return
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4))
    bins = torch.linspace(-1.3, 1.3, 27).numpy()
    ax.hist(target.numpy(), bins=bins, density=True, alpha=0.3, label='data', color='k')
    for name, b in results.items():
        ax.hist(b.numpy(), bins=bins, density=True, histtype='step', lw=2, label=name)
    ax.set_xlabel('per-sample mean brightness')
    ax.set_ylabel('density')
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f'wrote {path}')


if __name__ == '__main__':
    main()
