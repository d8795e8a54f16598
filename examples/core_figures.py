"""Print the core figures of the ZTSNR wrappers and samplers, measured on the closed-form oracle.

    python examples/core_figures.py

Constants of the schedules, the σ₀ → ∞ convergence of an ordinary Euler step to the exact first step, the
agreement of the clamped (20000) variant with the exact one, every sampler from ∞ (finite, calls), the
brightness spread from ∞ versus SDXL's σ_max, and what fp16/bf16 networks receive at σ = 20000 and ∞.
"""

import math

import torch

import kdiff_ztsnr as kz                   # first: it filters the dependencies' warnings (pkg_resources, torchsde)
from kdiff_ztsnr import oracle, sampling
from k_diffusion import sampling as K


class HalfNet(torch.nn.Module):
    """A 1×1 convolution as a v network (x_in, t) -> v, to see what a low-precision network receives."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 4, 1)

    def forward(self, x, t):
        return self.conv(x)


def main():
    sdxl = kz.schedules.sigmas_from_alphas_cumprod(kz.schedules.sdxl_alphas_cumprod())
    z = kz.schedules.sigmas_from_alphas_cumprod(kz.schedules.ztsnr_alphas_cumprod())
    data = oracle.brightness_dataset(k=16, shape=(4, 16, 16))
    exact, clamped = oracle.exact_model(data), oracle.exact_model(data, sigma_max=kz.schedules.ZTSNR_CLAMP)
    native = exact.get_sigmas(28)
    print(f'SDXL σ_min {sdxl[0]:.6f}  σ_max {sdxl[-1]:.4f}  ZTSNR σ[998] {z[-2]:.2f}  σ[999] {z[-1]}')
    print(f'native-28: σ₀ {native[0]}  σ₁ {native[1]:.2f}  σ₂ {native[2]:.2f}  σ₂₇ {native[-2]:.4f}  '
          f'clamped σ₀ {clamped.get_sigmas(28)[0]:.1f}')
    print(f'sigma_to_t(∞) = {exact.sigma_to_t(torch.tensor(math.inf)).item()} (quantized '
          f'{exact.sigma_to_t(torch.tensor(math.inf), quantize=True).item()}), t_to_sigma(999) = '
          f'{exact.t_to_sigma(torch.tensor(999.)).item()}')

    n = torch.randn(4, *data.shape[1:], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x1 = sampling.infinite_step(exact, n, torch.tensor(56.18, dtype=torch.float64))
    for s0 in (1e3, 1e4, 1e5, 1e6):
        euler = K.sample_euler(exact, n * s0, torch.tensor([s0, 56.18], dtype=torch.float64), disable=True)
        print(f'Euler step from σ₀={s0:.0e} vs exact first step: max |Δ| = {(euler - x1).abs().max():.3e}')

    n32 = n.float()
    a = sampling.sample_euler(exact, n32, native, disable=True)
    b = K.sample_euler(clamped, n32 * 20000., clamped.get_sigmas(28), disable=True)
    print(f'clamp-20000 vs exact after 28 Euler steps: max |Δ| = {(a - b).abs().max():.4f}, '
          f'brightness |Δ| = {(oracle.mean_brightness(a) - oracle.mean_brightness(b)).abs().max():.5f}')

    for name, fn in sampling.SAMPLERS.items():
        if name in ('dpm_fast', 'dpm_adaptive'):
            continue
        exact.inner_model.calls = 0
        out = fn(exact, n32.clone(), exact.get_sigmas(10), disable=True)
        print(f'  {name:20s} from ∞, 10 steps: finite={torch.isfinite(out).all().item()} '
              f'calls={exact.inner_model.calls}')

    big = oracle.brightness_dataset(k=16, shape=(4, 32, 32))
    model = oracle.exact_model(big)
    noise = torch.randn(64, *big.shape[1:], generator=torch.Generator().manual_seed(0))
    sig = model.get_sigmas(28)
    finite = torch.cat([torch.tensor([kz.schedules.SDXL_SIGMA_MAX]), sig[sig < kz.schedules.SDXL_SIGMA_MAX]])
    torch.manual_seed(0)
    b_inf = oracle.mean_brightness(sampling.sample_euler_ancestral(model, noise, sig, disable=True))
    torch.manual_seed(0)
    b_sdxl = oracle.mean_brightness(sampling.sample_euler_ancestral(model, noise * finite[0], finite, disable=True))
    target = oracle.mean_brightness(big)
    q = (torch.arange(64) + 0.5) / 64
    w1 = lambda b: (b.sort().values - torch.quantile(target, q)).abs().mean().item()   # noqa: E731
    print(f'brightness std: data {target.std():.3f}, from ∞ {b_inf.std():.3f}, from 14.6146 {b_sdxl.std():.3f}; '
          f'W1 to data: from ∞ {w1(b_inf):.3f}, from 14.6146 {w1(b_sdxl):.3f}')

    for dtype in (torch.float16, torch.bfloat16):
        for sigma_max, s in ((None, math.inf), (20000., 20000.)):
            seen = []
            net = HalfNet().to(dtype)                             # its parameters decide the input dtype
            net.conv.register_forward_hook(lambda m, i, o: seen.append(i[0]))
            m = kz.DiscreteVDenoiser(net, kz.schedules.ztsnr_alphas_cumprod(), sigma_max=sigma_max)
            x = torch.randn(1, 4, 128, 128) * 4 * (1 if math.isinf(s) else s)
            d = m(x, torch.full([1], s))
            print(f'{str(dtype):15s} σ={s:<7}: network input {seen[-1].dtype}, finite={torch.isfinite(seen[-1]).all().item()}, '
                  f'max |x_in| {seen[-1].abs().max().item():.2f}; output finite={torch.isfinite(d).all().item()}')


if __name__ == '__main__':
    main()
