"""`cli.checks`: the sample command's pre-checks refuse bad input with one ``error:`` line that names the flag,
before torch is imported (they run in a fresh process here, so that no other test has imported it)."""

import os
import subprocess
import sys

import pytest

from kdiff_ztsnr.cli import build_parser
from kdiff_ztsnr.cli.checks import check_lora_args, check_prompt_text, given_params, resolve_names
from kdiff_ztsnr.models.sdxl.lora_files import MAX_LORAS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HEAVY = ('torch', 'k_diffusion', 'diffusers', 'transformers')
CHECK = ('import sys\n'
         'from kdiff_ztsnr.cli import build_parser\n'
         'from kdiff_ztsnr.cli.checks import check_usage\n'
         'from kdiff_ztsnr.cli.run import run_command\n'
         'from kdiff_ztsnr.cli.words import said\n'
         'args = build_parser().parse_args(sys.argv[1:])\n'
         'rc = run_command("sample", lambda: (check_usage(args), 0)[1], say=said)\n'
         'print("heavy:", [m for m in %r if m in sys.modules], "rc:", rc)' % (HEAVY,))


def check_usage_in_a_fresh_process(argv, cwd) -> tuple:
    proc = subprocess.run([sys.executable, '-c', CHECK, *map(str, argv)], capture_output=True, text=True,
                          timeout=120, cwd=cwd, env={**os.environ, 'PYTHONPATH': ROOT})
    return proc.stdout.strip(), proc.stderr


@pytest.mark.parametrize('argv, message', [
    (['--mask', 'm.png'], 'error: --mask and --enhance need --init-image'),
    (['--strength', '0.5'], 'error: --strength needs --init-image (text-to-image always denoises from the start)'),
    (['--steps', '0'], 'error: steps (--steps) must be an integer in [1, 10000], got 0'),
    (['--init-image', 'missing.png'], 'error: --init-image missing.png: no such file'),
    (['--model', 'no-such.safetensors'], 'error: --model no-such.safetensors: model not found'),
])
def test_usage_errors_are_one_line_naming_the_flag_without_torch(tmp_path, argv, message):
    out, err = check_usage_in_a_fresh_process(['sample', 'a cat', '--out', tmp_path / 'out', *argv], tmp_path)
    assert out == 'heavy: [] rc: 2'
    assert err.count('\n') == 1 and err.startswith(message), err


def test_good_usage_passes_and_stays_torch_free(tmp_path):
    out, err = check_usage_in_a_fresh_process(['sample', 'a cat', '--steps', '3', '--out', tmp_path / 'o'], tmp_path)
    assert (out, err) == ('heavy: [] rc: 0', '')


def test_given_params_resolve_a1111_names_and_keep_only_what_was_given():
    args = build_parser().parse_args(['sample', 'x', '--steps', '3', '--sampler', 'DPM++ 2M Karras'])
    assert given_params(args) == {'prompt': 'x', 'steps': 3, 'sampler': 'dpmpp_2m', 'noise_schedule': 'karras'}


def test_a_sampler_naming_another_schedule_than_schedule_is_refused():
    with pytest.raises(ValueError, match=r"^--sampler 'DPM\+\+ 2M Karras' names the schedule karras, "
                                         r"--schedule says native: give one$"):
        resolve_names({'sampler': 'DPM++ 2M Karras', 'noise_schedule': 'native'})
    with pytest.raises(ValueError, match=r"^--schedule: unknown schedule 'karas' \(did you mean 'karras'\?\)"):
        resolve_names({'noise_schedule': 'karas'})


def test_lora_checks_name_the_flag_before_any_file_is_read(tmp_path):
    missing = str(tmp_path / 'none.safetensors')
    with pytest.raises(ValueError, match=r'^--lora needs an SDXL-architecture model'):
        check_lora_args([missing], 'embedded')
    with pytest.raises(ValueError, match=rf'^--lora given {MAX_LORAS + 1} times; at most {MAX_LORAS} LoRAs$'):
        check_lora_args([missing] * (MAX_LORAS + 1), 'some-sdxl-folder')


def test_a_prompt_that_is_a_file_path_is_refused(tmp_path, monkeypatch, capsys):
    (tmp_path / 'prompts.txt').write_text('a cat\n')
    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args(['sample', 'prompts.txt'])
    with pytest.raises(ValueError, match=r"is the name of an existing file; .* use --prompt-file prompts\.txt"):
        check_prompt_text(args)
    (tmp_path / 'cat').write_text('a cat\n')           # a bare word that happens to name a file: only a warning
    check_prompt_text(build_parser().parse_args(['sample', 'cat']))
    assert capsys.readouterr().err.startswith("warning: the prompt 'cat' is the name of an existing file")
