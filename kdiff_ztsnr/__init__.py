"""kdiff-ztsnr: exact zero-terminal-SNR sampling and training for v-prediction models on k-diffusion."""

from . import guidance, img2img, sampling, schedules
from .denoisers import CompVisVDenoiser, DiscreteVDenoiser, VDenoiser, v_scalings
from .guidance import CFGDenoiser
from .sampling import infinite_step, ztsnr

__version__ = '0.1.0'
