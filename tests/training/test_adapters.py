"""kdiff_ztsnr.training.adapters: a peft LoRA on the SDXL UNet, saved in kohya keys, read back by the package's
own LoRA loader to the same outputs."""

import copy

import pytest
import torch
from safetensors import safe_open

from kdiff_ztsnr.models.sdxl.lora import apply_loras
from kdiff_ztsnr.training.adapters import (
    DEFAULT_TARGETS,
    LORA_DEFAULTS,
    add_lora,
    kohya_state_dict,
    lora_options,
    save_kohya_lora,
)
from tests.helpers import tiny_pipeline


@pytest.fixture(scope='module')
def pipe():
    return tiny_pipeline()


def adapted(pipe, rank=2, alpha=4.):
    torch.manual_seed(1)
    return add_lora(copy.deepcopy(pipe.components['unet']), rank, alpha)


def v(unet, pipe):
    torch.manual_seed(0)
    x, c = torch.randn(1, 4, 8, 8), pipe.encode_prompts(['a cat'])
    ids = pipe.size_cond(64, 64, 1)['add_time_ids']
    with torch.no_grad():
        return unet(x, torch.tensor([500.]), encoder_hidden_states=c['context'],
                    added_cond_kwargs={'text_embeds': c['pooled'], 'time_ids': ids}).sample


def test_lora_options():
    assert lora_options(None) is None and lora_options(False) is None and lora_options({}) is None
    assert lora_options(True) == {**LORA_DEFAULTS, 'alpha': 16}                       # alpha None = rank
    assert lora_options({'rank': 4}) == {**LORA_DEFAULTS, 'rank': 4, 'alpha': 4}
    assert lora_options({'rank': 4, 'alpha': 1., 'save_merged': True})['alpha'] == 1.
    assert LORA_DEFAULTS['targets'] == list(DEFAULT_TARGETS)


def test_add_lora_freezes_the_base_and_starts_at_it(pipe):
    unet = adapted(pipe)
    trainable = [n for n, p in unet.named_parameters() if p.requires_grad]
    assert trainable and all('lora_' in n for n in trainable)
    assert {n.split('.lora_')[0].rsplit('.', 1)[-1] for n in trainable} <= {'to_q', 'to_k', 'to_v', '0'}
    torch.testing.assert_close(v(unet, pipe), v(pipe.components['unet'], pipe))       # B = 0 at step 0


def test_kohya_file_loads_back_to_the_same_outputs(pipe, tmp_path):
    unet = adapted(pipe, rank=2, alpha=4.)
    for n, p in unet.named_parameters():
        if 'lora_B' in n:
            torch.nn.init.normal_(p, std=0.2)                                          # a trained adapter
    sd = kohya_state_dict(unet, 4.)
    assert all(k.startswith('lora_unet_') for k in sd)
    downs = [k for k in sd if k.endswith('lora_down.weight')]
    assert downs and all(sd[k].shape[0] == 2 for k in downs)
    assert all(sd[k.replace('lora_down.weight', 'alpha')].item() == 4. for k in downs)
    save_kohya_lora(unet, tmp_path / 'lora.safetensors', 4., {'step': 12})
    with safe_open(str(tmp_path / 'lora.safetensors'), 'pt') as f:
        meta = f.metadata()
        assert set(f.keys()) == set(sd)
    assert (meta['ss_network_dim'], meta['ss_network_alpha'], meta['step']) == ('2', '4.0', '12')
    assert meta['ss_v_parameterization'] == meta['ss_zero_terminal_snr'] == 'true'
    want = v(unet, pipe)
    assert not torch.allclose(want, v(pipe.components['unet'], pipe))
    loaded = tiny_pipeline()
    apply_loras(loaded, [(tmp_path / 'lora.safetensors', 1.)])
    torch.testing.assert_close(v(loaded.components['unet'], loaded), want, rtol=1e-4, atol=1e-5)
