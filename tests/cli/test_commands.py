"""`cli.commands`: inspect, tokenize, demo's checks and --prompts, called directly (tests/cli/test_cli.py runs
them through `main`)."""

import argparse
import json

import pytest

from kdiff_ztsnr.cli.commands import cmd_demo, cmd_inspect, cmd_tokenize, print_known_prompts, printable_json


def test_printable_json_escapes_terminal_controls_and_stays_json():
    value = {'prompt': 'red\x1b[31m circle\u202e', 'ü': 'café'}
    text = printable_json(value)
    assert '\x1b' not in text and '\u202e' not in text and 'café' in text
    assert json.loads(text) == value                       # the escapes are JSON escapes of the same string


def test_inspect_takes_exactly_one_of_image_and_model():
    for image, model in ((None, None), ('a.png', 'm.safetensors')):
        with pytest.raises(ValueError, match='give an image .* or --model FILE'):
            cmd_inspect(argparse.Namespace(image=image, model=model, lora_dir=None))


def test_tokenize_counts_chunks_positions_and_weights(capsys):
    cmd_tokenize(argparse.Namespace(prompt='a cat, (dog:1.5)', max_chunks=1))
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith('chunk 1: ') and '(positions 1-' in out[0] and len(out) == 2
    assert out[1].split() == ['a</w>', 'cat</w>', ',</w>', 'dog</w>×1.5']
    with pytest.raises(ValueError, match=r'--max-chunks must be an integer in \[1, 1000\], got 0'):
        cmd_tokenize(argparse.Namespace(prompt='x', max_chunks=0))


def test_tokenize_says_what_it_dropped(capsys):
    cmd_tokenize(argparse.Namespace(prompt=' '.join(['word'] * 100), max_chunks=1))
    out = capsys.readouterr().out
    assert 'chunk 1: 75 tokens (positions 1-75)' in out and 'dropped (beyond 1 chunks): word' in out


@pytest.mark.parametrize('kw,words', [({'samples': 1}, '--samples must be an integer in [2, 256]'),
                                      ({'uncond_samples': 300}, '--uncond-samples must be an integer in [2, 256]'),
                                      ({'steps': 0}, '--steps must be an integer in [1, 10000]')])
def test_demo_checks_its_options_first(kw, words, tmp_path):
    args = argparse.Namespace(**{'prompts': False, 'samples': 8, 'uncond_samples': 32, 'steps': 28,
                                 'out': str(tmp_path / 'demo'), 'model': 'embedded', **kw})
    with pytest.raises(ValueError) as e:
        cmd_demo(args)
    assert str(e.value).startswith(words) and not (tmp_path / 'demo').exists()


def test_known_prompts_of_the_embedded_model(capsys):
    assert print_known_prompts('embedded') == 0
    lines = capsys.readouterr().out.splitlines()
    n = int(lines[0].split()[1])
    captions = dict(line.split('\t') for line in lines[1:])
    assert n == len(captions) and 'completely black' in captions and all(int(c) > 0 for c in captions.values())


def test_known_prompts_need_a_trainer_checkpoint(tmp_path):
    with pytest.raises(ValueError, match='not a trainer checkpoint folder'):
        print_known_prompts(str(tmp_path))
