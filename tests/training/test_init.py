"""kdiff_ztsnr.training's public API: each exported name is its submodule's object, imported on first use (so
the command line builds its parser without torch)."""

import importlib

import pytest

from kdiff_ztsnr import training
from tests.helpers import fresh_python


@pytest.mark.parametrize('name, module', sorted(training._EXPORTS.items()))
def test_each_export_is_its_submodules_object(name, module):
    sub = importlib.import_module(f'kdiff_ztsnr.training.{module}')
    assert getattr(training, name) is getattr(sub, name)


def test_unknown_name_is_an_attribute_error_naming_it():
    with pytest.raises(AttributeError, match="'kdiff_ztsnr.training' has no attribute 'train'"):
        training.train                                           # noqa: B018


def test_importing_the_package_imports_neither_torch_nor_a_submodule():
    code = ('import sys, kdiff_ztsnr.training; '
            'print("torch" in sys.modules, sorted(m for m in sys.modules if m.startswith("kdiff_ztsnr.training.")))')
    assert fresh_python(code) == 'False []'
