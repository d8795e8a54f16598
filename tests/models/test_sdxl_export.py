"""kdiff_ztsnr.models.sdxl.export: the offline config folder diffusers needs to read a v-pred single file."""

import json

import pytest
from transformers import CLIPTokenizer

from kdiff_ztsnr.errors import ParamError, ParamFileError
from kdiff_ztsnr.models.sdxl.components import COMPONENTS, component_config
from kdiff_ztsnr.models.sdxl.export import export_diffusers_config, export_targets
from kdiff_ztsnr.models.sdxl.prediction import scheduler_config
from kdiff_ztsnr.models.sdxl.saving import MODEL_INDEX
from tests.helpers import TINY, write_tiny_sdxl


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    return write_tiny_sdxl(tmp_path_factory.mktemp('tiny'))


def read(path):
    return json.loads(path.read_text())


def test_exports_the_shipped_configs_and_a_ztsnr_v_scheduler(tiny, tmp_path):
    out = tmp_path / 'cfg'
    written = export_diffusers_config(out, model=tiny['file'])
    assert written == export_targets(out) and all(p.exists() for p in written)
    for c in COMPONENTS:
        assert read(out / c / 'config.json') == component_config(None, c)
    assert read(out / 'scheduler' / 'scheduler_config.json') == scheduler_config(True)     # file's ztsnr marker
    assert read(out / 'model_index.json') == MODEL_INDEX
    assert CLIPTokenizer.from_pretrained(out / 'tokenizer_2')('a cat').input_ids == \
        tiny['pipe'].components['text'].tokenizers[1]('a cat').input_ids


def test_config_dir_and_overrides(tiny, tmp_path):
    out = tmp_path / 'cfg'
    export_diffusers_config(out, config_dir=tiny['folder'], zero_terminal_snr=False)
    unet = read(out / 'unet' / 'config.json')
    assert unet['block_out_channels'] == TINY['unet']['block_out_channels']     # the folder's configs
    assert read(out / 'scheduler' / 'scheduler_config.json') == scheduler_config(False)
    with pytest.raises(ParamError, match=r"out=.*cfg.* already holds .*unet/config\.json.*overwrite=True"):
        export_diffusers_config(out)
    export_diffusers_config(out, overwrite=True)                                # shipped configs, ZTSNR default
    assert read(out / 'unet' / 'config.json') == component_config(None, 'unet')
    assert read(out / 'scheduler' / 'scheduler_config.json') == scheduler_config(True)


def test_refusals_name_the_parameter(tiny, tmp_path):
    (tmp_path / 'a_file').write_text('')
    with pytest.raises(ParamError, match=r'out=.*a_file.* is a file'):
        export_diffusers_config(tmp_path / 'a_file')
    with pytest.raises(ParamFileError, match=r'model=.*nope\.safetensors.*: no such file'):
        export_diffusers_config(tmp_path / 'o', model=tmp_path / 'nope.safetensors')
    with pytest.raises(ParamError, match=r'nomarkers\.safetensors: no v_pred marker; pass zero_terminal_snr=True'):
        export_diffusers_config(tmp_path / 'o', model=tiny['nomarkers'])
    assert not (tmp_path / 'o').exists()
    export_diffusers_config(tmp_path / 'o', model=tiny['nomarkers'], zero_terminal_snr=True)   # overridden
    assert read(tmp_path / 'o' / 'scheduler' / 'scheduler_config.json')['rescale_betas_zero_snr'] is True
