import math

import pytest
import torch

from kdiff_ztsnr import DiscreteVDenoiser, schedules
from kdiff_ztsnr.oracle import OracleVNetwork, brightness_dataset


@pytest.fixture(scope='session')
def ztsnr_ac():
    return schedules.ztsnr_alphas_cumprod()


@pytest.fixture
def data():
    return brightness_dataset(k=16, shape=(4, 16, 16))


def oracle_model(data, ac, **kwargs):
    """DiscreteVDenoiser around the exact v network of `data` (see kdiff_ztsnr.oracle)."""
    model = DiscreteVDenoiser(torch.nn.Identity(), ac, **kwargs)
    model.inner_model = OracleVNetwork(data, model.t_to_sigma)
    return model


@pytest.fixture
def exact(data, ztsnr_ac):
    return oracle_model(data, ztsnr_ac)


@pytest.fixture
def clamped(data, ztsnr_ac):
    return oracle_model(data, ztsnr_ac, sigma_max=20000.)


INF = math.inf
