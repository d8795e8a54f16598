"""The command line as a new user meets it: usage errors before any heavy import, --version, sub-command usage
with "did you mean", progress bars that --quiet silences, and --prompt-file (parsing, resume, two processes)."""

import re
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from kdiff_ztsnr import cli
from kdiff_ztsnr.cli.words import said
from kdiff_ztsnr.generation.prompt_file import output_name, parse_line, read_prompt_file
from tests.helpers import train_tiny_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HEAVY = ('torch', 'k_diffusion', 'diffusers', 'transformers')
PROBE = ('import sys; from kdiff_ztsnr.cli import main\n'
         'try:\n    rc = main(sys.argv[1:])\nexcept SystemExit as e:\n    rc = e.code\n'
         'print("heavy:", [m for m in %r if m in sys.modules], "rc:", rc, file=sys.stderr)' % (HEAVY,))


def probe(args, cwd=None):
    env = {**os.environ, 'PYTHONPATH': ROOT}
    return subprocess.run([sys.executable, '-W', 'default', '-c', PROBE, *map(str, args)], capture_output=True,
                          text=True, timeout=120, cwd=cwd, env=env)


@pytest.fixture(scope='module')
def ckpt(tmp_path_factory):
    return train_tiny_checkpoint(tmp_path_factory.mktemp('ckpt'))


@pytest.mark.parametrize('args, message', [
    (['sample', 'x', '--init-image', 'missing.png'], '--init-image missing.png: no such file'),
    (['sample', 'x', '--model', 'no-such-model.safetensors'], '--model no-such-model.safetensors: model not found'),
    (['sample', 'x', '--steps', '0'], 'steps (--steps) must be an integer in [1, 10000], got 0'),
    (['sample', 'x', '--out', '/proc/forbidden'], '/proc is on the proc pseudo-filesystem'),
    (['sample', 'x', '--strength', '0.5'], '--strength needs --init-image'),
    (['sample', 'prompts.txt'], 'use --prompt-file prompts.txt'),
    (['sample', '--prompt-file', 'bad.jsonl'], 'bad.jsonl line 2: unknown key'),
    (['sample', '--prompt-file', 'missing.txt'], '--prompt-file missing.txt: no such file'),
    (['demo', '--samples', '1'], '--samples must be an integer in [2, 256]'),
])
def test_usage_errors_import_nothing_heavy(tmp_path, args, message):
    """Each usage error is one `error:` line (exit 2) printed before torch, diffusers or transformers import."""
    (tmp_path / 'prompts.txt').write_text('completely black\n')
    (tmp_path / 'bad.jsonl').write_text('{"prompt": "completely black"}\n{"promt": "completely white"}\n')
    proc = probe(args, cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert lines[-1] == 'heavy: [] rc: 2', proc.stderr
    assert len(lines) == 2 and lines[0].startswith('error: ') and message in lines[0], proc.stderr


def test_version_and_sub_command_typos(capsys):
    from kdiff_ztsnr import __version__
    with pytest.raises(SystemExit):
        cli.main(['--version'])
    assert capsys.readouterr().out.strip() == f'kdiff-ztsnr {__version__}'
    with pytest.raises(SystemExit) as e:
        cli.main(['sample', 'x', '--stpes', '4'])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith('usage: kdiff-ztsnr sample ')      # the sub-command's usage
    assert 'unrecognized arguments: --stpes 4 (did you mean --steps?)' in err
    with pytest.raises(SystemExit):
        cli.main(['smaple', 'x'])
    assert "unknown command 'smaple' (did you mean sample?)" in capsys.readouterr().err


def test_defaults_printed_once(capsys):
    with pytest.raises(SystemExit):
        cli.main(['demo', '--help'])
    help_text = ' '.join(capsys.readouterr().out.split())
    assert help_text.count('(default: auto)') == 2                  # --device and --dtype, once each
    assert '(default: auto) (default: auto)' not in help_text


def run_in_terminal(args, timeout=300):
    """Run the CLI with stderr on a pseudo-terminal (where progress bars are drawn); returns what it showed."""
    import pty
    code = 'import sys; from kdiff_ztsnr.cli import main; sys.exit(main(sys.argv[1:]))'
    script = [sys.executable, '-c', code, *map(str, args)]
    out = []
    pid, fd = pty.fork()
    if pid == 0:                                                   # child: a 120x40 terminal is its stdio
        import fcntl
        import struct
        import termios
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack('HHHH', 40, 120, 0, 0))
        os.environ['PYTHONPATH'] = ROOT
        os.execv(sys.executable, script)
    while True:
        try:
            data = os.read(fd, 4096)
        except OSError:
            break
        if not data:
            break
        out.append(data)
    os.waitpid(pid, 0)
    return b''.join(out).decode('utf-8', 'replace')


def test_progress_bars_show_steps_as_given_and_quiet_silences(ckpt, tmp_path):
    args = ['sample', 'completely black', '--model', ckpt, '--steps', 5, '--width', 16, '--height', 16,
            '--device', 'cpu']
    shown = run_in_terminal([*args, '--out', tmp_path / 'a'])
    assert 'loading model' in shown and 'done in' in shown
    assert 'sampling (euler_ancestral)' in shown and '0/5 [' in shown       # ∞ counts as a step: 5 as given
    assert '/4 [' not in shown and '/6 [' not in shown
    quiet = run_in_terminal([*args, '--out', tmp_path / 'b', '--quiet'])
    assert 'sampling' not in quiet and 'loading' not in quiet and '%|' not in quiet
    assert quiet.strip().endswith('00000-0.png')                  # only the written path


def test_prompt_file_lines_are_checked_like_options(tmp_path):
    assert parse_line('red circle, blue background', 'f: ') == {'prompt': 'red circle, blue background'}
    assert parse_line('{"prompt": "x", "negative": "y", "size": "16x32", "schedule": "karras", "n": 2, '
                      '"seed": 5}', 'f: ') == {'prompt': 'x', 'uc': 'y', 'width': 16, 'height': 32,
                                               'noise_schedule': 'karras', 'n_samples': 2, 'seed': 5}
    for line in ('{"prompt": "x", "ztsnr": "sigma_max", "sigma_max": 80}',            # the earlier names
                 '{"prompt": "x", "regime": "sigma_max", "sigma_start": 80}'):
        assert parse_line(line, 'f: ') == {'prompt': 'x', 'regime': 'sigma_max', 'sigma_start': 80}
    for line, message in [('{"prompt": "x", "steps": 0}', 'f: steps (--steps) must be an integer in [1, 10000]'),
                          ('{"prompt": "x", "sampler": "euler_a"}', 'f: sampler (--sampler) must be one of'),
                          ('{"prompt": "x", "sede": 1}', "f: unknown key 'sede' (did you mean 'seed'?)"),
                          ('{"prompt": "x", "model": "m"}', "f: unknown key 'model'"),
                          ('{"prompt": "x", "size": "big"}', 'f: size must be "WIDTHxHEIGHT"'),
                          ('{"seed": 1}', 'f: a JSON line needs a "prompt" string'),
                          ('{"prompt": "x"', 'f: not valid JSON')]:
        with pytest.raises(ValueError) as e:
            parse_line(line, 'f: ')
        assert said(e.value).startswith(message), e.value                  # the command line's words
        assert str(e.value).startswith(message.replace(' (--steps)', '').replace(' (--sampler)', ''))  # Python's
    path = tmp_path / 'p.txt'
    path.write_text('# comment\n\ncompletely black\n{"prompt": "x", "scale": -1}\n')
    with pytest.raises(ValueError) as e:
        read_prompt_file(str(path))
    assert re.search(r'^--prompt-file \S*p\.txt line 4: scale \(--scale\) must be', said(e.value)), said(e.value)
    assert re.search(r'^prompt_file=\S*p\.txt line 4: scale must be', str(e.value)), str(e.value)


def png(path):
    with Image.open(path) as im:
        return np.asarray(im.convert('RGB')).astype(int)


def write_prompts(tmp_path):
    path = tmp_path / 'prompts.jsonl'
    path.write_text('completely black\n'
                    '{"prompt": "red circle, blue background", "seed": 40, "sampler": "dpmpp_2m"}\n'
                    '# a comment\n'
                    'completely white\n'
                    '{"prompt": "completely black", "size": [32, 16], "n": 1}\n')
    return path


def test_prompt_file_resumes_and_matches_single_runs(ckpt, tmp_path, capsys):
    prompts = write_prompts(tmp_path)
    common = ['--model', ckpt, '--steps', 3, '--width', 16, '-n', 2, '--seed', 10, '--quiet']
    assert cli.main(['sample', '--prompt-file', str(prompts), '--out', str(tmp_path / 'o'), *map(str, common)]) == 0
    names = sorted(os.listdir(tmp_path / 'o'))
    # line k (0-based among prompt lines) without a seed starts at --seed + k * n
    assert names == sorted([output_name(1, 10), output_name(1, 11), output_name(2, 40), output_name(2, 41),
                            output_name(4, 14), output_name(4, 15), output_name(5, 16)])
    first = capsys.readouterr().out.split()
    assert len(first) == 7
    # the same image as one `sample` of that line's parameters
    assert cli.main(['sample', 'red circle, blue background', '--seed', '40', '--sampler', 'dpmpp_2m', '-n', '2',
                     '--model', str(ckpt), '--steps', '3', '--width', '16', '--out', str(tmp_path / 'single'),
                     '--quiet']) == 0
    assert np.abs(png(tmp_path / 'single' / '00001-41.png') - png(tmp_path / 'o' / output_name(2, 41))).max() <= 1
    capsys.readouterr()
    # resume: nothing is redone; a removed image is made again, identical
    before = png(tmp_path / 'o' / output_name(4, 15))
    assert cli.main(['sample', '--prompt-file', str(prompts), '--out', str(tmp_path / 'o'), *map(str, common)]) == 0
    assert capsys.readouterr().out.split() == []
    os.remove(tmp_path / 'o' / output_name(4, 15))
    assert cli.main(['sample', '--prompt-file', str(prompts), '--out', str(tmp_path / 'o'), *map(str, common)]) == 0
    assert capsys.readouterr().out.split() == [str(tmp_path / 'o' / output_name(4, 15))]
    assert np.array_equal(png(tmp_path / 'o' / output_name(4, 15)), before)
    with Image.open(tmp_path / 'o' / output_name(5, 16)) as im:
        assert im.size == (32, 16)


def test_prompt_file_two_processes_equal_one(ckpt, tmp_path):
    """torchrun --nproc_per_node 2 (gloo, CPU): each rank takes its share; the files equal a one-process run."""
    prompts = write_prompts(tmp_path)
    common = ['--model', str(ckpt), '--steps', '3', '--width', '16', '-n', '2', '--seed', '10', '--device', 'cpu']
    env = {**os.environ, 'PYTHONPATH': ROOT, 'OMP_NUM_THREADS': '1'}
    one = subprocess.run([sys.executable, '-m', 'kdiff_ztsnr', 'sample', '--prompt-file', str(prompts), '--out',
                          str(tmp_path / 'one'), *common], capture_output=True, text=True, timeout=300, env=env)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                          '-m', 'kdiff_ztsnr', 'sample', '--prompt-file', str(prompts), '--out', str(tmp_path / 'two'),
                          *common], capture_output=True, text=True, timeout=600, env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    names = sorted(os.listdir(tmp_path / 'one'))
    assert len(names) == 7 and sorted(os.listdir(tmp_path / 'two')) == names
    for name in names:
        assert np.array_equal(png(tmp_path / 'one' / name), png(tmp_path / 'two' / name)), name
    written = re.findall(r'[\w.-]+\.png', two.stdout)              # each rank printed its own share (lines of
    assert sorted(written) == names, two.stdout                        # two processes may interleave)


def test_demo_lists_the_prompts_it_knows(capsys):
    assert cli.main(['demo', '--prompts']) == 0
    lines = capsys.readouterr().out.splitlines()
    captions = [line.split('\t')[0] for line in lines[1:]]
    assert 'completely black' in captions and 'completely white' in captions
    assert 'red circle, blue background' in captions and 'blue square' not in captions
    assert all(c.startswith('completely ') or ', ' in c for c in captions)
    assert sum(int(line.split('\t')[1]) for line in lines[1:]) == 2048      # the embedded model's n


@pytest.mark.parametrize('example', ['core_figures.py', 'quickstart.py'])
def test_examples_print_no_third_party_warnings(example, tmp_path):
    """`python examples/X.py`, as a user runs it, prints no pkg_resources, jsonschema or torchsde warning."""
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'examples', example)], capture_output=True,
                          text=True, timeout=600, cwd=tmp_path, env={**os.environ, 'PYTHONPATH': ROOT})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'Warning' not in proc.stderr and 'pkg_resources' not in proc.stderr, proc.stderr[-2000:]
