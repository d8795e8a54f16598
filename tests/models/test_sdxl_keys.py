"""kdiff_ztsnr.models.sdxl.keys: diffusers → SGM (ours) and SGM → diffusers (diffusers' converters) round trip on
tiny SDXL-shaped components: every tensor back under its own name, identical."""

import pytest
import torch

from kdiff_ztsnr.models.sdxl import keys
from kdiff_ztsnr.models.sdxl.components import COMPONENTS, SGM_PREFIXES, build_component
from kdiff_ztsnr.models.sdxl.keys import (
    CheckpointError,
    clip_g_key_to_sgm,
    clip_l_key_to_sgm,
    component_to_sgm,
    convert_component,
    diffusers_state_dicts,
    sgm_state_dict,
    unet_prefix_map,
    vae_prefix_map,
)
from tests.helpers import TINY


@pytest.fixture(scope='module')
def tiny():
    torch.manual_seed(0)
    return {c: build_component(c, TINY[c]) for c in COMPONENTS}


def own(model) -> dict:
    """A component's own state dict as the converters see it (no position_ids; transformers' CLIP keys may or
    may not start with text_model.)."""
    return {k.removeprefix('text_model.'): v for k, v in model.state_dict().items() if not k.endswith('position_ids')}


def test_round_trip_is_identical(tiny):
    sd = sgm_state_dict(*(tiny[c] for c in COMPONENTS))
    assert all(any(k.startswith(p) for k in sd) for p in SGM_PREFIXES.values())
    assert not any(k.startswith(('unet.', 'down_blocks.', 'encoder.down_blocks.')) for k in sd)
    back = diffusers_state_dicts(sd, TINY, tiny['text_encoder_2'])
    for c in COMPONENTS:
        got = {k.removeprefix('text_model.'): v for k, v in back[c].items() if not k.endswith('position_ids')}
        ref = own(tiny[c])
        assert got.keys() == ref.keys(), c
        assert all(torch.equal(got[k], ref[k]) for k in ref), c


def test_sgm_layouts_of_the_special_tensors(tiny):
    vae = component_to_sgm('vae', tiny['vae'].state_dict(), dict(tiny['vae'].config))
    q = tiny['vae'].encoder.mid_block.attentions[0].to_q.weight
    assert torch.equal(vae['first_stage_model.encoder.mid.attn_1.q.weight'], q[:, :, None, None])   # 1×1 conv
    te2 = tiny['text_encoder_2']
    g = component_to_sgm('text_encoder_2', te2.state_dict(), {})
    attn = te2.text_model.encoder.layers[1].self_attn
    fused = g['conditioner.embedders.1.model.transformer.resblocks.1.attn.in_proj_weight']
    assert torch.equal(fused, torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]))
    assert torch.equal(g['conditioner.embedders.1.model.text_projection'], te2.text_projection.weight.T)
    assert not any(k.endswith('position_ids') for k in g)


def test_prefix_maps_follow_the_config_depth():
    m = unet_prefix_map(TINY['unet'])                                 # 3 blocks of 2 layers
    assert m['down_blocks.1.resnets.1.'] == 'input_blocks.5.0.'
    assert m['down_blocks.1.downsamplers.0.conv.'] == 'input_blocks.6.0.op.'
    assert m['up_blocks.0.upsamplers.0.'] == 'output_blocks.2.2.'    # CrossAttnUpBlock: after its attention
    assert m['up_blocks.2.resnets.2.'] == 'output_blocks.8.0.'
    v = vae_prefix_map(TINY['vae'])                                   # decoder blocks are numbered backwards
    assert v['decoder.up_blocks.0.resnets.1.'] == 'decoder.up.3.block.1.'
    assert v['encoder.down_blocks.3.resnets.0.'] == 'encoder.down.3.block.0.'
    assert keys._map_key('unmapped.weight', m, keys._unet_rename) == 'unmapped.weight'
    assert keys._resnet_unet('conv_shortcut.weight') == 'skip_connection.weight'


def test_clip_key_names():
    assert clip_l_key_to_sgm('encoder.layers.0.mlp.fc1.weight') == 'text_model.encoder.layers.0.mlp.fc1.weight'
    assert clip_l_key_to_sgm('text_model.final_layer_norm.bias') == 'text_model.final_layer_norm.bias'
    assert clip_g_key_to_sgm('text_model.encoder.layers.3.self_attn.out_proj.weight') == \
        'transformer.resblocks.3.attn.out_proj.weight'
    assert clip_g_key_to_sgm('text_model.encoder.layers.0.mlp.fc2.bias') == 'transformer.resblocks.0.mlp.c_proj.bias'
    assert clip_g_key_to_sgm('text_model.embeddings.position_embedding.weight') == 'positional_embedding'


def test_conversion_keeps_dtypes_and_ignores_other_components(tiny):
    """One component's keys are picked out of a whole single file; tensors keep their dtype."""
    sd = {k: v.bfloat16() for k, v in sgm_state_dict(*(tiny[c] for c in COMPONENTS)).items()}
    sd['v_pred'] = torch.tensor([])
    unet = convert_component('unet', sd, TINY)
    assert unet.keys() == own(tiny['unet']).keys()
    assert {v.dtype for v in unet.values()} == {torch.bfloat16}
    assert issubclass(CheckpointError, ValueError)          # a bad checkpoint is a ValueError naming parameters
