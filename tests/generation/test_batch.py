"""kdiff_ztsnr.generation.batch: a prompt file's lines as GenerationParams (line over command line over
defaults), every line checked before any image, one PNG per image written atomically, and a re-run that makes
only the missing images. The network is a stand-in here (an image whose brightness encodes its seed); the real
model end to end: tests/cli/test_usage.py."""

import argparse
import os
from types import SimpleNamespace

import pytest
import torch

from kdiff_ztsnr.errors import ParamError
from kdiff_ztsnr.generation import batch
from kdiff_ztsnr.generation.image_io import load_image
from kdiff_ztsnr.generation.metadata import read_metadata
from kdiff_ztsnr.generation.params import GenerationParams
from kdiff_ztsnr.generation.prompt_file import Job, output_name, read_prompt_file

PIPE = SimpleNamespace(base_side=16, size_multiple=8, name='the stand-in')


def seed_level(seed: int) -> float:
    """The stand-in image's value for a seed: an 8-bit level in [−1, 1]."""
    return (seed * 37 % 256) / 127.5 - 1


@pytest.fixture
def calls(monkeypatch):
    """batch.generate replaced by a stand-in that records each call's params."""
    seen = []

    def fake_generate(pipe, p, progress=True, limits=True):
        assert pipe is PIPE
        seen.append(p)
        return torch.stack([torch.full((3, p.height, p.width), seed_level(p.seed + i)) for i in range(p.n_samples)])
    monkeypatch.setattr(batch, 'generate', fake_generate)
    monkeypatch.delenv('RANK', raising=False)
    monkeypatch.delenv('WORLD_SIZE', raising=False)
    return seen


def test_line_params_line_over_command_line_over_defaults():
    d = GenerationParams()
    p = batch.line_params(Job(3, {'prompt': 'x'}), 0, {'prompt': 'from the command line', 'steps': 4}, 'm.safetensors',
                          64)
    assert (p.prompt, p.steps, p.width, p.height, p.model) == ('x', 4, 64, 64, 'm.safetensors')   # canvas: the model's
    assert (p.seed, p.n_samples, p.sampler, p.scale) == (0, 1, d.sampler, d.scale)
    p = batch.line_params(Job(1, {'prompt': 'x', 'steps': 9, 'width': 24}), 2, {'steps': 4, 'seed': 10,
                                                                                'n_samples': 3}, 'm', 64)
    assert (p.steps, p.width, p.height) == (9, 24, 24)                      # height follows the width given
    assert (p.seed, p.n_samples) == (10 + 2 * 3, 3)                          # line k starts at seed + k·n
    p = batch.line_params(Job(1, {'prompt': 'x', 'seed': 5, 'n_samples': 2, 'height': 8}), 7, {'width': 32}, 'm', 64)
    assert (p.seed, p.n_samples, p.width, p.height) == (5, 2, 32, 8)


def args_for(tmp_path, text: str, **kw) -> argparse.Namespace:
    path = tmp_path / 'prompts.txt'
    path.write_text(text)
    return argparse.Namespace(device='cpu', model=None, prompt_file=str(path), jobs=read_prompt_file(str(path)),
                              no_size_limit=False, out=str(tmp_path / 'out'), quiet=True, alpha_metadata=False,
                              **kw)


def test_every_image_written_with_its_own_parameters(tmp_path, calls, capsys):
    args = args_for(tmp_path, 'completely black\n# c\n{"prompt": "white", "seed": 40, "n": 2, "size": [8, 16]}\n')
    assert batch.sample_prompt_file(args, {'seed': 10, 'n_samples': 1, 'steps': 3}, lambda device: PIPE) == 0
    names = [output_name(1, 10), output_name(3, 40), output_name(3, 41)]
    assert sorted(os.listdir(args.out)) == sorted(names)
    assert capsys.readouterr().out.split() == [os.path.join(args.out, n) for n in names]
    for name, (seed, prompt, w, h) in zip(names, [(10, 'completely black', 16, 16), (40, 'white', 8, 16),
                                                  (41, 'white', 8, 16)]):
        path = os.path.join(args.out, name)
        meta = read_metadata(path)
        assert (meta['seed'], meta['n_samples'], meta['prompt'], meta['steps'], meta['model']) == \
            (seed, 1, prompt, 3, 'embedded')
        assert (meta['width'], meta['height']) == (w, h)
        assert (load_image(path, w, h) - seed_level(seed)).abs().max() < 1e-6


def test_a_rerun_makes_only_the_missing_images(tmp_path, calls, capsys):
    args = args_for(tmp_path, 'a\nb\nc\n')
    given = {'n_samples': 2}
    batch.sample_prompt_file(args, given, lambda device: PIPE)
    assert len(calls) == 3 and len(os.listdir(args.out)) == 6
    before = (tmp_path / 'out' / output_name(2, 2)).read_bytes()
    capsys.readouterr()
    batch.sample_prompt_file(args, given, lambda device: PIPE)
    assert len(calls) == 3 and capsys.readouterr().out == ''                 # nothing redone
    os.remove(tmp_path / 'out' / output_name(2, 3))
    batch.sample_prompt_file(args, given, lambda device: PIPE)
    assert len(calls) == 4 and calls[-1].seed == 2                           # line 2's images made again …
    assert capsys.readouterr().out.split() == [str(tmp_path / 'out' / output_name(2, 3))]   # … the missing one written
    assert (tmp_path / 'out' / output_name(2, 2)).read_bytes() == before


def test_every_line_is_checked_before_any_image(tmp_path, calls):
    args = args_for(tmp_path, 'a\n{"prompt": "b", "width": 12}\n')            # 12: not a multiple of 8
    with pytest.raises(ParamError) as e:
        batch.sample_prompt_file(args, {}, lambda device: PIPE)
    assert str(e.value) == (f'prompt_file={args.prompt_file} line 2: width and height must be positive multiples '
                            f'of 8 for the stand-in, got 12x12')
    assert calls == [] and not os.path.exists(args.out)
    args.no_size_limit = True                                                 # lifts the bounds, not the multiple
    with pytest.raises(ParamError, match='line 2: width and height must be positive multiples of 8'):
        batch.sample_prompt_file(args, {}, lambda device: PIPE)


def test_write_png_leaves_no_temporary_file(tmp_path, monkeypatch):
    image = torch.zeros(3, 8, 8)
    batch.write_png(image, GenerationParams(seed=1).to_dict(), str(tmp_path / 'a.png'), alpha=False)
    assert os.listdir(tmp_path) == ['a.png'] and read_metadata(str(tmp_path / 'a.png'))['seed'] == 1

    def broken(*a, **k):
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr(batch, 'save_png', broken)
    with pytest.raises(OSError, match='No space'):
        batch.write_png(image, {}, str(tmp_path / 'b.png'), alpha=False)
    assert os.listdir(tmp_path) == ['a.png']                                  # no b.png, no .b.png.tmp
