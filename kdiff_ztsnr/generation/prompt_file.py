"""`sample --prompt-file FILE`: many prompts in one command, resumable, spread over processes. Imports no torch.

A line is a prompt, or (starting with ``{``) a JSON object of parameters for that line: the keys of
``params.FIELDS`` (prompt, uc, steps, scale, cfg_rescale, seed, n_samples, width, height, sampler,
noise_schedule, regime, sigma_start, eta, …) and the aliases ``negative`` (uc), ``schedule`` (noise_schedule),
``n`` (n_samples), ``ztsnr`` (regime), ``sigma_max`` (sigma_start) and ``size`` ("WxH" or [W, H]); each is
checked like the option and an error names the line.
Blank lines and lines starting with ``#`` are skipped. A line's values override the command line's.

Seeds: line k (0-based among the prompt lines) without a "seed" starts at ``--seed + k·n`` (n = -n), so every
image of the file has its own seed whatever the process count. Output names are ``line-LLLLL-SEED.png``
(LLLLL: the 1-based line number in the file): a re-run of the same command skips the images already written,
and several processes (``RANK``/``WORLD_SIZE``, set by accelerate launch or torchrun) each take every
WORLD_SIZE-th job and write the same files one process would.
"""

import difflib
import json
import os
import re
from dataclasses import dataclass

from ..errors import ParamError, quote
from .params import FIELDS, OLD_NAMES, check_fields

ALIASES = {'negative': 'uc', 'schedule': 'noise_schedule', 'n': 'n_samples', **OLD_NAMES}
KEYS = sorted([*FIELDS, *ALIASES, 'size'])
NOT_PER_LINE = {'model'}                         # one model per command: it is loaded once
MAX_LINES = 1_000_000


@dataclass
class Job:
    line: int            # 1-based line number in the file
    params: dict         # the line's own values (FIELDS keys), before the command line's defaults

    def seeds(self, base_seed: int, index: int, n: int) -> list:
        start = self.params.get('seed', base_seed + index * n)
        return [start + i for i in range(self.params.get('n_samples', n))]


def parse_size(value, where: str) -> dict:
    if isinstance(value, str) and re.fullmatch(r'\d+x\d+', value):
        w, h = map(int, value.split('x'))
    elif isinstance(value, list) and len(value) == 2 and all(type(v) is int for v in value):
        w, h = value
    else:
        raise ParamError(f'{where}size must be "WIDTHxHEIGHT" or [width, height], got {quote(repr(value))}')
    return {'width': w, 'height': h}


def parse_line(text: str, where: str) -> dict:
    """One line's parameters (FIELDS keys), checked; ValueError naming `where` (file and line)."""
    if not text.startswith('{'):
        params = {'prompt': text}
    else:
        try:
            obj = json.loads(text)
        except ValueError as e:
            raise ParamError(f'{where}not valid JSON ({quote(e)})') from None
        if not isinstance(obj, dict):
            raise ParamError(f'{where}a JSON line must be an object, got {type(obj).__name__}')
        params = {}
        for key, value in obj.items():
            if key == 'size':
                params.update(parse_size(value, where))
            elif key in ALIASES or key in FIELDS and key not in NOT_PER_LINE:
                params[ALIASES.get(key, key)] = value
            else:
                close = difflib.get_close_matches(key, KEYS, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ''
                raise ParamError(f'{where}unknown key {quote(repr(key))}{hint}; the keys are: {", ".join(KEYS)}')
        if not isinstance(params.get('prompt'), str):
            raise ParamError(f'{where}a JSON line needs a "prompt" string')
    check_fields(params, where)
    return params


def read_prompt_file(path: str) -> list:
    """Every prompt line of the file as a Job, each checked; an error names the file and line."""
    if not os.path.isfile(path):
        raise ParamError(f'{{prompt_file={quote(path)}}}: no such file')
    jobs = []
    try:
        with open(path, encoding='utf-8') as f:
            for number, raw in enumerate(f, 1):
                text = raw.strip()
                if text and not text.startswith('#'):
                    jobs.append(Job(number, parse_line(text, f'{{prompt_file={quote(path)}}} line {number}: ')))
                if len(jobs) > MAX_LINES:
                    raise ParamError(f'{{prompt_file={quote(path)}}}: more than {MAX_LINES} prompts')
    except UnicodeDecodeError as e:
        raise ParamError(f'{{prompt_file={quote(path)}}}: not UTF-8 text ({e.reason} at byte {e.start})') from None
    if not jobs:
        raise ParamError(f'{{prompt_file={quote(path)}}}: no prompts in it (blank lines and # comments are skipped)')
    return jobs


def output_name(line: int, seed: int) -> str:
    return f'line-{line:05d}-{seed}.png'


def rank_and_world() -> tuple:
    """This process's rank and the process count, from the launcher's environment (1 process without one)."""
    return int(os.environ.get('RANK', 0)), int(os.environ.get('WORLD_SIZE', 1))


def share(items: list, rank: int, world: int) -> list:
    """Every world-th item from rank: the same split on every process, no communication needed."""
    return items[rank::world]
