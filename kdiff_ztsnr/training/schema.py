"""The training config's schema: every section and key, its type, range or choices, checked before any work.

A row is a `Key` (the package's one `rules.Rule`, as the generation parameters' rows are); a nested section is
a `Key` whose ``section`` is another dict of rows. Unknown keys are refused with a "did you mean" (difflib). New
options add rows to SCHEMA. `validate_config` checks a user's (partial) config; `check_merged` adds what needs
the merged config (required keys, cross-key rules).
"""

import difflib

from ..rules import Rule, fits, fmt

NUM_TIMESTEPS = 1000                     # = schedules.NUM_TIMESTEPS (kept import-free here)


Key = Rule     # a config key's rule (`rules.Rule`: types, bounds, choices, list items and length, a section)


def describe(key: Rule) -> str:
    """What a config key must be, in JSON's words."""
    if key.choices:
        what = 'one of ' + ', '.join(map(repr, key.choices))
    else:
        what = ' or '.join({int: 'an integer', float: 'a finite number', str: 'a string', bool: 'true/false',
                            list: 'a list', dict: 'an object'}[k] for k in key.kinds)
        if key.lo is not None or key.hi is not None:
            left = '(' if key.gt else '['
            what += f" in {left}{'-inf' if key.lo is None else f'{fmt(key.lo)}'}, " \
                    f"{'inf' if key.hi is None else f'{fmt(key.hi)}'}]"
    if key.item is not None:
        what += f' of items {describe(key.item)}'
    if key.length:
        what += f' with {key.length[0]}-{key.length[1]} items'
    return what + (' or null' if key.optional else '')


def num(lo=None, hi=None, gt=False, optional=False) -> Key:
    return Key((float,), lo, hi, gt, optional=optional)


def integer(lo=None, hi=None, optional=False) -> Key:
    return Key((int,), lo, hi, optional=optional)


def choice(*choices, optional=False) -> Key:
    return Key((str,), choices=choices, optional=optional)


BOOL, TEXT = Key((bool,)), Key((str,))
PAIR = Key((list,), item=integer(1, 1 << 16), length=(2, 2))
LORA = {'rank': integer(1, 4096), 'alpha': num(0, 1e6, gt=True, optional=True),
        'targets': Key((list,), item=TEXT, length=(1, 256)), 'dropout': num(0, 1), 'save_merged': BOOL}
PREVIEW = {'prompts': Key((list,), item=TEXT, length=(1, 64)), 'seeds': Key((list,), item=integer(0, 2 ** 63 - 1),
                                                                          length=(1, 64)),
           'steps': integer(1, 1000), 'scale': num(0, 100), 'width': integer(8, 8192), 'height': integer(8, 8192),
           'sampler': TEXT}
MODEL = {
    'type': choice('image_v1', 'module', 'sdxl'), 'sigma_data': num(1e-3, 1e3), 'zero_terminal_snr': BOOL,
    'sigma_max': num(0, 1e7, gt=True, optional=True), 'augment_wrapper': BOOL,
    'cross_cond_dim': integer(0, 1 << 16, optional=True), 'mapping_cond_dim': integer(0, 1 << 16, optional=True),
    'input_channels': integer(1, 1024), 'mapping_out': integer(1, 1 << 16),
    'depths': Key((list,), item=integer(1, 64), length=(1, 16)),
    'channels': Key((list,), item=integer(1, 1 << 16), length=(1, 16)),
    'self_attn_depths': Key((list,), item=BOOL, length=(1, 16)),
    'cross_attn_depths': Key((list,), item=BOOL, length=(1, 16), optional=True),
    'patch_size': integer(1, 64), 'dropout_rate': num(0, 1), 'augment_prob': num(0, 1),
    'unet_cond_dim': integer(0, 1 << 16), 'skip_stages': integer(0, 16), 'has_variance': BOOL,
    'loss_config': TEXT, 'loss_weighting': TEXT, 'loss_scales': integer(1, 64), 'num_timesteps': integer(2, 100_000),
    'target': TEXT, 'kwargs': Key((dict,), free=True),
    # type 'sdxl' (training/sdxl.py)
    'path': Key((str,), optional=True), 'components': Key((dict,), free=True, optional=True),
    'source_prediction': choice('epsilon', 'v', optional=True),
    'latent_stats': Key((str, list), optional=True), 'lora': Key((dict,), optional=True, section=LORA),
}
SYNTHETIC = {'n': integer(1, 10_000_000), 'sizes': Key((list,), item=PAIR, length=(1, 1024)),
             'seed': integer(0, 2 ** 63 - 1), 'solid_fraction': num(0, 1)}
BUCKETS = {'max_area': integer(1, 1 << 30), 'max_side': integer(1, 1 << 16), 'min_side': integer(1, 1 << 16),
           'step': integer(1, 1 << 16), 'extra': Key((list,), item=PAIR, length=(0, 1024))}
TAG_WEIGHTS = {'alpha': num(0, 10), 'clip': Key((list,), item=num(0, 100), length=(2, 2))}
DATASET = {
    'type': choice('imagefolder', 'synthetic', 'latents'), 'location': Key((str,), optional=True),
    'buckets': Key((dict,), optional=True, section=BUCKETS), 'log_space': BOOL, 'max_ratio_error': num(0, 10),
    'normalize': BOOL, 'cond_dropout_rate': num(0, 1), 'num_classes': integer(0, 0),
    'tag_weights': Key((dict, bool), optional=True, section=TAG_WEIGHTS),
    'synthetic': Key((dict,), section=SYNTHETIC), 'loader_threads': integer(0, 256),
    'cache_latents': BOOL, 'cache_dir': Key((str,), optional=True),
}
ENCODER = {'hidden_size': integer(1, 1 << 14), 'intermediate_size': integer(1, 1 << 16),
           'num_hidden_layers': integer(1, 128), 'num_attention_heads': integer(1, 256),
           'projection_dim': integer(1, 1 << 14, optional=True)}
TEXT_SECTION = {
    'type': choice('clip', 'pretrained', 'none'), 'path': Key((str,), optional=True),
    'encoders': Key((list,), item=Key((dict,), section=ENCODER), length=(1, 4)), 'seed': integer(0, 2 ** 63 - 1),
    'max_chunks': integer(1, 100), 'layer': integer(-64, 64), 'final_norm': BOOL, 'cache': integer(0, 1 << 24),
}
OPTIMIZER = {'type': choice('adamw', 'adamw8bit', 'sgd'), 'lr': num(0, 10, gt=True),
             'betas': Key((list,), item=num(0, 1), length=(2, 2)), 'eps': num(0, 1, gt=True),
             'weight_decay': num(0, 10), 'momentum': num(0, 1), 'nesterov': BOOL,
             'text_lr': num(0, 10, gt=True, optional=True)}
LR_SCHED = {'type': choice('constant', 'inverse', 'exponential'), 'warmup': num(0, 0.9999),
            'inv_gamma': num(0, 1e12, gt=True), 'power': num(0, 100), 'num_steps': num(0, 1e12, gt=True),
            'decay': num(0, 1, gt=True), 'min_lr': num(0, 10)}
EMA_SCHED = {'type': choice('inverse', 'constant'), 'power': num(0, 100), 'max_value': num(0, 1),
             'min_value': num(0, 1), 'inv_gamma': num(0, 1e12, gt=True), 'start_at': integer(0, 1 << 40),
             'value': num(0, 1)}
TRAINING = {
    'steps': integer(1, 1 << 40), 'batch_size': integer(1, 1 << 16), 'grad_accum_steps': integer(1, 1 << 16),
    'mixed_precision': choice('no', 'bf16'), 'tf32': BOOL, 'cpu': BOOL, 'threads': integer(1, 1024, optional=True),
    'seed': integer(0, 2 ** 63 - 1), 'grad_clip': num(0, 1e6, gt=True, optional=True),
    'min_snr_gamma': num(0, 1e6, gt=True, optional=True), 'terminal_weight': num(0, 1e6),
    'checkpoint_every': integer(1, 1 << 40), 'keep_checkpoints': integer(0, 1 << 20),
    'log_every': integer(1, 1 << 40), 'out_dir': Key((str,), optional=True),
    'gradient_checkpointing': BOOL, 'compile': BOOL, 'save_single_file': BOOL, 'save_diffusers': BOOL,
    'train_text_encoders': BOOL,
    'preview_every': integer(0, 1 << 40), 'preview': Key((dict,), optional=True, section=PREVIEW),
}
SCHEMA = {'model': MODEL, 'dataset': DATASET, 'text': TEXT_SECTION, 'optimizer': OPTIMIZER,
          'lr_sched': LR_SCHED, 'ema_sched': EMA_SCHED, 'training': TRAINING}


def _check(rows: dict, values, where: str) -> None:
    if not isinstance(values, dict):
        raise ValueError(f'{where or "the config"} must be an object, got {type(values).__name__}')
    for name, value in values.items():
        path = f'{where}.{name}' if where else name
        if name not in rows:
            close = difflib.get_close_matches(str(name), list(rows), n=1)
            hint = f'; did you mean {close[0]!r}?' if close else f'; valid keys: {", ".join(rows)}'
            raise ValueError(f'unknown config key {path!r}{hint}')
        check_value(rows[name], value, path)


def check_value(key: Key, value, path: str) -> None:
    """ValueError naming path and what would be valid, unless value fits key (recursively)."""
    if not fits(key, value):
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + '...'
        raise ValueError(f'config key {path!r} must be {describe(key)}, got {shown}')
    if isinstance(value, list) and key.item is not None:
        for i, item in enumerate(value):
            check_value(key.item, item, f'{path}[{i}]')
    if isinstance(value, dict) and key.section is not None:
        _check(key.section, value, path)


def validate_config(config) -> None:
    """Check a (partial) training config: known sections and keys, types, ranges, choices."""
    _check({name: Key((dict,), section=rows) for name, rows in SCHEMA.items()}, config, '')


def check_merged(config: dict) -> None:
    """Rules of the merged config: required keys and keys that must agree."""
    mc = config['model']
    if mc['type'] == 'image_v1':
        for name in ('input_channels', 'mapping_out', 'depths', 'channels', 'self_attn_depths'):
            if name not in mc:
                raise ValueError(f"config key 'model.{name}' is required for model.type 'image_v1'")
        n = len(mc['depths'])
        for name in ('channels', 'self_attn_depths', 'cross_attn_depths'):
            if mc.get(name) is not None and len(mc[name]) != n:
                raise ValueError(f"config key 'model.{name}' must have one entry per stage "
                                 f"(len(model.depths) = {n}), got {len(mc[name])}")
    if mc['type'] == 'module' and 'target' not in mc:
        raise ValueError("config key 'model.target' is required for model.type 'module' ('pkg.mod:Factory')")
    need = {'inverse': ('inv_gamma', 'power'), 'exponential': ('num_steps', 'decay')}
    for name in need.get(config['lr_sched']['type'], ()):
        if name not in config['lr_sched']:
            raise ValueError(f"config key 'lr_sched.{name}' is required for lr_sched.type "
                             f"{config['lr_sched']['type']!r}")
    if config['ema_sched']['type'] == 'constant' and 'value' not in config['ema_sched']:
        raise ValueError("config key 'ema_sched.value' is required for ema_sched.type 'constant'")
    if config['dataset']['type'] in ('imagefolder', 'latents') and not config['dataset'].get('location'):
        raise ValueError(f"config key 'dataset.location' is required for dataset.type "
                         f"{config['dataset']['type']!r}: the folder to read")
    if config['training'].get('train_text_encoders') and (mc['type'] != 'sdxl' or mc.get('lora')):
        raise ValueError("config key 'training.train_text_encoders' needs the SDXL full fine-tune: model.type "
                         f"'sdxl' without model.lora (got model.type {mc['type']!r}"
                         f"{', model.lora set' if mc.get('lora') else ''})")
    if config['text']['type'] == 'pretrained' and not config['text'].get('path'):
        raise ValueError("config key 'text.path' is required for text.type 'pretrained'")
    if mc.get('num_timesteps', NUM_TIMESTEPS) != NUM_TIMESTEPS:
        raise ValueError(f"config key 'model.num_timesteps' must be {NUM_TIMESTEPS} (the length of the ᾱ table "
                         f"every model type trains on), got {mc['num_timesteps']}")
    check_sizes(config)
    check_text_layer(config['text'])
    check_optimizer(config['optimizer'])
    check_preview(config)
    tw = config['dataset'].get('tag_weights')
    if isinstance(tw, dict) and 'clip' in tw and not 0 <= tw['clip'][0] <= 1 <= tw['clip'][1] <= TAG_CLIP_MAX:
        raise ValueError(f"config key 'dataset.tag_weights.clip' must be [w_min, w_max] with 0 <= w_min <= 1 <= "
                         f"w_max <= {fmt(TAG_CLIP_MAX)} (weights are clipped around the mean 1), got {tw['clip']}")
    ema = config['ema_sched']
    if ema.get('min_value', 0) > ema.get('max_value', 1):
        raise ValueError(f"config key 'ema_sched.min_value' ({ema['min_value']}) must not exceed "
                         f"'ema_sched.max_value' ({ema['max_value']})")


TAG_CLIP_MAX = 100.


def bucket_list(dc: dict):
    """The bucket list dataset.buckets makes (the report's when unset); a ValueError when it cannot."""
    from .data.buckets import make_buckets
    b = dc.get('buckets')
    if b is None:
        return make_buckets()
    b = {'max_area': 512 * 768, 'max_side': 1024, 'min_side': 256, 'step': 64, **b}
    if b['min_side'] > b['max_side']:
        raise ValueError(f"config key 'dataset.buckets.min_side' ({b['min_side']}) must not exceed "
                         f"'dataset.buckets.max_side' ({b['max_side']})")
    wh = make_buckets(**b)
    if not len(wh):
        raise ValueError(f"config 'dataset.buckets' makes no bucket: no side in [min_side, max_side] = "
                         f"[{b['min_side']}, {b['max_side']}] fits max_area {b['max_area']} at step {b['step']} "
                         f"and 'extra' is empty")
    return wh


def check_sizes(config: dict) -> None:
    """image_v1: channels, groups and heads that k-diffusion's U-Net can build, canvases its stages can halve."""
    mc, dc = config['model'], config['dataset']
    wh = bucket_list(dc)
    if mc['type'] != 'image_v1':
        return
    n = len(mc['depths'])
    if mc.get('skip_stages', 0) >= n:
        raise ValueError(f"config key 'model.skip_stages' ({mc['skip_stages']}) must be below the number of "
                         f"stages (len(model.depths) = {n})")
    if mc['mapping_out'] % 2:
        raise ValueError(f"config key 'model.mapping_out' must be even (Fourier features), got {mc['mapping_out']}")
    attn = [a or c for a, c in zip(mc['self_attn_depths'], mc.get('cross_attn_depths') or mc['self_attn_depths'])]
    for i, (c, a) in enumerate(zip(mc['channels'], attn)):
        groups, heads = max(1, c // 32), max(1, c // 64)          # k-diffusion: group size 32, head size 64
        if c % groups or (a and c % heads):
            raise ValueError(f"config key 'model.channels[{i}]' = {c} must be divisible by its {groups} norm "
                             f"groups (channels // 32){f' and {heads} attention heads (channels // 64)' if a else ''}"
                             f", e.g. {max(32, c // 64 * 64)}")
    if dc['type'] in ('imagefolder', 'synthetic') and mc['input_channels'] != 3:
        raise ValueError(f"config key 'model.input_channels' must be 3 for RGB images (dataset.type "
                         f"{dc['type']!r}), got {mc['input_channels']}")
    if dc['type'] == 'latents':
        return                                                   # the cache's canvases are checked when read
    m = mc.get('patch_size', 1) * 2 ** max(0, n - 1 - mc.get('skip_stages', 0))
    bad = [f'{w}x{h}' for w, h in wh.tolist() if w % m or h % m]
    if bad:
        raise ValueError(f"model.patch_size ({mc.get('patch_size', 1)}) × 2^(downsampling stages) = {m} must divide "
                         f"every bucket side, but {', '.join(bad[:3])}{' …' if len(bad) > 3 else ''} do not "
                         f"(change dataset.buckets or model.patch_size / model.depths)")


def check_text_layer(tc: dict) -> None:
    """text.layer indexes CLIP's hidden states: [-(L+1), L] for L layers (0: the embeddings)."""
    if tc['type'] != 'clip':
        return
    for i, enc in enumerate(tc['encoders']):
        if enc['hidden_size'] % enc['num_attention_heads']:
            raise ValueError(f"config key 'text.encoders[{i}].hidden_size' ({enc['hidden_size']}) must be divisible "
                             f"by its num_attention_heads ({enc['num_attention_heads']})")
        n = enc['num_hidden_layers']
        if not -(n + 1) <= tc['layer'] <= n:
            raise ValueError(f"config key 'text.layer' ({tc['layer']}) must be in [{-(n + 1)}, {n}] for "
                             f"text.encoders[{i}] with {n} layers (-1: the last layer, -2: the penultimate)")


def check_optimizer(oc: dict) -> None:
    if oc['type'] in ('adamw', 'adamw8bit') and not all(b < 1 for b in oc['betas']):
        raise ValueError(f"config key 'optimizer.betas' must be two numbers in [0, 1), got {oc['betas']}")
    if oc['type'] == 'adamw8bit':
        import importlib.util
        if importlib.util.find_spec('bitsandbytes') is None:
            raise ValueError("optimizer.type 'adamw8bit' needs the bitsandbytes package (pip install bitsandbytes), "
                             "or use 'adamw'")


def check_preview(config: dict) -> None:
    """training.preview: sampled by generation (SDXL only), so its values are checked as generation's fields."""
    tc = config['training']
    if not tc.get('preview_every') and not tc.get('preview'):
        return
    if config['model']['type'] != 'sdxl':
        raise ValueError(f"config keys 'training.preview_every' / 'training.preview' need model.type 'sdxl' "
                         f"(previews are sampled through an SDXL pipeline), got {config['model']['type']!r}")
    from ..generation.params import check_fields
    pc = dict(tc.get('preview') or {})
    fields = {k: pc[k] for k in ('steps', 'scale', 'sampler', 'width', 'height') if pc.get(k) is not None}
    check_fields(fields, where="config key 'training.preview': ")
    for k in ('width', 'height'):
        if pc.get(k) is not None and pc[k] % 8:
            raise ValueError(f"config key 'training.preview.{k}' must be a multiple of 8 (the VAE's), got {pc[k]}")
