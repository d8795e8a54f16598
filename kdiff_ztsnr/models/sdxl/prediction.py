"""What an SDXL checkpoint says about itself: prediction type and zero terminal SNR.

- single files: ComfyUI's marker keys ``v_pred`` and ``ztsnr`` (empty tensors at the top level) say
  v-prediction and a zero-terminal-SNR schedule. A ``v_pred`` file without ``ztsnr`` is v-prediction on SDXL's
  ordinary schedule (σ_max ≈ 14.6), as ComfyUI reads it.
- diffusers folders: ``scheduler/scheduler_config.json``'s ``prediction_type`` and ``rescale_betas_zero_snr``.
- nothing found (an SDXL file without markers is almost always ε-prediction) or ε found: ``ValueError``,
  unless overridden (``prediction_type='v'``, ``zero_terminal_snr``).
"""

import warnings
from typing import Optional

from ... import schedules
from ...errors import ParamError, quote


def markers(keys) -> tuple[Optional[str], Optional[bool]]:
    """(prediction, zero terminal SNR) from a single file's top-level keys (ComfyUI's `v_pred`, `ztsnr`)."""
    keys = set(keys)
    found_pred = 'v' if 'v_pred' in keys else None
    return found_pred, ('ztsnr' in keys if found_pred else ('ztsnr' in keys or None))


def resolve_prediction(found_pred: Optional[str], found_ztsnr: Optional[bool], prediction_type: Optional[str],
                       zero_terminal_snr: Optional[bool], source: str) -> bool:
    """Check the model is v-prediction (detected or overridden); return whether it is zero-terminal-SNR."""
    pred = prediction_type or found_pred
    if pred is None:
        raise ParamError(f'{quote(source)}: cannot tell the prediction type (no `v_pred` marker key, no scheduler '
                         f'prediction_type). SDXL checkpoints without one are normally epsilon-prediction, which '
                         f'kdiff_ztsnr does not sample. For a v-prediction model saved without markers pass '
                         f'{{prediction_type="v"}}, and {{zero_terminal_snr=True}} if it is ZTSNR.')
    if pred not in ('v', 'v_prediction'):
        raise ParamError(f'{quote(source)}: prediction type {quote(repr(pred))}; kdiff_ztsnr samples v-prediction '
                         f'models only (pass {{prediction_type="v"}} only if the model is in fact v-prediction)')
    ztsnr = found_ztsnr if zero_terminal_snr is None else zero_terminal_snr
    if ztsnr is None:
        warnings.warn(f'{source}: no zero-terminal-SNR information; assuming SDXL\'s ordinary schedule '
                      f'(σ_max ≈ 14.6). Pass zero_terminal_snr=True for a ZTSNR model.')
    return bool(ztsnr)


def describe(found_pred: Optional[str], found_ztsnr: Optional[bool], prediction_type: Optional[str],
             zero_terminal_snr: Optional[bool], where: str) -> str:
    """One line saying what was detected and what was overridden, for the command line."""
    pred = f'v-prediction ({"--prediction v" if prediction_type else where})' if (prediction_type or found_pred) \
        else 'prediction type unknown'
    if zero_terminal_snr is not None:
        table = f'zero-terminal-SNR table {"on" if zero_terminal_snr else "off"} (--ztsnr-table)'
    elif found_ztsnr is None:
        table = 'no zero-terminal-SNR information (assuming SDXL\'s ordinary schedule)'
    else:
        table = f'zero-terminal-SNR table {"on" if found_ztsnr else "off"} ({where})'
    return f'{pred}, {table}'


def scheduler_config(zero_terminal_snr: bool) -> dict:
    """A diffusers scheduler config describing a v-prediction SDXL model (what save_pretrained writes)."""
    return {'_class_name': 'EulerDiscreteScheduler', 'beta_schedule': 'scaled_linear',
            'beta_start': schedules.SDXL_BETA_START, 'beta_end': schedules.SDXL_BETA_END,
            'num_train_timesteps': schedules.NUM_TIMESTEPS, 'prediction_type': 'v_prediction',
            'rescale_betas_zero_snr': zero_terminal_snr, 'interpolation_type': 'linear', 'steps_offset': 1,
            'timestep_spacing': 'trailing' if zero_terminal_snr else 'leading', 'use_karras_sigmas': False}
