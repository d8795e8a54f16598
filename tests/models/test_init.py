"""kdiff_ztsnr.models' public API: each exported name is its submodule's object, imported on first use."""

import importlib

import pytest

from kdiff_ztsnr import models
from tests.helpers import fresh_python


@pytest.mark.parametrize('name, module', sorted(models._EXPORTS.items()))
def test_each_export_is_its_submodules_object(name, module):
    sub = importlib.import_module(f'kdiff_ztsnr.models.{module}')
    assert getattr(models, name) is getattr(sub, name)
    assert name in dir(models)


def test_unknown_name_is_an_attribute_error_naming_it():
    with pytest.raises(AttributeError, match="'kdiff_ztsnr.models' has no attribute 'load_everything'"):
        models.load_everything                                   # noqa: B018


def test_importing_a_submodule_imports_no_other():
    code = ('import sys, kdiff_ztsnr.models.alphas; '
            'print(sorted(m for m in sys.modules if m.startswith("kdiff_ztsnr.models.")))')
    assert fresh_python(code) == "['kdiff_ztsnr.models.alphas']"
