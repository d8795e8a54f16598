import json

import numpy as np
import pytest
from PIL import Image

from kdiff_ztsnr.generation.params import GenerationParams
from kdiff_ztsnr.generation.metadata import a1111_text, embed_alpha, parse_a1111, read_alpha, read_metadata, save_png


@pytest.fixture
def params():
    return GenerationParams(prompt='completely black, {dark}', uc='lowres, "quoted"', steps=12, scale=4.5,
                            cfg_rescale=0.7, seed=1234, width=64, height=32, sampler='dpmpp_2m_sde',
                            noise_schedule='karras', ztsnr='sigma_max', sigma_max=136., eta=0.5).to_dict()


def image(w=64, h=32):
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8))


def test_json_chunk_round_trip(tmp_path, params):
    save_png(image(), tmp_path / 'a.png', params)
    assert read_metadata(tmp_path / 'a.png') == params
    with Image.open(tmp_path / 'a.png') as im:
        assert json.loads(im.text['Comment']) == params and im.text['Description'] == params['prompt']


def test_a1111_text_round_trip(params):
    text = a1111_text(params)
    assert text.startswith('completely black, {dark}\nNegative prompt: lowres, "quoted"\nSteps: 12, ')
    assert 'Size: 64x32' in text
    back = parse_a1111(text)
    assert GenerationParams.from_dict(back).to_dict() == params        # strength 1 (text-to-image) is not written
    assert 'Denoising strength' not in text and 'None' not in text
    assert set(back) - set(params) == {'rng', 'zero_terminal_snr', 'a1111'}   # RNG, Noise Schedule, Version


def test_a1111_only_png(tmp_path, params):
    from PIL import PngImagePlugin
    info = PngImagePlugin.PngInfo()
    info.add_text('parameters', a1111_text(params))
    image().save(tmp_path / 'b.png', pnginfo=info)
    back = read_metadata(tmp_path / 'b.png')
    assert GenerationParams.from_dict(back).to_dict() == params


def test_alpha_channel_round_trip(tmp_path, params):
    im = embed_alpha(image(64, 64), params)
    assert read_alpha(im) == params
    rgb = np.asarray(im)[..., :3]
    assert np.array_equal(rgb, np.asarray(image(64, 64)))                       # colours untouched
    assert (np.asarray(im)[..., 3] >= 254).all()                          # only the LSB of alpha changes
    im.save(tmp_path / 'c.png')                                           # no text chunks at all
    assert read_metadata(tmp_path / 'c.png') == params


def test_alpha_too_small(params):
    with pytest.raises(ValueError, match='pixels of alpha'):
        embed_alpha(image(4, 4), params)


def test_no_metadata(tmp_path):
    image().save(tmp_path / 'd.png')
    with pytest.raises(ValueError, match='no generation parameters'):
        read_metadata(tmp_path / 'd.png')
