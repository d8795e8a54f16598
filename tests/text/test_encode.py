"""kdiff_ztsnr.text.encode: chunked CLIP encoding (penultimate states concatenated, pooled = mean over a prompt's
own chunks), emphasis that keeps each chunk's mean, and the dual-encoder SDXL layout (report §4.2)."""

import pytest
import torch

from kdiff_ztsnr.text import encode as E
from kdiff_ztsnr.text.tokens import tokenize_chunks
from tests.text.tiny_clip import by_hand


@pytest.mark.parametrize('name', ['clip_l', 'clip_g'])
def test_context_and_pooled_match_per_chunk_runs(request, tok, words, name):
    model = request.getfixturevalue(name)
    c = tokenize_chunks(' '.join(words[:160]), tok)
    with torch.no_grad():
        context, pooled = E.encode_chunks(model, c)
    h, p = by_hand(model, c)
    d = model.config.hidden_size
    assert context.shape == (1, 3 * 77, d) and pooled.shape == (1, p.shape[-1])
    torch.testing.assert_close(context, h)  # concat of penultimate states along the sequence
    torch.testing.assert_close(pooled, p.mean(0, keepdim=True))  # mean of all chunks' pooled, not the first
    assert not torch.allclose(pooled[0], p[0])


def test_pooled_is_eos_state_and_final_norm_layer(clip_l, tok):
    c = tokenize_chunks('a cat ' * 50, tok)
    with torch.no_grad():
        h, p = E.encode_ids(clip_l, c.ids, layer=-1, final_norm=True)
        last = clip_l(input_ids=c.ids).last_hidden_state
    torch.testing.assert_close(h, last)  # layer -1 + final norm == last_hidden_state
    eos = c.lengths + 1
    torch.testing.assert_close(p, last[torch.arange(len(eos)), eos])  # pooled at the first EOS, not padding
    h2, _ = E.encode_ids(clip_l, c.ids)
    assert not torch.allclose(h2, last)  # the default is penultimate, without final norm


def test_final_norm_with_projection_model(clip_g, tok):
    ids = tokenize_chunks('a cat', tok).ids
    with torch.no_grad():
        h, p = E.encode_ids(clip_g, ids, layer=-1, final_norm=True)
        out = clip_g(input_ids=ids)
    torch.testing.assert_close(h, out.last_hidden_state)
    torch.testing.assert_close(p, clip_g.text_projection(out.last_hidden_state[:, 3]))  # BOS a cat EOS


def test_weight_one_matches_no_emphasis(clip_l, tok):
    a = tokenize_chunks('(a cat:1.0), {[dog]}, bird', tok)
    b = tokenize_chunks('a cat, dog, bird', tok, emphasis=False)
    assert torch.equal(a.ids, b.ids) and (a.weights[0, :7] == 1).all()
    with torch.no_grad():
        ca, pa = E.encode_chunks(clip_l, a)
        cb, pb = E.encode_chunks(clip_l, b)
    assert torch.equal(ca, cb) and torch.equal(pa, pb)


def test_emphasis_scales_tokens_and_keeps_chunk_mean(clip_l, tok):
    w_chunks = tokenize_chunks('{{cat}} dog [bird]', tok)
    plain = tokenize_chunks('cat dog bird', tok)
    with torch.no_grad():
        cw, pw = E.encode_chunks(clip_l, w_chunks)
        cp, pp = E.encode_chunks(clip_l, plain)
    w = w_chunks.weights[0]
    expected = cp[0] * w[:, None]
    expected = expected * cp.mean() / expected.mean()
    torch.testing.assert_close(cw[0], expected)
    torch.testing.assert_close(cw.mean(), cp.mean())
    ratio = cw[0] / cp[0]  # per-token scale ∝ weight
    torch.testing.assert_close(ratio[2] / ratio[1], torch.full_like(ratio[2], 1.05 ** -2))
    torch.testing.assert_close(ratio[3] / ratio[1], torch.full_like(ratio[3], 1.05 ** -3))
    assert torch.equal(pw, pp)  # pooled is not weighted


def test_batch_pads_with_empty_chunks(clip_g, tok, words):
    long, short = ' '.join(words[:160]), 'a cat'
    with torch.no_grad():
        context, pooled = E.encode_prompts(clip_g, [long, short], tok)
        c_long, p_long = E.encode_chunks(clip_g, tokenize_chunks(long, tok))
        c_short, p_short = E.encode_chunks(clip_g, tokenize_chunks(short, tok))
        c_empty, _ = E.encode_chunks(clip_g, tokenize_chunks('', tok))
    assert context.shape == (2, 3 * 77, 48) and pooled.shape == (2, 24)
    torch.testing.assert_close(context[:1], c_long)
    torch.testing.assert_close(context[1:, :77], c_short)
    torch.testing.assert_close(context[1, 77:154], c_empty[0])  # padding chunks are empty prompts
    torch.testing.assert_close(context[1, 154:], c_empty[0])
    torch.testing.assert_close(pooled, torch.cat([p_long, p_short]))  # padding does not enter pooled


def test_sdxl_dual_encoder(clip_l, clip_g, tok, words):
    prompts = [' '.join(words[:100]), '{cat}']
    with torch.no_grad():
        context, pooled = E.encode_prompts([clip_l, clip_g], prompts, tok)
        cl, _ = E.encode_chunks(clip_l, [tokenize_chunks(p, tok) for p in prompts])
        cg, pg = E.encode_chunks(clip_g, [tokenize_chunks(p, tok) for p in prompts])
    assert context.shape == (2, 2 * 77, 32 + 48) and pooled.shape == (2, 24)
    torch.testing.assert_close(context, torch.cat([cl, cg], -1))
    torch.testing.assert_close(pooled, pg)  # pooled from the projection (bigG) model


