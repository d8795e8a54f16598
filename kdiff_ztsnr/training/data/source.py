"""Datasets of a config's ``dataset`` section and the endless, resumable batch source of one rank."""

from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np
import torch

from .buckets import BucketSampler, make_buckets
from .images import ImageFolderDataset, collate_images
from .latents import LatentCacheDataset, collate_latents
from .synthetic import make_synthetic_dataset


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (numpy SeedSequence), for per-step/per-item generators."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0]) >> 1


def build_dataset(dataset_config: dict, out_dir: Union[str, Path]):
    """ImageFolderDataset ('imagefolder', 'synthetic') or LatentCacheDataset ('latents')."""
    kind, location = dataset_config['type'], dataset_config.get('location')
    if kind in ('latents', 'imagefolder') and not (location and Path(location).is_dir()):
        raise ValueError(f'dataset.location {location}: no such folder (dataset.type {kind!r} reads a folder)')
    if kind == 'latents':
        return LatentCacheDataset(location, normalize=dataset_config['normalize'])
    if kind == 'synthetic':
        sc = dataset_config['synthetic']
        location = make_synthetic_dataset(location or Path(out_dir) / 'synthetic', sc['n'], sc['sizes'],
                                          sc['seed'], sc['solid_fraction'])
    elif kind != 'imagefolder':
        raise ValueError(f"unknown dataset type {kind!r}; expected 'imagefolder', 'synthetic' or 'latents'")
    buckets = None if dataset_config['buckets'] is None else make_buckets(**dataset_config['buckets'])
    return ImageFolderDataset(location, buckets, dataset_config['log_space'],
                                    dataset_config['max_ratio_error'])


def describe_dataset(dataset, location) -> str:
    """One line: how many items, how many are unreadable or pruned and why; refuses a dataset with none left."""
    if isinstance(dataset, LatentCacheDataset):
        n = used = len(dataset)
        text = f'dataset: {n} cached latents in {location}'
    else:
        n = len(dataset)
        unreadable = int(((dataset.sizes <= 0).any(1)).sum()) if n else 0
        used = int((dataset.bucket_idx >= 0).sum())
        text = (f'dataset: {n} images in {dataset.root}, {used} used; skipped {unreadable} with an unreadable '
                f'header, pruned {n - used - unreadable} whose aspect ratio is beyond dataset.max_ratio_error of '
                f'every bucket')
    if used == 0:
        why = 'it has no image files (.png/.jpg/.webp/…)' if n == 0 else text.split('; ', 1)[-1]
        raise ValueError(f'dataset.location {location}: nothing to train on: {why}')
    return text


def dataset_captions(dataset) -> list[list[str]]:
    if isinstance(dataset, LatentCacheDataset):
        return [e['tags'] for e in dataset.entries]
    return dataset.captions()


class BatchSource:
    """Endless batches from a BucketSampler over this rank's shard: {'x0' [B', C, H, W], 'prompts',
    'index' [B'], 'original_size' and 'crop' [B', 2] (SDXL size conditioning), 'skipped'}. Unreadable images are dropped (B' ≤ B) and counted; an all-unreadable batch is
    replaced by the next one, so every rank always computes a loss."""

    def __init__(self, dataset, sampler: BucketSampler, seed: int, threads: int = 0):
        self.dataset, self.sampler, self.seed, self.threads = dataset, sampler, seed, threads
        self.n_skipped = 0
        self._it: Optional[Iterator] = None

    def _batches(self) -> Iterator:
        if len(self.sampler) == 0:
            raise ValueError(f'dataset too small: no batch of {self.sampler.batch_size} per rank '
                             f'({self.sampler.world_size} ranks)')
        while True:
            epoch = self.sampler.epoch
            for wh, indices in self.sampler.batches():
                yield epoch, wh, indices

    def _load_images(self, epoch: int, wh: tuple[int, int], indices: list[int]) -> dict:
        def load(i):
            g = torch.Generator().manual_seed(mix_seed(self.seed, epoch, i))
            return self.dataset.load(i, *wh, generator=g)
        if self.threads > 1:
            from concurrent.futures import ThreadPoolExecutor
            with ThreadPoolExecutor(self.threads) as ex:
                items = list(ex.map(load, indices))
        else:
            items = [load(i) for i in indices]
        b = collate_images(items)
        return {'x0': b['image'], 'tags': b['tags'], 'index': b['index'], 'skipped': b['skipped'],
                'original_size': b['original_size'], 'crop': b['crop']}

    def _load_latents(self, epoch: int, indices: list[int]) -> dict:
        g = torch.Generator().manual_seed(mix_seed(self.seed, epoch, *indices))
        b = collate_latents([self.dataset[i] for i in indices], g)
        return {'x0': b['latent'].float(), 'tags': b['tags'], 'index': b['index'], 'skipped': 0,
                'original_size': b['original_size'], 'crop': b['crop']}

    def next(self) -> dict:
        if self._it is None:
            self._it = self._batches()
        skipped = 0
        while True:
            epoch, wh, indices = next(self._it)
            b = (self._load_latents(epoch, indices) if isinstance(self.dataset, LatentCacheDataset)
                 else self._load_images(epoch, wh, indices))
            skipped += b['skipped']
            if len(b['x0']):
                break
            if skipped >= max(1, len(self.dataset)):             # a whole epoch's worth: nothing decodes
                raise ValueError(f'none of the last {skipped} images could be decoded; check the dataset files')
        self.n_skipped += skipped
        b['prompts'] = [', '.join(t) for t in b.pop('tags')]
        return dict(b, skipped=skipped)

    def state_dict(self) -> dict:
        return {'sampler': self.sampler.state_dict(), 'n_skipped': self.n_skipped}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state['sampler'])
        self.n_skipped, self._it = state['n_skipped'], None
