"""Plumbing shared by the text tests: CLIP's special token ids as constants (not read from the package), a tiny
CLIP text config, the tokenizer's plain ids and a chunk-by-chunk reference run."""

import torch
from transformers import CLIPTextConfig, CLIPTextModelWithProjection

BOS, EOS = 49406, 49407


def tiny_config(hidden: int = 32, projection: int = 16) -> CLIPTextConfig:
    return CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                          num_attention_heads=2, max_position_embeddings=77, projection_dim=projection,
                          bos_token_id=BOS, eos_token_id=EOS, pad_token_id=EOS)


def plain_ids(tok, prompt):
    return tok(prompt, add_special_tokens=False, verbose=False)['input_ids']


def by_hand(model, chunks, layer=-2):
    """Run the model on each chunk separately: (hidden states of every chunk, pooled of every chunk)."""
    hs, ps = [], []
    with torch.no_grad():
        for row in chunks.ids:
            out = model(input_ids=row[None], output_hidden_states=True)
            hs.append(out.hidden_states[layer])
            ps.append(out.text_embeds if isinstance(model, CLIPTextModelWithProjection) else out.pooler_output)
    return torch.cat(hs, 1), torch.cat(ps)
