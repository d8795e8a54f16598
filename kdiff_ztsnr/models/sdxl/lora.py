"""LoRA files on an SDXL Pipeline: the one reader for sampling (`use_loras`, which `generate` calls with
``GenerationParams.loras``) and merging (`merge_lora_file`), and the one fold of adapters into weights
(`merge_lora`, also used by the trainer's merged export). Each file applies to the UNet and both CLIP text
encoders, at its weight.

Key formats are diffusers' concern: `StableDiffusionXLPipeline.lora_state_dict` reads kohya/A1111 files
(``lora_unet_*``, ``lora_te1_*``, ``lora_te2_*``) and diffusers/peft files (``unet.*``, ``text_encoder.*``,
``text_encoder_2.*``) into one layout. The UNet part goes through diffusers' `load_lora_into_unet`; the text
encoders' part is attached with peft directly (diffusers' own text-encoder path calls transformers'
`load_adapter`, which refuses peft < 0.22, the newest on the registry here), with diffusers' converters and
its `get_peft_kwargs` for the LoRA config. Weights are peft adapter scales, so a file at weight w changes the
output as fusing w·ΔW into the weights does.
"""

import os
from pathlib import Path
from typing import Optional, Sequence, Union

from torch import nn

from ...errors import ParamError, quote
from ..bundle import Pipeline
from .lora_files import MAX_LORAS, check_against_model, check_lora_file, parse_lora  # noqa: F401 (parse_lora: API)

LoraSpec = tuple[Union[str, os.PathLike], float]
TEXT_ENCODER_PREFIXES = ('text_encoder', 'text_encoder_2')


def lora_list(loras: Sequence[LoraSpec]) -> list[list]:
    """The [[file, weight], …] form of GenerationParams.loras and of a Pipeline's ``info['loras']``."""
    return [[str(p), float(w)] for p, w in loras]


def use_loras(pipe: Pipeline, loras: Sequence[LoraSpec]) -> None:
    """What `generate` does with ``GenerationParams.loras``: the pipeline then carries exactly these files at
    these weights. Nothing to do when it already does; otherwise the files attached before (by `apply_loras`)
    are removed and these attached. No LoRAs asked leaves files attached by hand in place, and removes only
    those an earlier call attached; a pipeline's own adapters (the trainer's) are never touched."""
    wanted, have = lora_list(loras), pipe.info.get('loras', [])
    if wanted == have or not (wanted or pipe.info.get('loras_from_params')):
        return
    remove_loras(pipe)
    if wanted:
        apply_loras(pipe, loras)
        pipe.info['loras_from_params'] = True


def apply_loras(pipe: Pipeline, loras: Sequence[LoraSpec]) -> list[str]:
    """Attach each LoRA file as a peft adapter of the pipeline's UNet and text encoders, scaled by its weight.

    Returns the adapter names. Raises ValueError for a non-SDXL pipeline, a missing file, or a file with no
    LoRA keys for this model.
    """
    from diffusers import StableDiffusionXLPipeline as SDXL
    from diffusers.utils.peft_utils import set_weights_and_activate_adapters
    if 'unet' not in pipe.components:
        raise ParamError(f'{{loras}}: needs an SDXL-architecture model; {quote(pipe.name)} is not one')
    unet, encoders = pipe.components['unet'], pipe.components['text'].encoders
    roots = {'unet': unet, **dict(zip(('text_encoder', 'text_encoder_2'), encoders))}
    if len(loras) > MAX_LORAS:
        raise ValueError(f'at most {MAX_LORAS} LoRAs, got {len(loras)}')
    read = []
    for path, weight in loras:                       # every file checked before any adapter is attached
        if not Path(path).is_file():
            raise FileNotFoundError(f'LoRA file not found: {path}')
        check_lora_file(path)
        sd, alphas, meta = SDXL.lora_state_dict(str(path), unet_config=unet.config, return_lora_metadata=True)
        if not sd or not all('lora' in k for k in sd):
            raise ValueError(f'{path}: not a LoRA file (no lora keys)')
        check_against_model(path, _peft_layout(sd), roots)
        read.append((sd, alphas, meta))
    names, weights, in_text = [], [], [[] for _ in encoders]
    for i, ((path, weight), (sd, alphas, meta)) in enumerate(zip(loras, read)):
        name = f'lora_{i}'
        if any(k.startswith('unet.') for k in sd):
            SDXL.load_lora_into_unet(sd, alphas, unet, adapter_name=name, metadata=meta)
        for j, (enc, prefix) in enumerate(zip(encoders, TEXT_ENCODER_PREFIXES)):
            if _load_into_text_encoder(sd, alphas, meta, enc, prefix, name):
                in_text[j].append((name, float(weight)))
        names.append(name)
        weights.append(float(weight))
    unet_names = [(n, w) for n, w in zip(names, weights) if n in getattr(unet, 'peft_config', {})]
    if unet_names:
        unet.set_adapters([n for n, _ in unet_names], [w for _, w in unet_names])
    for enc, pairs in zip(encoders, in_text):
        if pairs:
            set_weights_and_activate_adapters(enc, [n for n, _ in pairs], [w for _, w in pairs])
    pipe.info['loras'], pipe.info['lora_adapters'] = lora_list(loras), names
    return names


def _peft_layout(sd: dict) -> dict:
    """A lora_state_dict result with every part in lora_A/lora_B naming (for the shape check)."""
    from diffusers.utils.state_dict_utils import (StateDictType, convert_state_dict_to_diffusers,
                                                  convert_state_dict_to_peft, convert_unet_state_dict_to_peft)
    out = {}
    for prefix in ('unet', 'text_encoder', 'text_encoder_2'):
        part = {k[len(prefix) + 1:]: v for k, v in sd.items() if k.startswith(prefix + '.')}
        if part and prefix == 'unet':
            part = convert_unet_state_dict_to_peft(part)
        elif part:
            old = any('_lora.down.' in k or '_lora.up.' in k for k in part)
            part = convert_state_dict_to_peft(convert_state_dict_to_diffusers(
                part, StateDictType.DIFFUSERS_OLD if old else None))
        out.update({f'{prefix}.{k}': v for k, v in part.items()})
    return out


def remove_loras(pipe: Pipeline) -> None:
    """Delete the adapters `apply_loras` attached (it never changes the base weights)."""
    from diffusers.utils.peft_utils import delete_adapter_layers
    names = pipe.info.pop('lora_adapters', [])
    for key in ('loras', 'loras_from_params'):
        pipe.info.pop(key, None)
    unet = pipe.components.get('unet')
    for name in names:
        if name in getattr(unet, 'peft_config', {}):
            unet.delete_adapters(name)
        for enc in pipe.components['text'].encoders:
            if name in getattr(enc, 'peft_config', {}):
                delete_adapter_layers(enc, name)
                enc.peft_config.pop(name, None)
                if not enc.peft_config:
                    del enc.peft_config


def merge_lora(model: nn.Module, scale: float = 1.) -> nn.Module:
    """Fold a model's active LoRA adapters into its base weights (W + scale·w·(α/r)·B·A) and remove the LoRA
    layers, in place: a diffusers UNet or a CLIP text encoder."""
    from diffusers.loaders.lora_base import fuse_text_encoder_lora
    from diffusers.utils import recurse_remove_peft_layers
    if hasattr(model, 'fuse_lora'):                    # diffusers' PeftAdapterMixin (the UNet)
        model.fuse_lora(lora_scale=scale)
        model.unload_lora()
    else:                                              # a CLIP encoder with peft-injected adapters
        fuse_text_encoder_lora(model, lora_scale=scale)
        recurse_remove_peft_layers(model)
        if hasattr(model, 'peft_config'):
            del model.peft_config
    return model


def merge_lora_file(base: Union[str, os.PathLike], lora: Union[str, os.PathLike], out: Union[str, os.PathLike],
                    scale: float = 1., **load_kwargs) -> None:
    """base SDXL v model (folder or single file) + LoRA file → merged SGM single file with markers, read and
    folded as sampling reads it. load_kwargs go to `load_sdxl` (e.g. the *_config of a non-SDXL-size single
    file)."""
    from .loading import load_sdxl
    from .saving import save_single_file
    pipe = load_sdxl(base, **load_kwargs)
    names = apply_loras(pipe, [(lora, scale)])
    for model in (pipe.components['unet'], *pipe.components['text'].encoders):
        if any(n in getattr(model, 'peft_config', {}) for n in names):
            merge_lora(model)
    save_single_file(pipe, out)


def _load_into_text_encoder(sd: dict, alphas: Optional[dict], meta: Optional[dict], encoder: nn.Module, prefix: str,
                            name: str) -> bool:
    """Attach the `prefix.` part of a diffusers-layout LoRA state dict to a CLIP encoder as peft adapter `name`."""
    from diffusers.utils.peft_utils import get_peft_kwargs
    from diffusers.utils.state_dict_utils import (StateDictType, convert_state_dict_to_diffusers,
                                                  convert_state_dict_to_peft)
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    part = {k[len(prefix) + 1:]: v for k, v in sd.items() if k.startswith(prefix + '.')}
    if not part:
        return False
    old = any('_lora.down.' in k or '_lora.up.' in k for k in part)     # kohya files come out in this layout
    part = convert_state_dict_to_peft(convert_state_dict_to_diffusers(part, StateDictType.DIFFUSERS_OLD if old else None))
    if not hasattr(encoder, 'text_model'):                         # transformers' flattened CLIPTextModel
        part = {k.removeprefix('text_model.'): v for k, v in part.items()}
    if meta:
        kwargs = {k[len(prefix) + 1:]: v for k, v in meta.items() if k.startswith(prefix + '.')}
    else:
        rank = {k: v.shape[1] for k, v in part.items() if k.endswith('lora_B.weight')}
        own = {k[len(prefix) + 1:]: v for k, v in (alphas or {}).items() if k.split('.')[0] == prefix}
        kwargs = get_peft_kwargs(rank, own, part, is_unet=False)
    inject_adapter_in_model(LoraConfig(**kwargs), encoder, adapter_name=name)
    set_peft_model_state_dict(encoder, part, adapter_name=name)
    return True
