"""Export a trainer checkpoint as the package's embedded default model (EMA + text encoder, float16).

    python -m kdiff_ztsnr.training --config examples/embedded/config.json     # ~25 min on one CPU thread
    python examples/embedded/export.py out/embedded kdiff_ztsnr/assets/embedded
"""

import argparse
import json
import os
from pathlib import Path

from safetensors.torch import load_file, save_file

from kdiff_ztsnr.models.trained import resolve_checkpoint


def export(src: str, dst: str) -> None:
    ckpt = resolve_checkpoint(src)
    os.makedirs(dst, exist_ok=True)
    for name in ('ema.safetensors', 'text.safetensors'):
        from safetensors import safe_open
        with safe_open(str(ckpt / name), 'pt') as f:
            meta = f.metadata()
        tensors = {k: v.half() if v.is_floating_point() else v for k, v in load_file(str(ckpt / name)).items()}
        config = json.loads(meta['config'])
        config['training']['out_dir'] = None
        meta = {**meta, 'config': json.dumps(config), 'source': ckpt.name, 'dtype': 'float16'}
        save_file(tensors, str(Path(dst) / name), metadata=meta)
        print(f'{Path(dst) / name}: {os.path.getsize(Path(dst) / name) / 2 ** 20:.2f} MiB')


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('src', help='a checkpoint directory or out_dir')
    p.add_argument('dst', help='e.g. kdiff_ztsnr/assets/embedded')
    args = p.parse_args()
    export(args.src, args.dst)
