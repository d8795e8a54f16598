"""The kdiff_ztsnr.generation package's API: its names are the modules' own objects, loaded on first use (the
parameters and their checks without torch), and one txt2img run through them alone round-trips its PNG
metadata."""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from kdiff_ztsnr import generation
from kdiff_ztsnr.generation import GenerationParams, check_params, load_pipeline, read_metadata, save_png
from kdiff_ztsnr.generation.generate import generate  # see test_generate_is_the_function

ROOT = Path(__file__).resolve().parents[2]


def source(name: str):
    """The object `name` stands for, from the module that defines it."""
    return getattr(importlib.import_module(f'.{generation._EXPORTS[name]}', 'kdiff_ztsnr.generation'), name)


def test_names_are_the_modules_objects():
    assert {'Pipeline', 'load_pipeline', 'generate', 'GenerationParams', 'check_params', 'read_metadata',
            'save_png'} <= set(generation._EXPORTS)
    for name in set(generation._EXPORTS) - {'generate'}:
        assert getattr(generation, name) is source(name), name
    assert source('Pipeline').__module__ == 'kdiff_ztsnr.models.bundle'
    with pytest.raises(AttributeError, match="module 'kdiff_ztsnr.generation' has no attribute 'GenerationParam'"):
        generation.GenerationParam                                                  # noqa: B018


@pytest.mark.xfail(strict=True, reason='the export `generate` shares its name with the submodule generation.generate: '
                   'once that is imported (by `from kdiff_ztsnr.generation import generate` itself), the package '
                   'attribute is the module')
def test_generate_is_the_function():
    from kdiff_ztsnr.generation import generate as exported
    assert exported is generate


def test_parameters_without_torch():
    code = ('import sys\nfrom kdiff_ztsnr.generation import GenerationParams, check_params\n'
            'check_params(GenerationParams(prompt="x", width=64, height=64), 8)\n'
            'try:\n    check_params(GenerationParams(steps=0))\nexcept ValueError as e:\n    print(e)\n'
            'print("torch" in sys.modules)')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          check=True)
    assert proc.stdout.splitlines() == ['steps must be an integer in [1, 10000], got 0', 'False']


@pytest.mark.skipif(not (ROOT / 'kdiff_ztsnr' / 'assets' / 'embedded' / 'ema.safetensors').is_file(),
                    reason='embedded model not built')
def test_txt2img_through_the_package_names(tmp_path):
    pipe = load_pipeline('embedded', device='cpu')
    assert isinstance(pipe, generation.Pipeline)
    p = GenerationParams(prompt='completely black', steps=2, width=16, height=16, seed=4)
    check_params(p, pipe.size_multiple, pipe.name)
    images = generate(pipe, p, progress=False)
    assert images.shape == (1, 3, 16, 16) and images.min() >= -1 and images.max() <= 1
    assert images.mean() < -0.5                                           # the embedded model's black
    from PIL import Image
    arr = ((images[0] + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    save_png(Image.fromarray(arr), str(tmp_path / 'a.png'), p.to_dict())
    assert read_metadata(str(tmp_path / 'a.png')) == p.to_dict()
