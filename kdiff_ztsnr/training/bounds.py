"""A merged training config bounded as a whole: every key may sit inside its schema range and the product still
be unbounded (a bucket plan of 65536² canvases × a batch of 65536, encoders of 128 layers of 16384). Each
product that sizes memory or work is checked here before anything is built; one ValueError names the keys.
"""

MAX_BUCKETS = 4096                  # candidate buckets of a plan (the report's has 25)
MAX_BATCH_PIXELS = 1 << 28          # batch_size × the largest bucket's pixels (e.g. 256 images of 1024²)
MAX_SYNTHETIC_PIXELS = 1 << 32      # pixels the synthetic set writes (n × its sizes)
MAX_PREVIEW_WORK = 1 << 36          # preview pixels (prompts × seeds × width × height) × steps
MAX_NETWORK_BYTES = 1 << 34         # parameters of a network built from the config (16 GiB)
MAX_TEXT_CACHE_BYTES = 1 << 33      # the prompt-embedding memo at its fullest (8 GiB)


def _refuse(what: str, value: float, limit: float, keys: str) -> None:
    if value > limit:
        raise ValueError(f'{keys}: {what} is {value:.4g}, more than the limit {limit:.4g}; lower them')


def bucket_plan(config: dict) -> tuple[int, int]:
    """(number of candidate buckets, largest bucket's pixels) of dataset.buckets, computed without building it."""
    b = {'max_area': 512 * 768, 'max_side': 1024, 'min_side': 256, 'step': 64, 'extra': [[512, 512]],
         **(config['dataset'].get('buckets') or {})}
    n = 2 * (max(b['max_side'] - b['min_side'], -1) // b['step'] + 1) + len(b['extra'])
    largest = max([min(b['max_area'], b['max_side'] ** 2)] + [w * h for w, h in b['extra']])
    return n, largest


def network_bytes(build) -> int:
    """Bytes of the parameters and buffers build() would allocate, built on the meta device (nothing allocated)."""
    import torch
    try:
        with torch.device('meta'):
            module = build()
    except Exception:                        # a config that cannot build: the real build reports it, by key
        return 0
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def check_bounds(config: dict) -> None:
    """ValueError unless every config-driven size (buckets, batch pixels, synthetic set, previews, networks,
    prompt cache) is within its limit."""
    dc, tc, text = config['dataset'], config['training'], config['text']
    n_buckets, largest = bucket_plan(config)
    _refuse('the number of candidate buckets', n_buckets, MAX_BUCKETS,
            'dataset.buckets (max_side − min_side) / step')
    _refuse('pixels per batch (batch_size × largest bucket)', tc['batch_size'] * largest, MAX_BATCH_PIXELS,
            'training.batch_size × dataset.buckets')
    if dc['type'] == 'synthetic':
        s = dc['synthetic']
        _refuse('pixels of the synthetic set', s['n'] * max(w * h for w, h in s['sizes']), MAX_SYNTHETIC_PIXELS,
                'dataset.synthetic.n × sizes')
    p = tc.get('preview') or {}
    if tc.get('preview_every'):
        work = (len(p.get('prompts', [''])) * len(p.get('seeds', [0])) * p.get('width', 1024) *
                p.get('height', 1024) * p.get('steps', 28))
        _refuse('preview work (prompts × seeds × width × height × steps)', work, MAX_PREVIEW_WORK,
                'training.preview')
    if text['type'] == 'clip':
        from ..text import build_text
        _refuse('bytes of the text encoders', network_bytes(lambda: build_text(text)), MAX_NETWORK_BYTES,
                'text.encoders')
        width = sum(e['hidden_size'] for e in text['encoders'])
        _refuse('bytes of the prompt cache (cache × max_chunks × 77 × width × 4)',
                text['cache'] * text['max_chunks'] * 77 * width * 4, MAX_TEXT_CACHE_BYTES, 'text.cache')
    if config['model']['type'] == 'image_v1':
        from ..models.registry import build_model
        _refuse('bytes of the model', network_bytes(lambda: build_model(config)), MAX_NETWORK_BYTES,
                'model.channels / depths')
