"""Full-size SDXL kept verified: random bf16 weights → one SGM single file → `kdiff-ztsnr sample --dtype bf16`.

    python scripts/fullsize_sdxl.py [--dir /tmp/x] [--keep] [--steps 2] [--size 512] [--out results.md]

Builds the four components from the shipped configs on the meta device and gives each parameter a cheap random
bf16 value (never an fp32 copy), writes the single file (ComfyUI's ``v_pred``/``ztsnr`` markers) tensor by tensor,
reads every tensor back for a bit-equality check, then samples through the command line in a subprocess and
reports file size, load time, seconds per step and the subprocess's peak RSS. Needs ~7 GB of disk and ~8 GB RAM.
"""

import argparse
import json
import math
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors import safe_open

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kdiff_ztsnr.models import sdxl  # noqa: E402

DTYPES = {torch.bfloat16: 'BF16', torch.float16: 'F16', torch.float32: 'F32'}


def random_component(name: str, dtype: torch.dtype, gen: torch.Generator) -> torch.nn.Module:
    """A component on the meta device whose parameters become random dtype tensors, one at a time:
    N(0, 1/fan_in) for weights of ≥ 2 dims, 1 for norm scales, 0 for biases."""
    model = sdxl.build_component(name, sdxl.component_config(None, name), empty=True)
    for mod_name, mod in model.named_modules():
        for p_name, p in list(mod._parameters.items()):
            if p is None:
                continue
            if p.ndim >= 2:
                t = torch.randn(p.shape, generator=gen, dtype=dtype) * math.prod(p.shape[1:]) ** -0.5
            else:
                t = (torch.ones if p_name == 'weight' else torch.zeros)(p.shape, dtype=dtype)
            mod._parameters[p_name] = torch.nn.Parameter(t, requires_grad=False)
    return model.eval()


def write_safetensors(tensors: dict, path: Path, metadata: dict) -> None:
    """safetensors' format written tensor by tensor (save_file first serialises the whole 7 GB in memory)."""
    header, offset = {'__metadata__': metadata}, 0
    for k, t in tensors.items():
        n = t.numel() * t.element_size()
        header[k] = {'dtype': DTYPES[t.dtype], 'shape': list(t.shape), 'data_offsets': [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(',', ':')).encode()
    raw += b' ' * (-len(raw) % 8)
    with open(path, 'wb') as f:
        f.write(len(raw).to_bytes(8, 'little'))
        f.write(raw)
        for t in tensors.values():
            if t.numel():
                f.write(memoryview(t.contiguous().view(torch.uint8).numpy()))


def build_and_write(path: Path, dtype: torch.dtype) -> dict:
    """The single file of a random full-size SDXL; returns parameter/key counts and the bit-equality check."""
    gen, t0 = torch.Generator().manual_seed(0), time.perf_counter()
    sd, params = {}, 0
    for c in sdxl.COMPONENTS:
        model = random_component(c, dtype, gen)
        params += sum(p.numel() for p in model.parameters())
        sd.update(sdxl.component_to_sgm(c, model.state_dict(), sdxl.component_config(None, c)))
    sd['v_pred'], sd['ztsnr'] = torch.tensor([]), torch.tensor([])
    build_s = time.perf_counter() - t0
    write_safetensors(sd, path, {'format': 'pt'})
    with safe_open(str(path), 'pt') as f:
        keys = set(f.keys())
        unequal = [k for k in sd if not torch.equal(f.get_tensor(k), sd[k])]
    return {'parameters': params, 'keys': len(keys), 'keys_match': keys == set(sd), 'unequal_tensors': unequal,
            'build_s': round(build_s, 1), 'file_gb': round(path.stat().st_size / 1e9, 3)}


# `python -m kdiff_ztsnr.cli` that prints its own peak RSS (VmHWM) at exit. getrusage(RUSAGE_CHILDREN).ru_maxrss
# cannot be used here: Linux carries the parent's high-water mark into the child across vfork + exec, and this
# script peaks near 15 GiB while writing and re-reading the file (measured: ru_maxrss 14.65 GiB, child VmHWM 8.99).
PEAK_WRAPPER = ("import atexit, runpy, sys\n"
                "atexit.register(lambda: print(next(l for l in open('/proc/self/status') if l.startswith('VmHWM'))"
                ".strip(), file=sys.stderr))\n"
                "runpy.run_module('kdiff_ztsnr.cli', run_name='__main__', alter_sys=True)")


def sample_through_cli(path: Path, out: Path, steps: int, size: int, dtype: str) -> dict:
    """`kdiff-ztsnr sample` in a subprocess: load time (until the detection line), seconds per step (tqdm's
    elapsed over the steps), total, and the child's own peak RSS (VmHWM)."""
    cmd = [sys.executable, '-c', PEAK_WRAPPER, 'sample', 'a cat', '--model', str(path), '--device', 'cpu',
           '--dtype', dtype, '--steps', str(steps), '--width', str(size), '--height', str(size),
           '--sampler', 'euler', '--out', str(out)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    load_s, err = None, []
    for line in proc.stderr:
        err.append(line)
        if load_s is None and line.startswith('model '):
            load_s = time.perf_counter() - t0
    stdout = proc.stdout.read()
    rc, total = proc.wait(), time.perf_counter() - t0
    if rc:
        raise RuntimeError(f'sample failed ({rc}):\n' + ''.join(err[-20:]))
    bars = re.findall(r'(\d+)/(\d+) \[(\d+):(\d+)<', ''.join(err).replace('\r', '\n'))
    done = [b for b in bars if b[0] == b[1]]
    sampling = int(done[-1][2]) * 60 + int(done[-1][3]) if done else None
    hwm = [int(l.split()[1]) for l in err if l.startswith('VmHWM:')]
    rss = hwm[-1] / 1024 ** 2 if hwm else None                                   # KiB → GiB
    inherited = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 ** 2
    from PIL import Image
    import numpy as np
    image = np.asarray(Image.open(stdout.split()[-1]).convert('RGB'))
    return {'command': 'kdiff-ztsnr ' + ' '.join(cmd[3:]), 'load_s': round(load_s, 1), 'sampling_s': sampling,
            's_per_step': None if sampling is None else round(sampling / steps, 1), 'total_s': round(total, 1),
            'peak_rss_gib': None if rss is None else round(rss, 2),
            'ru_maxrss_children_gib': round(inherited, 2),
            'detected': next((l.strip() for l in err if l.startswith('model ')), ''),
            'image_std': float(image.std()), 'image': stdout.split()[-1]}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--dir', default=None, help='work folder (default: a temporary one, removed afterwards)')
    ap.add_argument('--keep', action='store_true', help='keep the work folder')
    ap.add_argument('--steps', type=int, default=2)
    ap.add_argument('--size', type=int, default=512)
    ap.add_argument('--dtype', default='bf16', choices=['bf16', 'fp16'])
    ap.add_argument('--out', default=None, help='also write the results as JSON here')
    args = ap.parse_args(argv)
    work = Path(args.dir or tempfile.mkdtemp(prefix='fullsize_sdxl_'))
    work.mkdir(parents=True, exist_ok=True)
    try:
        dtype = {'bf16': torch.bfloat16, 'fp16': torch.float16}[args.dtype]
        result = {'file': build_and_write(work / 'sdxl_random.safetensors', dtype)}
        print(json.dumps(result, indent=2), flush=True)
        result['sample'] = sample_through_cli(work / 'sdxl_random.safetensors', work / 'out', args.steps,
                                              args.size, args.dtype)
        result['machine'] = {'cpus': os.cpu_count(), 'torch': torch.__version__}
        print(json.dumps(result, indent=2), flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps(result, indent=2))
        return result
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    main()
