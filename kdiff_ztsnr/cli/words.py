"""The command line's words for the library's parameters: `FLAGS` (each parameter a library error names → the
option that sets it), `VALUES` (a value as the option says it), and `said`, which words an error's message so.
Library errors name parameters (``{steps}``, ``{prediction_type='eps'}``); only the command line says flags.
"""

from typing import Optional

from ..errors import ParamError
from ..generation.params import FIELDS

# The command line's option for each library parameter its errors name: a generation field's FIELDS[].option,
# every other parameter's by the option that sets it. Without a value a field (or loras) is named by its metadata
# key too, as --from-image reads keys: "steps (--steps)".
FLAGS = {**{k: f.option or '--' + k.replace('_', '-') for k, f in FIELDS.items()},
         'loras': '--lora FILE[:WEIGHT]', 'device': '--device', 'dtype': '--dtype', 'vae_dtype': '--vae-dtype',
         'config_dir': '--config', 'prediction_type': '--prediction', 'zero_terminal_snr': '--ztsnr-table',
         'out': '--out', 'alpha': '--alpha-metadata', 'limits': '--no-size-limit', 'resume': '--resume',
         'out_dir': '--out-dir', 'overwrite': '--overwrite', 'config': '--config', 'prompt_file': '--prompt-file',
         'trust_code': '--trust-code'}
VALUES = {'zero_terminal_snr': {'True': 'on', 'False': 'off'}, 'limits': {'False': ''}, 'alpha': {'True': ''},
          'overwrite': {'True': ''}, 'trust_code': {'True': ''}}


def option_name(param: str, value: Optional[str]) -> str:
    """A library parameter (and its value, as Python writes it) in the command line's words."""
    flag = FLAGS.get(param, param)
    if value is None:
        return f'{param} ({flag})' if param in FIELDS or param == 'loras' else flag
    shown = VALUES.get(param, {}).get(value, value.strip('\'"'))
    return f'{flag.split()[0]} {shown}' if shown else flag.split()[0]


def said(e: Exception) -> str:
    """An error's message for the command line: library parameters named by their options."""
    return e.spell(option_name) if isinstance(e, ParamError) else str(e)
