"""kdiff_ztsnr.generation.prompt_file: a --prompt-file's lines (prompts or JSON objects of parameters) checked
like the options with errors naming the file and line, the per-line seeds, output names, and the split of the
lines over processes. Messages here are Python's spelling (the command line's: tests/cli/test_usage.py)."""

import pytest

from kdiff_ztsnr.errors import ParamError
from kdiff_ztsnr.generation import prompt_file as P
from kdiff_ztsnr.generation.params import FIELDS, OLD_NAMES


def test_plain_and_json_lines():
    assert P.parse_line('red circle, {blue} background', 'f: ') == {'prompt': 'red circle, {blue} background'}
    assert P.parse_line('{"prompt": "x", "negative": "y", "size": "16x32", "schedule": "karras", "n": 2, '
                        '"seed": 5, "steps": 3, "uc": "z"}', 'f: ') == \
        {'prompt': 'x', 'uc': 'z', 'width': 16, 'height': 32, 'noise_schedule': 'karras', 'n_samples': 2, 'seed': 5,
         'steps': 3}                                          # aliases to FIELDS keys; the later key wins
    assert P.parse_line('{"prompt": "", "size": [8, 24]}', '') == {'prompt': '', 'width': 8, 'height': 24}
    assert set(P.KEYS) == {*FIELDS, *OLD_NAMES, 'negative', 'schedule', 'n', 'size'} and P.KEYS == sorted(P.KEYS)


@pytest.mark.parametrize('line, message', [
    ('{"prompt": "x", "steps": 0}', 'L3: steps must be an integer in [1, 10000], got 0'),
    ('{"prompt": "x", "seed": 1.5}', 'L3: seed must be an integer in [0, '),
    ('{"prompt": "x", "sede": 1}', "L3: unknown key 'sede' (did you mean 'seed'?); the keys are: cfg_rescale, "),
    ('{"prompt": "x", "model": "m"}', "L3: unknown key 'model'"),                 # one model per command
    ('{"prompt": "x", "size": "16 x 16"}', "L3: size must be \"WIDTHxHEIGHT\" or [width, height], got '16 x 16'"),
    ('{"prompt": "x", "size": [16, 16.0]}', 'L3: size must be "WIDTHxHEIGHT" or [width, height], got [16, 16.0]'),
    ('{"seed": 1}', 'L3: a JSON line needs a "prompt" string'),
    ('{"prompt": 3}', 'L3: a JSON line needs a "prompt" string'),
    ('{"prompt": "x"', 'L3: not valid JSON (Expecting'),
    ('{"prompt": "x"} [1]', 'L3: not valid JSON (Extra data'),
])
def test_bad_lines_name_the_place(line, message):
    with pytest.raises(ParamError) as e:
        P.parse_line(line, 'L3: ')
    assert str(e.value).startswith(message), str(e.value)


def test_only_lines_starting_with_a_brace_are_json():
    assert P.parse_line('[1, 2]', '') == {'prompt': '[1, 2]'}               # not starting with {: a prompt
    with pytest.raises(ParamError, match='^at 1: not valid JSON'):
        P.parse_line('{1: 2}', 'at 1: ')


def test_read_prompt_file_skips_comments_and_blanks_and_numbers_lines(tmp_path):
    path = tmp_path / 'p.txt'
    path.write_text('# header\n\n  completely black  \n{"prompt": "white", "seed": 7}\n\t\n# x\nred\n')
    jobs = P.read_prompt_file(str(path))
    assert [(j.line, j.params) for j in jobs] == [(3, {'prompt': 'completely black'}),
                                                  (4, {'prompt': 'white', 'seed': 7}), (7, {'prompt': 'red'})]


def test_read_prompt_file_errors_name_the_file(tmp_path, monkeypatch):
    path = tmp_path / 'p.txt'
    with pytest.raises(ParamError, match=f'^prompt_file={path}: no such file$'):
        P.read_prompt_file(str(path))
    with pytest.raises(ParamError, match='no such file'):
        P.read_prompt_file(str(tmp_path))                                    # a folder is not a prompt file
    path.write_text('# only comments\n\n')
    with pytest.raises(ParamError, match=f'^prompt_file={path}: no prompts in it'):
        P.read_prompt_file(str(path))
    path.write_bytes(b'ok\n\xff\xfe\n')
    with pytest.raises(ParamError, match=f'^prompt_file={path}: not UTF-8 text'):
        P.read_prompt_file(str(path))
    path.write_text('a\n{"prompt": "x", "scale": -1}\n')
    with pytest.raises(ParamError) as e:
        P.read_prompt_file(str(path))
    assert str(e.value) == f'prompt_file={path} line 2: scale must be a finite number in [0, 100], got -1'
    monkeypatch.setattr(P, 'MAX_LINES', 3)
    path.write_text('a\nb\nc\n')
    assert len(P.read_prompt_file(str(path))) == 3
    path.write_text('a\nb\nc\nd\n')
    with pytest.raises(ParamError, match=f'^prompt_file={path}: more than 3 prompts'):
        P.read_prompt_file(str(path))


def test_seeds_give_every_image_its_own_seed():
    """Line k without a seed starts at base + k·n: consecutive lines never share a seed."""
    jobs = [P.Job(1, {}), P.Job(2, {'seed': 100}), P.Job(3, {'n_samples': 3}), P.Job(4, {})]
    seeds = [j.seeds(10, k, 2) for k, j in enumerate(jobs)]
    assert seeds == [[10, 11], [100, 101], [14, 15, 16], [16, 17]]
    assert P.Job(1, {'seed': 5, 'n_samples': 1}).seeds(0, 9, 4) == [5]


def test_output_names():
    assert P.output_name(1, 0) == 'line-00001-0.png'
    assert P.output_name(123456, 2 ** 40) == f'line-123456-{2 ** 40}.png'


def test_rank_and_world_from_the_launcher(monkeypatch):
    monkeypatch.delenv('RANK', raising=False)
    monkeypatch.delenv('WORLD_SIZE', raising=False)
    assert P.rank_and_world() == (0, 1)
    monkeypatch.setenv('RANK', '2')
    monkeypatch.setenv('WORLD_SIZE', '3')
    assert P.rank_and_world() == (2, 3)


@pytest.mark.parametrize('n, world', [(7, 1), (7, 2), (7, 3), (2, 4), (0, 2)])
def test_shares_partition_the_items(n, world):
    items = list(range(n))
    shares = [P.share(items, rank, world) for rank in range(world)]
    assert sorted(x for s in shares for x in s) == items                      # every item once
    assert all(s == sorted(s) for s in shares)                                # in file order
    assert max(map(len, shares)) - min(map(len, shares)) <= 1                 # balanced
