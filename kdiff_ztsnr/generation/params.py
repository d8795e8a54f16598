"""Generation parameters and their validation, without importing torch (the command line builds on this).

Parameters use the NovelAI metadata keys (prompt, uc, steps, scale, cfg_rescale, seed, sampler,
noise_schedule, …) so that a PNG's metadata is a complete, re-runnable description of the image.
"""

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Optional

from ..errors import ParamError, quote
from ..rules import Rule, fits, fmt

# schedule_policy.SCHEDULE_NAMES and 'recommended' (a test checks the two lists agree)
SCHEDULES = ('native', 'karras', 'exponential', 'polyexponential', 'kl_optimal', 'normal', 'simple', 'sgm_uniform',
             'beta', 'trailing', 'recommended')
REGIMES = ('exact', 'clamp', 'sigma_max')
# k-diffusion's samplers that take a schedule (a test checks this list against kdiff_ztsnr.sampling.SAMPLERS);
# dpm_fast / dpm_adaptive take (σ_min, σ_max) instead and refuse σ_max = ∞.
SAMPLER_NAMES = ('dpm_2', 'dpm_2_ancestral', 'dpmpp_2m', 'dpmpp_2m_sde', 'dpmpp_2s_ancestral', 'dpmpp_3m_sde',
                 'dpmpp_sde', 'euler', 'euler_ancestral', 'heun', 'lms')


@dataclass
class GenerationParams:
    prompt: str = ''
    uc: str = ''                       # negative prompt
    steps: int = 28
    scale: float = 5.                  # CFG scale
    cfg_rescale: float = 0.            # CFG rescale φ
    seed: int = 0                      # sample i uses seed + i
    n_samples: int = 1
    width: int = 32
    height: int = 32
    sampler: str = 'euler_ancestral'
    noise_schedule: str = 'recommended'
    regime: str = 'exact'              # 'exact' from ∞ | 'clamp' at 20000 | 'sigma_max' (from sigma_start)
    sigma_start: Optional[float] = None  # the finite start for regime='sigma_max', before resolution scaling
    resolution_aware: bool = True      # scale a finite start ×2 per ×2 canvas side (report §2.3)
    strength: float = 1.               # img2img strength (1: text-to-image)
    eta: Optional[float] = None        # ancestral/SDE η (None: the sampler's default)
    quantize_timesteps: bool = False   # integer t as ComfyUI / A1111 feed the network, to reproduce their images
                                       # (off: benchmarks/results/quantize_timesteps.md)
    model: str = 'embedded'
    loras: list = field(default_factory=list)  # [[file, weight], …]: LoRA files `generate` applies to the model

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> 'GenerationParams':
        """The known keys of d (others, e.g. A1111's extras, are ignored); the earlier names (OLD_NAMES) too."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in new_names(d).items() if k in names})


# Earlier names of parameters, still accepted by from_dict and prompt files (the PNG metadata keeps them as its
# keys: metadata.FILE_KEYS): the regime was `ztsnr`, the finite start `sigma_max`.
OLD_NAMES = {'ztsnr': 'regime', 'sigma_max': 'sigma_start'}


def new_names(d: dict) -> dict:
    """d with every earlier name (OLD_NAMES) replaced by the parameter's name (ParamError if both are
    given with different values)."""
    out = {}
    for key, value in d.items():
        name = OLD_NAMES.get(key, key)
        if name in out and out[name] != value:
            earlier = {v: k for k, v in OLD_NAMES.items()}[name]
            raise ParamError(f'{{{name}}} is given twice with different values, as itself and by its earlier name '
                             f'{quote(repr(earlier))}: give one')
        out[name] = value
    return out


def Field(kind: type, lo: Optional[float] = None, hi: Optional[float] = None, choices: tuple = (),
          optional: bool = False, option: Optional[str] = None) -> Rule:
    """One parameter's rule: its type (an int is accepted for a float), an inclusive range (a string's: its
    length) or choices, whether None is allowed, and its command-line option (default --key-with-dashes)."""
    return Rule((kind,), lo, hi, choices=choices, optional=optional, option=option)


def describe(f: Rule) -> str:
    """What a parameter must be, in the parameters' words."""
    if f.choices:
        return 'one of ' + ', '.join(f.choices)
    what = {int: 'an integer', float: 'a finite number', str: 'a string', bool: 'true or false'}[f.kind]
    if f.lo is not None and f.hi is not None:
        what += f' in [{fmt(f.lo)}, {fmt(f.hi)}]'
    elif f.hi is not None:
        what += f' of at most {fmt(f.hi)}'
    return what + (' (or none)' if f.optional else '')


MAX_SIDE = 8192                         # pixels per side
MAX_PIXELS = 2 ** 26                    # width × height × n_samples (64 Mpx ≈ 8 SDXL 2048² images)
MAX_SEED = 2 ** 63 - 1
MAX_WORK = MAX_PIXELS * 1000            # pixels × steps of one run, as a whole (e.g. 8 × 2048² at 1000 steps)
MAX_PROMPT = 100_000                    # characters
# Rows are checked alike for command-line values and for metadata read from a PNG (--from-image).
FIELDS = {
    'prompt': Field(str, hi=MAX_PROMPT, optional=True, option='PROMPT'),
    'uc': Field(str, hi=MAX_PROMPT, option='--uc'),
    'steps': Field(int, 1, 10_000),
    'scale': Field(float, 0, 100),
    'cfg_rescale': Field(float, 0, 1),
    'seed': Field(int, 0, MAX_SEED),
    'n_samples': Field(int, 1, 256, option='-n/--n-samples'),
    'width': Field(int, 1, MAX_SIDE),
    'height': Field(int, 1, MAX_SIDE),
    'sampler': Field(str, choices=SAMPLER_NAMES),
    'noise_schedule': Field(str, choices=SCHEDULES, option='--schedule'),
    'regime': Field(str, choices=REGIMES, option='--ztsnr'),
    'sigma_start': Field(float, 1e-3, 1e5, optional=True, option='--sigma-max'),
    'resolution_aware': Field(bool, option='--no-resolution-aware'),
    'strength': Field(float, 0.001, 1),
    'eta': Field(float, 0, 10, optional=True),
    'quantize_timesteps': Field(bool, option='--quantize-timesteps'),
    'model': Field(str, hi=4096),
}


def check_value(key: str, value, where: str = '') -> None:
    """ParamError naming the key and what would be valid, unless value fits FIELDS[key]."""
    f = FIELDS[key]
    if not fits(f, value):
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + '...'
        what = describe(f) if f.kind is not str or f.choices else f'a string of at most {f.hi:g} characters'
        raise ParamError(f'{where}{{{key}}} must be {what}, got {quote(shown)}')


MAX_LORAS = 16


def check_loras(value, where: str = '') -> None:
    """loras: a list of at most MAX_LORAS [file, weight] pairs, weights finite in [-10, 10]."""
    ok = isinstance(value, (list, tuple)) and len(value) <= MAX_LORAS and all(
        isinstance(e, (list, tuple)) and len(e) == 2 and isinstance(e[0], str) and 0 < len(e[0]) <= 4096
        and isinstance(e[1], (int, float)) and not isinstance(e[1], bool) and math.isfinite(e[1])
        and -10 <= e[1] <= 10 for e in value)
    if not ok:
        raise ParamError(f'{where}{{loras}} must be at most {MAX_LORAS} [file, weight] pairs with '
                         f'finite weights in [-10, 10], got {quote(str(value)[:200])}')


def check_fields(d: dict, where: str = '') -> None:
    """Check every known key of a parameter dict (unknown keys, e.g. A1111's extras, are ignored); `where`
    starts each message (marked as `errors` marks messages)."""
    for key, value in d.items():
        if key in FIELDS:
            check_value(key, value, where)
        elif key == 'loras':
            check_loras(value, where)


def check_params(p: GenerationParams, size_multiple: int = 1, name: str = 'the model', limits: bool = True) -> None:
    """One clear error per bad parameter (limits=False lifts the size bounds MAX_SIDE / MAX_PIXELS)."""
    d = p.to_dict()
    if not limits:
        d = {k: v for k, v in d.items() if k not in ('width', 'height', 'n_samples', 'steps')}
    check_fields(d)
    m = size_multiple
    if p.width % m or p.height % m or p.width <= 0 or p.height <= 0:
        raise ValueError(f'width and height must be positive multiples of {m} for {name}, '
                         f'got {p.width}x{p.height}')
    if p.regime == 'sigma_max' and p.sigma_start is None:
        raise ParamError("{regime='sigma_max'} needs a finite positive {sigma_start}, got none")
    if p.seed + p.n_samples - 1 > MAX_SEED:
        raise ValueError(f'seed + n_samples - 1 must be at most {MAX_SEED}, got {p.seed + p.n_samples - 1}')
    if limits and p.width * p.height * p.n_samples > MAX_PIXELS:
        raise ParamError(f'width x height x n_samples = {p.width}x{p.height}x{p.n_samples} exceeds the limit of '
                         f'{MAX_PIXELS} pixels (lower them, or pass {{limits=False}})')
    if limits and p.width * p.height * p.n_samples * p.steps > MAX_WORK:
        raise ParamError(f'width x height x n_samples x steps = {p.width}x{p.height}x{p.n_samples}x{p.steps} '
                         f'exceeds the limit of {MAX_WORK} pixel-steps (lower them, or pass {{limits=False}})')
