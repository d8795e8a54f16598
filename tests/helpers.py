"""Plumbing shared by the tests: a tiny trainer checkpoint, the tiny SDXL (as a Pipeline and as files) and the
bare optimal denoiser of a dataset."""

import os
import subprocess
import sys
from typing import Optional

from torch import Tensor, nn

from benchmarks.subjects import tiny_sdxl_configs, tiny_sdxl_pipeline
from kdiff_ztsnr.oracle import optimal_denoiser


class OracleDenoiser(nn.Module):
    """The optimal denoiser of `data` as a k-diffusion denoiser: model(x, sigma[B]) -> denoised."""

    def __init__(self, data: Tensor, sigma_data: float = 1.):
        super().__init__()
        self.register_buffer('data', data)
        self.sigma_data = sigma_data

    def forward(self, x: Tensor, sigma: Tensor, **kwargs) -> Tensor:
        return optimal_denoiser(self.data, x.float(), sigma.float()).to(x.dtype)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fresh_python(code: str) -> str:
    """What `code` prints in a fresh interpreter on this checkout (for what an import loads by itself)."""
    proc = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=False, env={**os.environ, 'PYTHONPATH': ROOT})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip()


def tiny_train_config(out, n: int = 8, solid_fraction: float = 0.25) -> dict:
    """A 2-step run on a 16×16 synthetic set written under `out`."""
    return {'model': {'type': 'image_v1', 'input_channels': 3, 'mapping_out': 16, 'depths': [1, 1],
                      'channels': [8, 16], 'self_attn_depths': [False, True], 'sigma_data': 0.5},
            'dataset': {'type': 'synthetic', 'location': str(out / 'data'),
                        'buckets': {'max_area': 256, 'max_side': 32, 'min_side': 16, 'step': 16, 'extra': [[16, 16]]},
                        'synthetic': {'n': n, 'sizes': [[16, 16]], 'seed': 0, 'solid_fraction': solid_fraction}},
            'text': {'encoders': [{'hidden_size': 16, 'intermediate_size': 32, 'num_hidden_layers': 1,
                                   'num_attention_heads': 2, 'projection_dim': 8}]},
            'training': {'steps': 2, 'batch_size': 4, 'out_dir': str(out), 'cpu': True, 'checkpoint_every': 1000,
                         'log_every': 1000, 'threads': 1}}


def train_tiny_checkpoint(out, n: int = 8, solid_fraction: float = 0.25):
    """A trainer checkpoint after 2 steps on a 16×16 synthetic set: plumbing for CLI and benchmark tests."""
    from accelerate.state import AcceleratorState, GradientState
    from kdiff_ztsnr import training
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    training.Trainer(tiny_train_config(out, n, solid_fraction)).run()
    return out


# ------------------------------------------------------------------------------- tiny SDXL (shared)

TINY = tiny_sdxl_configs()      # SDXL-shaped components small enough for CPU tests
TINY_KW = {f'{c}_config': TINY[c] for c in TINY}


def comfy_tiny_configs() -> dict:
    """TINY reshaped to what ComfyUI's SDXL code hard-codes: GroupNorm(32, ·) (channels multiples of 32), the
    Timestep(256) size embedding, a square bigG text projection (pooled = hidden size)."""
    c = {k: dict(v) for k, v in TINY.items()}
    g = c['text_encoder_2']['hidden_size']
    c['unet'].update(block_out_channels=[32, 64, 64], norm_num_groups=32, addition_time_embed_dim=256,
                     projection_class_embeddings_input_dim=g + 6 * 256)
    c['text_encoder_2'].update(projection_dim=g)
    return c


def tiny_pipeline(zero_terminal_snr: bool = True, configs: Optional[dict] = None):
    """A randomly initialised (seed 0) tiny SDXL as the package's Pipeline (configs: default TINY)."""
    return tiny_sdxl_pipeline(zero_terminal_snr=zero_terminal_snr, configs=configs or TINY)


def write_tiny_sdxl(root, configs: Optional[dict] = None, folder: bool = True) -> dict:
    """tiny_pipeline(configs=configs) written as a diffusers folder (unless folder=False), an SGM single file with
    the v_pred/ztsnr markers, and the same file without markers (an ε-looking or community file):
    {'pipe', 'root', 'folder', 'file', 'nomarkers'}."""
    from safetensors.torch import load_file, save_file
    from kdiff_ztsnr.models import sdxl
    pipe = tiny_pipeline(configs=configs)
    if folder:
        sdxl.save_pretrained(pipe, root / 'folder')
    sdxl.save_single_file(pipe, root / 'tiny.safetensors')
    sd = {k: v for k, v in load_file(str(root / 'tiny.safetensors')).items() if k not in ('v_pred', 'ztsnr')}
    save_file(sd, str(root / 'nomarkers.safetensors'))
    return {'pipe': pipe, 'root': root, 'folder': root / 'folder', 'file': root / 'tiny.safetensors',
            'nomarkers': root / 'nomarkers.safetensors'}
