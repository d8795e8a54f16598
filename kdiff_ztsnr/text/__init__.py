"""CLIP text conditioning (report §4.2): tokenisation with emphasis and lossless 75-token chunks (`tokens`),
encoding with penultimate states and chunk-mean pooling (`encode`), conditioners from a config and a prompt
cache (`build`)."""

from .build import CachedText, build_text, build_text_encoders, text_dims
from .encode import TextConditioner, apply_emphasis, encode_chunks, encode_ids, encode_prompts
from .tokens import (A1111_PAREN, BOS_ID, CHUNK_LEN, EOS_ID, MAX_CHUNKS, NAI_BRACE, Chunks, chunk_bounds,
                     clip_vocab_and_merges, get_tokenizer, pad_chunks, parse_emphasis, tokenize_chunks,
                     tokenize_weighted)
