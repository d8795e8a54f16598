import math

import pytest

from kdiff_ztsnr import schedules
from kdiff_ztsnr.oracle import brightness_dataset, exact_model


@pytest.fixture(scope='session')
def ztsnr_ac():
    return schedules.ztsnr_alphas_cumprod()


@pytest.fixture
def data():
    return brightness_dataset(k=16, shape=(4, 16, 16))


@pytest.fixture
def exact(data, ztsnr_ac):
    return exact_model(data, ztsnr_ac)


@pytest.fixture
def clamped(data, ztsnr_ac):
    return exact_model(data, ztsnr_ac, sigma_max=schedules.ZTSNR_CLAMP)


INF = math.inf


def train_tiny_checkpoint(out, n: int = 8, solid_fraction: float = 0.25):
    """A trainer checkpoint after 2 steps on a 16×16 synthetic set: plumbing for CLI and benchmark tests."""
    from accelerate.state import AcceleratorState, GradientState
    from kdiff_ztsnr import training
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    config = {'model': {'type': 'image_v1', 'input_channels': 3, 'mapping_out': 16, 'depths': [1, 1],
                        'channels': [8, 16], 'self_attn_depths': [False, True], 'sigma_data': 0.5},
              'dataset': {'type': 'synthetic', 'location': str(out / 'data'),
                          'buckets': {'max_area': 256, 'max_side': 32, 'min_side': 16, 'step': 16, 'extra': [[16, 16]]},
                          'synthetic': {'n': n, 'sizes': [[16, 16]], 'seed': 0, 'solid_fraction': solid_fraction}},
              'text': {'encoders': [{'hidden_size': 16, 'intermediate_size': 32, 'num_hidden_layers': 1,
                                     'num_attention_heads': 2, 'projection_dim': 8}]},
              'training': {'steps': 2, 'batch_size': 4, 'out_dir': str(out), 'cpu': True, 'checkpoint_every': 1000,
                           'log_every': 1000, 'threads': 1}}
    training.Trainer(config).run()
    return out


# ------------------------------------------------------------------------------- tiny SDXL (shared)

def _tiny_sdxl_configs() -> dict:
    from kdiff_ztsnr.models import sdxl
    L_DIM, G_DIM, G_PROJ, TIME_DIM = 32, 48, 40, 8
    return {
        'unet': dict(sdxl.component_config(None, 'unet'), block_out_channels=[16, 32, 32],
                     attention_head_dim=[1, 2, 2], transformer_layers_per_block=[1, 1, 2], norm_num_groups=8,
                     cross_attention_dim=L_DIM + G_DIM, addition_time_embed_dim=TIME_DIM,
                     projection_class_embeddings_input_dim=G_PROJ + 6 * TIME_DIM, sample_size=8),
        'vae': dict(sdxl.component_config(None, 'vae'), block_out_channels=[8, 8, 16, 16], layers_per_block=1,
                    norm_num_groups=4, sample_size=64),
        'text_encoder': dict(sdxl.component_config(None, 'text_encoder'), hidden_size=L_DIM, intermediate_size=37,
                             num_attention_heads=4, num_hidden_layers=3, projection_dim=L_DIM),
        'text_encoder_2': dict(sdxl.component_config(None, 'text_encoder_2'), hidden_size=G_DIM,
                               intermediate_size=64, num_attention_heads=4, num_hidden_layers=3,
                               projection_dim=G_PROJ),
    }


TINY = _tiny_sdxl_configs()      # SDXL-shaped components small enough for CPU tests
TINY_KW = {f'{c}_config': TINY[c] for c in TINY}


def tiny_pipeline(zero_terminal_snr: bool = True):
    """A randomly initialised (seed 0) tiny SDXL as the package's Pipeline."""
    import torch
    from kdiff_ztsnr.models import alphas_cumprod_for, sdxl
    from kdiff_ztsnr.text import TextConditioner
    torch.manual_seed(0)
    m = {c: sdxl.build_component(c, TINY[c]) for c in sdxl.COMPONENTS}
    text = TextConditioner([m['text_encoder'], m['text_encoder_2']], sdxl.sdxl_tokenizers())
    mean, std = sdxl.latent_stats_for(m['vae'])
    return sdxl.sdxl_pipeline(m['unet'], m['vae'], text, alphas_cumprod_for(zero_terminal_snr), mean, std,
                              {'name': 'tiny'})
