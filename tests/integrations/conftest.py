"""The stand-in `comfy` package (tests/integrations/comfy_standin) for the ComfyUI tests."""

import sys
from pathlib import Path

import pytest

STANDIN = Path(__file__).parent / 'comfy_standin'


@pytest.fixture(scope='module')
def comfy():
    """The stand-in `comfy` package on sys.path for this module only."""
    sys.path.insert(0, str(STANDIN))
    import comfy.model_sampling
    import comfy.samplers
    yield comfy
    sys.path.remove(str(STANDIN))
    for name in [m for m in sys.modules if m == 'comfy' or m.startswith('comfy.')]:
        del sys.modules[name]
