"""Sampler and schedule names: the package's, A1111/Forge's labels and aliases, and the nearest valid name.

A1111 (modules/sd_samplers_kdiffusion.py, modules/sd_schedulers.py) names samplers "Euler a", "DPM++ 2M", …, with
aliases k_euler_a, k_dpmpp_2m, …; before 1.9 the schedule was part of the name ("DPM++ 2M Karras", k_dpmpp_2m_ka).
Its "Schedule type" list: Automatic, Uniform, Karras, Exponential, Polyexponential, SGM Uniform, KL Optimal, Align
Your Steps, Simple, Normal, DDIM, Beta. Uniform is k-diffusion's get_sigmas(n), the package's 'native'.
"""

import difflib
import re
from typing import Optional

from .params import SAMPLER_NAMES, SCHEDULES

# package name → A1111 label (all of A1111's k-diffusion samplers; dpm_fast / dpm_adaptive the package refuses)
A1111_SAMPLERS = {'euler': 'Euler', 'euler_ancestral': 'Euler a', 'heun': 'Heun', 'dpm_2': 'DPM2',
                  'dpm_2_ancestral': 'DPM2 a', 'lms': 'LMS', 'dpm_fast': 'DPM fast', 'dpm_adaptive': 'DPM adaptive',
                  'dpmpp_2s_ancestral': 'DPM++ 2S a', 'dpmpp_sde': 'DPM++ SDE', 'dpmpp_2m': 'DPM++ 2M',
                  'dpmpp_2m_sde': 'DPM++ 2M SDE', 'dpmpp_3m_sde': 'DPM++ 3M SDE'}
# package schedule → A1111 "Schedule type" (the same family); trailing and recommended have none
A1111_SCHEDULES = {'native': 'Uniform', 'karras': 'Karras', 'exponential': 'Exponential',
                   'polyexponential': 'Polyexponential', 'sgm_uniform': 'SGM Uniform', 'kl_optimal': 'KL Optimal',
                   'simple': 'Simple', 'normal': 'Normal', 'beta': 'Beta'}
A1111_SCHEDULE_LIST = ('Automatic', 'Uniform', 'Karras', 'Exponential', 'Polyexponential', 'SGM Uniform',
                       'KL Optimal', 'Align Your Steps', 'Simple', 'Normal', 'DDIM', 'Beta')
AUTOMATIC = 'Automatic'       # A1111: the sampler's own default schedule; here 'recommended'


def _key(name: str) -> str:
    """One spelling for 'DPM++ 2M', 'dpmpp_2m', 'k_dpmpp_2m': lower case, ++ → pp, runs of others → _."""
    key = re.sub(r'[^a-z0-9]+', '_', str(name).strip().lower().replace('++', 'pp')).strip('_')
    return key[2:] if key.startswith('k_') else key


_SAMPLER_KEYS = {**{_key(label): name for name, label in A1111_SAMPLERS.items()},
                 **{name: name for name in A1111_SAMPLERS},
                 'euler_a': 'euler_ancestral', 'dpm2': 'dpm_2', 'dpm2_a': 'dpm_2_ancestral',
                 'dpm_2_a': 'dpm_2_ancestral', 'dpmpp_2s_a': 'dpmpp_2s_ancestral', 'dpm_ad': 'dpm_adaptive'}
_SCHEDULE_KEYS = {**{_key(label): name for name, label in A1111_SCHEDULES.items()},
                  **{name: name for name in SCHEDULES}, 'sgmuniform': 'sgm_uniform', 'automatic': 'recommended'}
_SCHEDULE_SUFFIXES = {**_SCHEDULE_KEYS, 'ka': 'karras', 'exp': 'exponential'}
_NOT_PROVIDED = {'align_your_steps': 'Align Your Steps', 'ddim': 'DDIM'}


def _nearest(name: str, ours, a1111) -> str:
    """' (did you mean X?)' for the closest known spelling, in the style typed (package's or A1111's), else ''."""
    ours, a1111 = {n: n for n in ours}, {_key(v): v for v in a1111}
    names = {**a1111, **ours} if name == name.lower() and ' ' not in name else {**ours, **a1111}
    match = difflib.get_close_matches(_key(name), list(names), n=1, cutoff=0.6)
    return f' (did you mean {names[match[0]]!r}?)' if match else ''


def resolve_sampler(name: str) -> tuple[str, Optional[str]]:
    """(package sampler, schedule or None) for a package or A1111 name; 'DPM++ 2M Karras' → ('dpmpp_2m', 'karras')."""
    key = _key(name)
    if key in _SAMPLER_KEYS:
        return _check_runs(name, _SAMPLER_KEYS[key]), None
    for suffix, schedule in sorted(_SCHEDULE_SUFFIXES.items(), key=lambda kv: -len(kv[0])):
        head = key[:-len(suffix) - 1]
        if key.endswith('_' + suffix) and head in _SAMPLER_KEYS:
            return _check_runs(name, _SAMPLER_KEYS[head]), schedule
    near = _nearest(name, SAMPLER_NAMES, [A1111_SAMPLERS[n] for n in SAMPLER_NAMES])
    raise ValueError(f'unknown sampler {name!r}{near}; choose from {", ".join(SAMPLER_NAMES)} '
                     f'or their A1111 names ({", ".join(A1111_SAMPLERS[n] for n in SAMPLER_NAMES)}), optionally '
                     f'with a schedule ("DPM++ 2M Karras")')


def _check_runs(name: str, sampler: str) -> str:
    if sampler not in SAMPLER_NAMES:
        raise ValueError(f'sampler {name!r} ({sampler}) takes (σ_min, σ_max) instead of a schedule and cannot start '
                         f'from σ = ∞; choose from {", ".join(SAMPLER_NAMES)}')
    return sampler


def resolve_schedule(name: str) -> str:
    """The package schedule for a package or A1111 "Schedule type" name (Uniform → native, Automatic →
    recommended)."""
    key = _key(name)
    if key in _SCHEDULE_KEYS:
        return _SCHEDULE_KEYS[key]
    if key in _NOT_PROVIDED:
        raise ValueError(f"A1111's schedule {_NOT_PROVIDED[key]!r} is not one this package provides; choose from "
                         f"{', '.join(SCHEDULES)} or A1111's {', '.join(A1111_SCHEDULES.values())}, {AUTOMATIC}")
    near = _nearest(name, SCHEDULES, [*A1111_SCHEDULES.values(), AUTOMATIC])
    raise ValueError(f'unknown schedule {name!r}{near}; choose from {", ".join(SCHEDULES)} or '
                     f"A1111's {', '.join(A1111_SCHEDULES.values())}, {AUTOMATIC}")
