"""Executable documentation: every ```bash and ```python block of README.md, docs/*.md and examples/*.md runs
as written.

The blocks of one document run in order in a fresh temporary folder (a fresh checkout: `examples/` is linked
in; a later block may use what an earlier one wrote, as a reader would) as subprocesses with
this checkout's package on PYTHONPATH; `kdiff-ztsnr` is run as `python -m kdiff_ztsnr.cli` and `python` as
this interpreter. Only sizes shrink, by the SMALLER mapping below, so the suite stays fast on a CPU; SKIP
names the commands that are not run, with the reason.
"""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / 'README.md', *sorted((ROOT / 'docs').glob('*.md')), *sorted((ROOT / 'examples').glob('*.md'))]
# (pattern, replacement): fewer steps and samples, the same commands.
SMALLER = [
    (r'--steps 28\b', '--steps 2'),
    (r'--steps 1200\b', '--steps 3'),
    (r' -n 4\b', ' -n 2'),
    (r'^(kdiff-ztsnr demo)$', r'\1 --samples 2 --steps 2'),
    (r'^(.*--config examples/train_tiny\.json(?:(?!--steps).)*)$', r'\1 --steps 2'),
    (r'get_sigmas\(28\)', 'get_sigmas(4)'),
    (r'\* 8\)', '* 2)'),
    (r'randn\(8, ', 'randn(2, '),
]
SKIP = {
    'bash scripts/dev.sh demo': 'set-up: creates .venv and installs packages (the demo itself runs below)',
    'bash scripts/dev.sh test': 'set-up: creates .venv and runs this very suite',
    "pip install 'setuptools<81'": 'installation from the package registry',
    'pip install torch torchvision': 'installation from the package registry',
    'pip install -e .': 'installation (this test already runs the checkout)',
    'source .venv/bin/activate': 'shell set-up: the commands below run with this interpreter',
}


# A block preceded by `<!-- readme-test: tests/test_x.py — reason -->` needs what CI cannot have (a real SDXL
# checkpoint, ComfyUI, several GPUs); it is run there, on tiny stand-ins, by the named test, not here.
COVERED = re.compile(r'<!-- readme-test: (tests/\S+\.py) — ([^>]+) -->\n+```(?:bash|python)\n(.*?)^```', re.S | re.M)


def covered(path: Path) -> list[tuple[str, str, str]]:
    """(test file, reason, code) of the blocks another test runs."""
    return COVERED.findall(path.read_text())


def blocks(path: Path) -> list[tuple[str, str]]:
    text = COVERED.sub('', path.read_text())
    return re.findall(r'^```(bash|python)\n(.*?)^```', text, re.S | re.M)


def smaller(text: str) -> str:
    for pattern, repl in SMALLER:
        text = re.sub(pattern, repl, text, flags=re.M)
    return text


def command(line: str) -> list[str]:
    argv = shlex.split(smaller(shlex.join(shlex.split(line, comments=True))))
    if argv[0] == 'kdiff-ztsnr':
        return [sys.executable, '-m', 'kdiff_ztsnr.cli', *argv[1:]]
    if argv[0] == 'python':
        return [sys.executable, *argv[1:]]
    raise AssertionError(f'README command not understood by the test: {line}')


def test_every_block_is_collected():
    assert all(blocks(doc) or covered(doc) for doc in DOCS)
    assert {d.name for d in DOCS} >= {'README.md', 'train_tiny.md', 'sampling.md', 'sdxl.md', 'hosts.md', 'training.md',
                                     'benchmarks.md'}
    skipped = {line.split('#')[0].strip() for doc in DOCS for lang, code in blocks(doc) if lang == 'bash'
               for line in code.splitlines() if line.split('#')[0].strip() in SKIP}
    assert skipped == set(SKIP)                        # nothing else is skipped, and no stale entry


@pytest.mark.parametrize('doc', DOCS, ids=lambda d: d.name)
def test_covered_blocks_name_their_test(doc):
    """Every block not run here names an existing test that exercises it, and that test mentions one of the
    block's distinctive words (a name of 8+ characters), so the reference cannot silently go stale."""
    for test, reason, code in covered(doc):
        path = ROOT / test
        assert path.is_file(), f'{doc.name}: {test} does not exist'
        words = [w for w in re.findall(r'[A-Za-z_][\w.-]+', code) if len(w) >= 8]
        assert any(w in path.read_text() for w in words), f'{doc.name}: {test} never mentions any of {words}'


def runs_of(lang: str, code: str) -> list[list[str]]:
    if lang == 'python':
        return [[sys.executable, '-c', smaller(code)]]
    lines = [ln for ln in code.splitlines() if ln.split('#')[0].strip()]
    return [command(ln) for ln in lines if ln.split('#')[0].strip() not in SKIP]


@pytest.mark.parametrize('doc', DOCS, ids=lambda d: d.name)
def test_document_runs(doc, tmp_path):
    (tmp_path / 'examples').symlink_to(ROOT / 'examples')
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]),
           'OMP_NUM_THREADS': '1'}
    for index, (lang, code) in enumerate(blocks(doc)):
        for argv in runs_of(lang, code):
            proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
            what = f'{doc.name} block {index}: {shlex.join(argv)[:300]}'
            assert proc.returncode == 0, f'{what}\n{proc.stderr[-3000:]}'
            assert 'Traceback' not in proc.stderr, f'{what}\n{proc.stderr[-3000:]}'
