"""kdiff_ztsnr.generation.image_io: images as [−1, 1] tensors in and out of files (8-bit round trip, deep
grayscale scaled), masks, output names NNNNN-SEED.png that never overwrite, the --out checks, the rescue folder."""

import os
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from kdiff_ztsnr.errors import ParamError
from kdiff_ztsnr.generation import image_io as io
from kdiff_ztsnr.generation.metadata import read_metadata
from kdiff_ztsnr.generation.params import GenerationParams


def levels(shape, seed=0) -> torch.Tensor:
    """Random 8-bit levels as [−1, 1] values (k / 127.5 − 1): exactly representable in a PNG."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, generator=g).float() / 127.5 - 1


def test_png_round_trip_is_exact_at_8_bit(tmp_path):
    image = levels((3, 12, 20))
    io.to_pil(image).save(tmp_path / 'a.png')
    back = io.load_image(str(tmp_path / 'a.png'), 20, 12)
    assert back.shape == (1, 3, 12, 20) and back.dtype == torch.float32
    assert (back[0] - image).abs().max() < 1e-6


def test_to_pil_clamps_and_rounds():
    image = torch.tensor([-2., -1., 1. / 255, 0.999, 5.]).view(1, 1, 5).expand(3, 1, 5)
    assert np.asarray(io.to_pil(image))[0, :, 0].tolist() == [0, 0, 128, 255, 255]


def test_load_image_resizes_to_the_canvas(tmp_path):
    Image.new('RGB', (8, 8), (255, 0, 0)).save(tmp_path / 'red.png')
    x = io.load_image(str(tmp_path / 'red.png'), 32, 16)
    assert x.shape == (1, 3, 16, 32) and torch.allclose(x[0, :, 0, 0], torch.tensor([1., -1., -1.]))


@pytest.mark.parametrize('mode, value, want', [('I;16', 65535, 255), ('I;16', 32768, 128), ('I;16', 0, 0),
                                               ('I', 65535, 255), ('I', 2 ** 31 - 1, 127), ('F', 0.5, 128),
                                               ('F', 7., 255), ('L', 200, 200), ('LA', 90, 90)])
def test_to_rgb8_scales_deep_grayscale(mode, value, want):
    im = Image.new(mode, (2, 2), value if mode != 'LA' else (value, 10))
    rgb = io.to_rgb8(im)
    assert rgb.mode == 'RGB' and np.asarray(rgb).tolist() == [[[want] * 3] * 2] * 2


def test_16_bit_png_is_not_clipped_to_white(tmp_path):
    Image.fromarray(np.full((4, 4), 16384, np.uint16)).save(tmp_path / 'deep.png')        # a quarter of 65535
    assert io.load_image(str(tmp_path / 'deep.png'), 4, 4).mean().item() == pytest.approx(64 / 127.5 - 1)


def test_mask_is_one_where_repainted(tmp_path):
    a = np.zeros((4, 4, 3), np.uint8)
    a[:, 2:] = 255
    Image.fromarray(a).save(tmp_path / 'm.png')
    m = io.load_mask(str(tmp_path / 'm.png'), 4, 4)
    assert m.shape == (1, 1, 4, 4) and m[0, 0].tolist() == [[0., 0., 1., 1.]] * 4


def test_unreadable_image_names_the_file(tmp_path):
    (tmp_path / 'bad.png').write_bytes(b'not a png')
    with pytest.raises(ValueError, match=f'^cannot read image {tmp_path / "bad.png"}: '):
        io.load_image(str(tmp_path / 'bad.png'), 8, 8)
    with pytest.raises(ValueError, match='cannot read image .*missing.png'):
        io.load_mask(str(tmp_path / 'missing.png'), 8, 8)


def test_next_index_counts_only_output_names(tmp_path):
    assert io.next_index(str(tmp_path)) == 0
    for name in ('00003-5.png', '00010-1.png', '0099-1.png', 'line-00001-0.png', '00500-x.png', '00400-1.jpg'):
        (tmp_path / name).write_bytes(b'')
    assert io.next_index(str(tmp_path)) == 11


def test_save_images_names_seeds_and_metadata(tmp_path):
    p = GenerationParams(prompt='completely black', seed=40, n_samples=3, steps=2, width=8, height=8)
    images = levels((3, 3, 8, 8))
    paths = io.save_images(images, p, str(tmp_path / 'out'))                  # the folder is made
    assert [os.path.basename(x) for x in paths] == ['00000-40.png', '00001-41.png', '00002-42.png']
    for i, path in enumerate(paths):
        meta = read_metadata(path)
        assert meta['seed'] == 40 + i and meta['n_samples'] == 1 and meta['prompt'] == 'completely black'
        assert (io.load_image(path, 8, 8)[0] - images[i]).abs().max() < 1e-6
    more = io.save_images(images[:1], p, str(tmp_path / 'out'))
    assert os.path.basename(more[0]) == '00003-40.png'                        # the index runs on
    assert sorted(os.listdir(tmp_path / 'out')) == ['00000-40.png', '00001-41.png', '00002-42.png', '00003-40.png']


def test_an_existing_file_is_never_overwritten(tmp_path, monkeypatch):
    (tmp_path / '00000-7.png').write_bytes(b'keep')
    monkeypatch.setattr(io, 'next_index', lambda out: 0)                      # another writer took index 0
    p = GenerationParams(seed=7, width=8, height=8)
    assert io.save_images(levels((1, 3, 8, 8)), p, str(tmp_path)) == [str(tmp_path / '00001-7.png')]
    assert (tmp_path / '00000-7.png').read_bytes() == b'keep'
    assert sorted(os.listdir(tmp_path)) == ['00000-7.png', '00001-7.png']     # no temporary file left


def test_without_hard_links_the_name_is_reserved_then_replaced(tmp_path, monkeypatch):
    def no_link(src, dst):
        raise PermissionError(1, 'Operation not permitted')
    monkeypatch.setattr(os, 'link', no_link)
    assert io._write_new(str(tmp_path / 'f.png'), lambda f: f.write(b'data'))
    assert (tmp_path / 'f.png').read_bytes() == b'data' and os.listdir(tmp_path) == ['f.png']


def test_a_failed_write_leaves_nothing_partial(tmp_path):
    def boom(f):
        f.write(b'half')
        raise OSError(28, 'No space left on device')
    with pytest.raises(OSError, match='No space'):
        io._write_new(str(tmp_path / 'f.png'), boom)
    assert os.listdir(tmp_path) == []


def test_unwritable_folder_rescues_the_images(tmp_path):
    (tmp_path / 'file').write_bytes(b'')
    out = str(tmp_path / 'file' / 'sub')
    p = GenerationParams(seed=3, n_samples=2, width=8, height=8)
    with pytest.raises(OSError) as e:
        io.save_images(levels((2, 3, 8, 8)), p, out)
    m = re.fullmatch(rf'could not write the images to {re.escape(out)} \(.+\); they were saved to (\S+)', str(e.value))
    assert m, str(e.value)
    try:
        assert sorted(os.listdir(m.group(1))) == ['00000-3.png', '00001-4.png']
    finally:
        shutil.rmtree(m.group(1))


def test_prepare_out_accepts_new_and_existing_folders_and_creates_nothing(tmp_path):
    io.prepare_out(str(tmp_path))
    io.prepare_out(str(tmp_path / 'a' / 'b'))
    assert os.listdir(tmp_path) == []


def test_prepare_out_refusals_name_the_folder(tmp_path):
    (tmp_path / 'f').write_bytes(b'')
    (tmp_path / 'link').symlink_to(tmp_path / 'gone')
    cases = [('', "out '' is empty; give a folder for the images"),
             ('  ', "out '  ' is empty"),
             (str(tmp_path / 'f'), f'out={tmp_path / "f"} is a file; give a folder for the images'),
             (str(tmp_path / 'f' / 'x'), (f'out={tmp_path / "f" / "x"}: {tmp_path / "f"} is a file, so the folder '
                                          f'cannot be created')),
             (str(tmp_path / 'link' / 'x'), (f'out={tmp_path / "link" / "x"}: {tmp_path / "link"} is a symbolic '
                                             f'link to {tmp_path / "gone"}, which does not exist')),
             (str(tmp_path / ('n' * 300)), (f'out={tmp_path / ("n" * 300)}: the folder name {"n" * 40}… is longer '
                                            f'than the 255 bytes'))]
    if io.mount_type('/proc') == 'proc':
        cases.append(('/proc/images', 'out=/proc/images: /proc is on the proc pseudo-filesystem'))
    for out, message in cases:
        with pytest.raises(ParamError) as e:
            io.prepare_out(out)
        assert str(e.value).startswith(message), (out, str(e.value))


def test_write_failure_in_words(tmp_path):
    assert io.write_failure(str(tmp_path), OSError(13, 'x')) == f'cannot create a file in {tmp_path}: permission denied'
    assert io.write_failure(str(tmp_path), OSError(30, 'x')).endswith(': the filesystem is read-only')
    assert io.write_failure(str(tmp_path), OSError(5, 'Input/output error')).endswith(': Input/output error')
