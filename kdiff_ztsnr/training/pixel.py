"""The trainer's pixel-space family (``model.type`` 'image_v1' or 'module'): the network of the config, trained on
images as they are, with the config's text conditioner (frozen); the interface `sdxl.SDXLTraining` also has."""

from pathlib import Path
from typing import Optional

from torch import Tensor, nn

from ..files import save_weights
from ..models.registry import build_model
from ..text import build_text


class PixelTraining:
    """Builds the inner network and text conditioner; batches are images in [−1, 1] without extra cond."""

    train_text = False                   # the text encoders stay frozen
    previews = False                     # no preview grids (they need a Pipeline)

    def __init__(self, config: dict):
        self.text = build_text(config['text'])
        self.text_type = config['text']['type']

    def to(self, device) -> 'PixelTraining':
        return self

    def build_inner(self, config: dict, trust_code: bool = False) -> nn.Module:
        """The inner v network of the (text-resolved) config (a 'module' type only with trust_code)."""
        return build_model(config, trust_code)

    def prepare_dataset(self, dataset_config: dict, dataset, out_dir: Path, seed: int, device='cpu'):
        return dataset

    def text_groups(self, opt_config: dict) -> list[dict]:
        return []

    def prepare(self, batch: dict, device) -> tuple[Tensor, dict]:
        return batch['x0'], {}

    def export(self, ckpt: Path, ema: nn.Module, step: int, text: Optional[nn.Module] = None,
               meta: Optional[dict] = None) -> None:
        """Random CLIP encoders (text.type 'clip') are kept beside the model, so the checkpoint samples alone."""
        if self.text_type == 'clip':
            save_weights(self.text, ckpt / 'text.safetensors', meta or {})
