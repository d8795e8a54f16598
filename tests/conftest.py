import math

import pytest
import torch

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


@pytest.fixture
def fresh_process_state():
    """Each Trainer builds its own Accelerator; accelerate's singleton state fixes mixed precision per process,
    so reset it between tests (single process only). One torch thread keeps timings stable on a shared CPU."""
    from accelerate.state import AcceleratorState, GradientState
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
