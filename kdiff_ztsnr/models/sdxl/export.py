"""The config folder diffusers needs to read a v-pred single file offline: ``from_single_file(f, config=DIR)``.

diffusers ignores ComfyUI's ``v_pred``/``ztsnr`` markers and, without ``config=``, asks the Hub for SDXL-base's
ε-prediction configs. This writes the component configs (shipped SDXL ones, or a diffusers folder's), both
tokenizers, a v-prediction scheduler config (ZTSNR from the file's markers) and ``model_index.json``.
"""

import json
from pathlib import Path
from typing import Optional

from ...errors import ParamError, ParamFileError, quote
from .components import COMPONENTS, PathLike, component_config
from .prediction import markers, scheduler_config
from .saving import MODEL_INDEX


def export_targets(out: Path) -> list[Path]:
    """The files and folders export_diffusers_config writes under out."""
    return ([out / c / 'config.json' for c in COMPONENTS] + [out / 'tokenizer', out / 'tokenizer_2',
            out / 'scheduler' / 'scheduler_config.json', out / 'model_index.json'])


def export_diffusers_config(out: PathLike, model: Optional[PathLike] = None, config_dir: Optional[PathLike] = None,
                            zero_terminal_snr: Optional[bool] = None, overwrite: bool = False) -> list[Path]:
    """Write DIR/{unet,vae,text_encoder,text_encoder_2}/config.json, tokenizer[_2]/, scheduler/, model_index.json;
    returns the files written. ZTSNR: the override, else the model file's markers, else True. Existing files
    are refused unless overwrite."""
    from .loading import SingleFile, sdxl_tokenizers
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ParamError(f'{{out={quote(out)}}} is a file; give a folder for the configs')
    there = [p for p in export_targets(out) if p.exists()]
    if there and not overwrite:
        shown = ', '.join(str(p.relative_to(out)) for p in there[:3]) + (' …' if len(there) > 3 else '')
        raise ParamError(f'{{out={quote(out)}}} already holds {quote(shown)}; choose an empty folder or pass '
                         f'{{overwrite=True}} to replace them')
    if model is not None and not Path(model).is_file():
        raise ParamFileError(f'{{model={quote(model)}}}: no such file (an SDXL single-file .safetensors)')
    if zero_terminal_snr is None and model is not None:
        pred, found = markers(SingleFile(model).keys)
        if pred is None:
            raise ParamError(f'{quote(model)}: no v_pred marker; pass {{zero_terminal_snr=True}} or '
                             f'{{zero_terminal_snr=False}} to export a v-prediction config for it anyway')
        zero_terminal_snr = bool(found)
    written = []
    for c in COMPONENTS:
        src = None if config_dir is None else Path(config_dir) / c / 'config.json'
        cfg = component_config(src if src is not None and src.is_file() else None, c)
        written.append(_write_json(out / c / 'config.json', cfg))
    for sub, tok in zip(('tokenizer', 'tokenizer_2'), sdxl_tokenizers()):
        tok.save_pretrained(out / sub)
        written.append(out / sub)
    ztsnr = True if zero_terminal_snr is None else zero_terminal_snr
    written.append(_write_json(out / 'scheduler' / 'scheduler_config.json', scheduler_config(ztsnr)))
    written.append(_write_json(out / 'model_index.json', MODEL_INDEX))
    return written


def _write_json(path: Path, obj: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2))
    return path
