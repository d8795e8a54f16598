"""Generate a grid of cases with whatever kdiff_ztsnr is on the path and save them, or compare two saved runs.

Used to check that a change is bit-for-bit neutral on the CPU: run once with the old checkout first on
PYTHONPATH and once with the new one, then compare (torch.equal per case).

    PYTHONPATH=/old python scripts/same_outputs.py --save old.pt
    PYTHONPATH=/new python scripts/same_outputs.py --save new.pt
    python scripts/same_outputs.py --compare old.pt new.pt
"""

import argparse

import torch

SAMPLERS = ('euler', 'euler_ancestral', 'heun', 'dpm_2', 'dpm_2_ancestral', 'lms', 'dpmpp_2s_ancestral',
            'dpmpp_sde', 'dpmpp_2m', 'dpmpp_2m_sde', 'dpmpp_3m_sde')


def cases(smoke: bool = False) -> list[dict]:
    out = [dict(sampler=s, noise_schedule=k, ztsnr=z) for s in SAMPLERS for k in ('recommended', 'native', 'karras')
           for z in ('exact', 'clamp')]
    out += [dict(sampler='euler_ancestral', cfg_rescale=0.7), dict(sampler='dpmpp_2m_sde', eta=0.5),
            dict(sampler='euler_ancestral', eta=0.), dict(sampler='euler_ancestral', img2img=0.6),
            dict(sampler='dpmpp_2m', noise_schedule='exponential', ztsnr='sigma_max', sigma_max=80.)]
    return out[:3] if smoke else out


def run(smoke: bool = False) -> dict:
    from kdiff_ztsnr.generation.generate import generate
    try:
        from kdiff_ztsnr.generation.lookup import load_pipeline
    except ImportError:                               # checkouts before the layout change
        from kdiff_ztsnr.generation.loading import load_pipeline
    from kdiff_ztsnr.generation.params import GenerationParams
    pipe = load_pipeline('embedded')
    res = {}
    for c in cases(smoke):
        c = dict(c)
        strength = c.pop('img2img', None)
        # from_dict: the cases' keys ztsnr / sigma_max are read by an older checkout and this one alike
        p = GenerationParams.from_dict({'prompt': 'red circle, blue background', 'steps': 7, 'n_samples': 2,
                                        'seed': 11, **c})
        init = None
        if strength is not None:
            init = torch.linspace(-1, 1, 3 * 32 * 32).view(1, 3, 32, 32)
            p.strength = strength
        res[repr(sorted(c.items())) + ('' if strength is None else f' img2img {strength}')] = generate(pipe, p, init)
    return res


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--save')
    ap.add_argument('--compare', nargs=2)
    ap.add_argument('--smoke', action='store_true')
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    if a.save:
        torch.save(run(a.smoke), a.save)
    if a.compare:
        old, new = (torch.load(f, weights_only=True) for f in a.compare)
        same = [k for k in old if k in new and torch.equal(old[k], new[k])]
        for k in old:
            print('identical' if k in same else 'DIFFERENT', k)
        print(f'{len(same)} of {len(old)} cases bit-for-bit identical')


if __name__ == '__main__':
    main()
