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
                            noise_schedule='karras', regime='sigma_max', sigma_start=136., eta=0.5).to_dict()


def image(w=64, h=32):
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8))


def test_json_chunk_round_trip(tmp_path, params):
    save_png(image(), tmp_path / 'a.png', params)
    assert read_metadata(tmp_path / 'a.png') == params
    with Image.open(tmp_path / 'a.png') as im:
        comment = json.loads(im.text['Comment'])
        assert im.text['Description'] == params['prompt']
    # the file keeps its keys (the format): the regime is "ztsnr", the finite start "sigma_max", in the same order
    assert list(comment) == [{'regime': 'ztsnr', 'sigma_start': 'sigma_max'}.get(k, k) for k in params]
    assert comment['ztsnr'] == 'sigma_max' and comment['sigma_max'] == 136. and 'regime' not in comment
    assert list(read_alpha(embed_alpha(image(64, 64), params))) == list(params)


def test_older_files_read_back(tmp_path, params):
    """A PNG written before the rename (Comment and alpha JSON keyed "ztsnr" / "sigma_max") reads back as the
    parameters regime / sigma_start; the A1111 text's labels (ZTSNR, Sigma max) are unchanged."""
    from PIL import PngImagePlugin
    old = {**{k: v for k, v in params.items() if k not in ('regime', 'sigma_start')},
           'ztsnr': 'sigma_max', 'sigma_max': 136.}
    info = PngImagePlugin.PngInfo()
    info.add_text('Comment', json.dumps(old))
    image().save(tmp_path / 'old.png', pnginfo=info)
    back = read_metadata(tmp_path / 'old.png')
    assert back['regime'] == 'sigma_max' and back['sigma_start'] == 136. and 'ztsnr' not in back
    assert GenerationParams.from_dict(back).to_dict() == params
    assert GenerationParams.from_dict(old).to_dict() == params                  # the earlier names as aliases
    text = a1111_text(params)
    assert 'ZTSNR: sigma_max, Sigma max: 136.0,' in text and parse_a1111(text)['sigma_start'] == 136.


def test_earlier_names_and_errors_name_the_parameters():
    from kdiff_ztsnr.errors import ParamError
    from kdiff_ztsnr.generation.params import check_params
    p = GenerationParams.from_dict({'prompt': 'x', 'ztsnr': 'clamp'})
    assert p.regime == 'clamp' and p.sigma_start is None
    assert GenerationParams.from_dict({'sigma_max': 80., 'sigma_start': 80.}).sigma_start == 80.   # agreeing
    with pytest.raises(ParamError) as e:
        GenerationParams.from_dict({'regime': 'exact', 'ztsnr': 'clamp'})
    assert str(e.value).startswith("regime is given twice with different values, as itself and by its earlier "
                                   "name 'ztsnr'")
    with pytest.raises(ParamError) as e:
        check_params(GenerationParams(prompt='x', regime='sigma_max'))
    assert str(e.value) == "regime='sigma_max' needs a finite positive sigma_start, got none"
    with pytest.raises(ParamError) as e:
        check_params(GenerationParams(prompt='x', regime='finite'))
    assert str(e.value).startswith("regime must be one of exact, clamp, sigma_max, got 'finite'")
    with pytest.raises(ParamError) as e:
        check_params(GenerationParams(prompt='x', regime='sigma_max', sigma_start=-1.))
    assert str(e.value).startswith('sigma_start must be a finite number in [0.001, 100000]')


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
