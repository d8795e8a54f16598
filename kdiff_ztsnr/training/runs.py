"""What a training run may do to its out_dir, and what a resume may change: nothing a user made is lost.

- An out_dir holding a previous run (RUN_FILES or checkpoint-*) is refused unless resuming or overwriting.
- Checkpoints are pruned by step number; the one just written is always kept, so ``latest`` never dangles.
- metrics.jsonl is trimmed atomically.
- A resume must use the checkpoint's settings except RESUMABLE keys (its optimizer and schedules continue).
"""

import json
import re
import shutil
from pathlib import Path
from typing import Optional

from ..errors import ParamError, quote
from ..files import atomic_write

RUN_FILES = ('config.json', 'metrics.jsonl', 'latest')
CHECKPOINT = re.compile(r'^checkpoint-(\d+)$')
# Keys a resume may change; every other key must equal the checkpoint's config.
RESUMABLE = {'training.steps', 'training.checkpoint_every', 'training.keep_checkpoints', 'training.log_every',
             'training.out_dir', 'training.threads', 'dataset.loader_threads', 'text.cache', 'dataset.location'}


def checkpoints(out_dir: Path) -> dict[int, Path]:
    """step → checkpoint directory."""
    out_dir = Path(out_dir)
    found = (CHECKPOINT.match(p.name) for p in out_dir.iterdir()) if out_dir.is_dir() else ()
    return {int(m.group(1)): out_dir / m.group(0) for m in found if m and (out_dir / m.group(0)).is_dir()}


def previous_run(out_dir: Path) -> list[str]:
    """Names in out_dir that belong to a training run."""
    out_dir = Path(out_dir)
    return [n for n in RUN_FILES if (out_dir / n).exists()] + sorted(p.name for p in checkpoints(out_dir).values())


class NonFiniteLoss(ParamError):
    """Training stopped because the loss was NaN or inf (the last good checkpoint is kept)."""


def check_out_dir(out_dir: Path, resume: Optional[str], overwrite: bool) -> None:
    """Refuse to start a new run over a previous one (unless overwrite), before any work is done."""
    found = previous_run(out_dir)
    if found and resume is None and not overwrite:
        shown = ', '.join(found[:4]) + (', …' if len(found) > 4 else '')
        if not checkpoints(out_dir):
            raise ParamError(f'training.out_dir {quote(out_dir)} holds a previous run that wrote no checkpoint '
                             f'({quote(shown)}), so there is nothing to {{resume}}; pass {{overwrite=True}} to '
                             f'replace it, or choose another {{out_dir}}')
        raise ParamError(f'training.out_dir {quote(out_dir)} holds a previous run ({quote(shown)}); continue it '
                         f'with {{resume={quote(out_dir)}}}, choose another {{out_dir}}, or pass {{overwrite=True}} '
                         f'to replace it')


def check_resumable(path: Path) -> None:
    """--resume of an out_dir without a checkpoint (a run killed before its first one) says what works."""
    path = Path(path)
    if path.is_dir() and not (path / 'latest').exists() and not (path / 'state.pt').exists() \
            and not (path / 'ema.safetensors').exists():
        what = 'holds a run that wrote no checkpoint' if previous_run(path) else 'holds no checkpoint'
        raise ParamError(f'{{resume={quote(path)}}}: the folder {what} (killed before training.checkpoint_every?); '
                         f'start again with {{config=CFG}} {{out_dir={quote(path)}}} {{overwrite=True}}')
    name = (path / 'latest').read_text().strip() if (path / 'latest').is_file() else None
    if name is not None and not (path / name).is_dir():
        there = ', '.join(sorted(p.name for p in checkpoints(path).values())) or 'none'
        raise ParamError(f'{{resume={quote(path)}}}: its latest file names {quote(repr(name))}, which is not a '
                         f'checkpoint folder there (checkpoints: {quote(there)}); pass one of them as {{resume}}, or '
                         f'start again with {{overwrite=True}}')


def clear_run(out_dir: Path) -> None:
    """overwrite: remove a previous run's files and checkpoints (the dataset folder is kept)."""
    for step, path in checkpoints(out_dir).items():
        shutil.rmtree(path)
    for name in RUN_FILES:
        (Path(out_dir) / name).unlink(missing_ok=True)


def prune(out_dir: Path, keep: int, current: int) -> None:
    """Keep the checkpoint of step `current` and the keep − 1 newest before it; later steps are left alone."""
    if keep:
        older = sorted(s for s in checkpoints(out_dir) if s < current)
        for step in older[:max(0, len(older) - (keep - 1))]:
            shutil.rmtree(Path(out_dir) / f'checkpoint-{step:08d}', ignore_errors=True)


def trim_metrics(path: Path, step: int) -> None:
    """Drop metrics.jsonl lines past step (a run that went on after its last checkpoint), atomically."""
    if path.is_file():
        rows = []
        for r in path.read_text().splitlines():
            try:
                keep = json.loads(r)['step'] <= step
            except (ValueError, KeyError, TypeError):
                keep = False                              # a torn last line of a killed run
            if keep:
                rows.append(r)
        atomic_write(path, lambda tmp: Path(tmp).write_text(''.join(r + '\n' for r in rows)))


def _flat(d: dict, prefix: str = '') -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != 'buckets':
            out.update(_flat(v, f'{prefix}{k}.'))
        else:
            out[f'{prefix}{k}'] = v
    return out


def check_resume_config(saved: dict, config: dict, path: Path) -> None:
    """Refuse a resume whose config differs from the checkpoint's in anything but RESUMABLE keys."""
    old, new = _flat(saved), _flat(json.loads(json.dumps(config)))
    changed = sorted(k for k in old.keys() | new.keys() if k not in RESUMABLE and old.get(k) != new.get(k))
    if changed:
        shown = ', '.join(f'{k} ({old.get(k)!r} → {new.get(k)!r})' for k in changed[:3])
        raise ParamError(f'{{resume={quote(path)}}}: the config changes {quote(shown)}'
                         + (' and more' if len(changed) > 3 else '')
                         + '; a resume continues the saved optimizer and schedules, so only '
                         + ', '.join(sorted(RESUMABLE)) + ' may change (or start a new run)')
