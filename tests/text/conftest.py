"""Fixtures of the text tests: the built-in CLIP tokenizer, two tiny random CLIP text encoders (CLIP-L-like and a
projection model like bigG) and distinct single-token words."""

import pytest
import torch
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from kdiff_ztsnr.text.tokens import get_tokenizer
from tests.text.tiny_clip import tiny_config


@pytest.fixture(scope='module')
def tok():
    return get_tokenizer()


@pytest.fixture(scope='module')
def clip_l():
    torch.manual_seed(0)
    return CLIPTextModel(tiny_config(32)).eval()


@pytest.fixture(scope='module')
def clip_g():
    torch.manual_seed(1)
    return CLIPTextModelWithProjection(tiny_config(48, 24)).eval()


@pytest.fixture(scope='module')
def words(tok):
    """Distinct ASCII words that are single CLIP tokens."""
    v = tok.get_vocab()
    return sorted(w[:-4] for w in v if w.endswith('</w>') and w[:-4].isalpha() and w[:-4].isascii()
                  and len(w) > 8)[1000:1400]
