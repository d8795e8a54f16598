"""Tests for kdiff_ztsnr.text: real CLIP BPE, lossless chunking, emphasis, chunked encoding (report §4.2)."""

import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from kdiff_ztsnr import text as T

BOS, EOS = 49406, 49407


def tiny_config(hidden: int = 32, projection: int = 16) -> CLIPTextConfig:
    return CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                          num_attention_heads=2, max_position_embeddings=77, projection_dim=projection,
                          bos_token_id=BOS, eos_token_id=EOS, pad_token_id=EOS)


@pytest.fixture(scope='module')
def tok():
    return T.get_tokenizer()


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


# --- tokenizer


def test_tokenizer_matches_clip_simple_tokenizer(tok):
    from clip.simple_tokenizer import SimpleTokenizer
    st = SimpleTokenizer()
    assert isinstance(tok, CLIPTokenizer) and len(tok) == 49408
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (BOS, EOS, EOS)
    assert plain_ids(tok, 'a photo of a cat') == [320, 1125, 539, 320, 2368] == st.encode('a photo of a cat')
    for s in ['1girl, solo, long hair, masterpiece', 'artist:afrobull, @_@, ;) rating:explicit',
              'Café naïve ümlaut 日本語', 'best quality, amazing quality, very aesthetic, absurdres']:
        assert plain_ids(tok, s) == st.encode(s)
    assert tok('a cat')['input_ids'] == [BOS, 320, 2368, EOS]
    assert T.get_tokenizer() is tok  # built once


def test_tokenizer_folder_round_trip(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    loaded = T.get_tokenizer(tmp_path)
    assert plain_ids(loaded, '1girl, {solo}, long hair') == plain_ids(tok, '1girl, {solo}, long hair')


# --- emphasis


def test_emphasis_weights_exact():
    assert T.parse_emphasis('{{x}}') == [('x', 1.05 * 1.05)]
    assert T.parse_emphasis('{{x}}')[0][1] == 1.05 ** 2
    assert T.parse_emphasis('[x]') == [('x', 1 / 1.05)]
    assert T.parse_emphasis('(x:1.2)') == [('x', 1.2)]
    assert T.parse_emphasis('(x)') == [('x', 1.1)]
    assert T.parse_emphasis('((x))') == [('x', 1.1 * 1.1)]
    assert T.parse_emphasis('{(x:1.2)}') == [('x', 1.2 * 1.05)]
    assert T.parse_emphasis('a {b} c') == [('a ', 1.), ('b', 1.05), (' c', 1.)]
    assert T.parse_emphasis('(x:0.5), y') == [('x', 0.5), (', y', 1.)]
    assert T.parse_emphasis('') == []


def test_emphasis_escapes_and_literals():
    assert T.parse_emphasis(r'\(a\) \{b\} \[c\] \\ d') == [(r'(a) {b} [c] \ d', 1.)]
    assert T.parse_emphasis('artist:name, 1girl') == [('artist:name, 1girl', 1.)]
    assert T.parse_emphasis('(a:b)') == [('a:b', 1.1)]  # not a number: plain (…) emphasis


def test_emphasis_unbalanced_does_not_crash():
    assert T.parse_emphasis('a) b] c}') == [('a) b] c}', 1.)]  # stray closers are literal
    assert T.parse_emphasis('a {b c') == [('a ', 1.), ('b c', 1.05)]  # unclosed: closed at the end
    assert T.parse_emphasis('{a (b} c)') == [('a ', 1.05), ('b} c', 1.05 * 1.1)]  # mismatched closer literal
    assert T.parse_emphasis('((((') == []


# --- chunking


def test_chunk_shapes_and_special_tokens(tok, words):
    prompt = ' '.join(words[:200])
    c = T.tokenize_chunks(prompt, tok)
    assert c.ids.shape == c.weights.shape == (3, 77) and c.ids.dtype == torch.long
    assert c.lengths.tolist() == [75, 75, 50] and c.n_chunks == 3 and c.n_tokens == 200
    assert (c.ids[:, 0] == BOS).all()
    assert (c.ids[:2, 76] == EOS).all()
    assert c.ids[2, 51] == EOS and (c.ids[2, 52:] == EOS).all()  # padded with EOS
    assert not (c.ids[:, 1:c.lengths.min() + 1] >= BOS).any()  # no special token inside a chunk
    assert (c.weights == 1).all() and c.dropped == ''


def test_no_token_lost_at_chunk_boundaries(tok, words):
    prompt = ' '.join(words[:200])
    ids = plain_ids(tok, prompt)
    assert len(ids) == 200 and len(set(ids)) == 200
    c = T.tokenize_chunks(prompt, tok)
    assert c.tokens() == ids
    # the positions the NAI service loses (FAQ: 74-76, 149-151) are all present, in order
    assert c.ids[0, 1:76].tolist() == ids[:75]
    assert c.ids[1, 1:76].tolist() == ids[75:150]
    assert c.ids[2, 1:51].tolist() == ids[150:200]


@pytest.mark.parametrize('n, lengths', [(0, [0]), (1, [1]), (75, [75]), (76, [75, 1]), (150, [75, 75]),
                                        (225, [75, 75, 75])])
def test_chunk_counts_at_edges(tok, words, n, lengths):
    c = T.tokenize_chunks(' '.join(words[:n]), tok)
    assert c.lengths.tolist() == lengths and c.tokens() == plain_ids(tok, ' '.join(words[:n]))
    assert c.ids.shape == (len(lengths), 77)
    if n == 0:
        assert c.ids[0, :3].tolist() == [BOS, EOS, EOS]


def test_comma_break_keeps_every_token(tok, words):
    prompt = ', '.join(words[:100])  # word , word , …  (199 tokens)
    ids = plain_ids(tok, prompt)
    comma = tok.convert_tokens_to_ids(',</w>')
    c = T.tokenize_chunks(prompt, tok, comma_window=20)
    assert c.tokens() == ids
    for row, n in zip(c.ids[:-1], c.lengths[:-1]):  # every broken chunk ends on a comma
        assert row[n] == comma and row[n + 1] == EOS
    assert c.lengths.tolist()[:2] == [74, 74]  # 75th token is a word: break after the comma before it
    assert T.tokenize_chunks(prompt, tok).lengths.tolist() == [75, 75, 49]  # off by default


def test_too_long_raises_with_dropped_text(tok):
    prompt = ' '.join(['cat'] * 220 + ['dog'] * 10)
    with pytest.raises(ValueError, match="230 tokens.*max_chunks=3.*'dog dog dog dog dog'"):
        T.tokenize_chunks(prompt, tok)
    with pytest.warns(UserWarning, match="dropped text: 'dog dog dog dog dog'"):
        c = T.tokenize_chunks(prompt, tok, truncate=True)
    assert c.dropped == 'dog dog dog dog dog'
    assert c.n_tokens == 225 and c.tokens() == plain_ids(tok, prompt)[:225]
    assert T.tokenize_chunks(prompt, tok, max_chunks=None).lengths.tolist() == [75, 75, 75, 5]
    assert T.tokenize_chunks(prompt, tok, max_chunks=4).n_tokens == 230


def test_token_weights_and_pad_id(tok):
    c = T.tokenize_chunks('{{cat}} dog [bird] (fish:1.3)', tok, pad_id=0)
    assert c.tokens() == plain_ids(tok, 'cat dog bird fish')
    assert c.weights[0, :6].tolist() == pytest.approx([1., 1.05 ** 2, 1., 1 / 1.05, 1.3, 1.])
    assert c.weights.dtype == torch.float32 and (c.weights[0, 5:] == 1).all()
    assert c.ids[0, 5] == EOS and (c.ids[0, 6:] == 0).all()
    assert T.tokenize_chunks('(fish:1.3)', tok, emphasis=False).tokens() == plain_ids(tok, '(fish:1.3)')


def test_pad_chunks(tok):
    c = T.pad_chunks(T.tokenize_chunks('a cat', tok, pad_id=0), 3)
    assert c.ids.shape == (3, 77) and c.n_chunks == 1 and c.lengths.tolist() == [2, 0, 0]
    assert c.ids[1:, :2].tolist() == [[BOS, EOS]] * 2 and (c.ids[1:, 2:] == 0).all()
    assert (c.weights[1:] == 1).all() and c.tokens() == plain_ids(tok, 'a cat')


# --- encoding


@pytest.mark.parametrize('name', ['clip_l', 'clip_g'])
def test_context_and_pooled_match_per_chunk_runs(request, tok, words, name):
    model = request.getfixturevalue(name)
    c = T.tokenize_chunks(' '.join(words[:160]), tok)
    with torch.no_grad():
        context, pooled = T.encode_chunks(model, c)
    h, p = by_hand(model, c)
    d = model.config.hidden_size
    assert context.shape == (1, 3 * 77, d) and pooled.shape == (1, p.shape[-1])
    torch.testing.assert_close(context, h)  # concat of penultimate states along the sequence
    torch.testing.assert_close(pooled, p.mean(0, keepdim=True))  # mean of all chunks' pooled, not the first
    assert not torch.allclose(pooled[0], p[0])


def test_pooled_is_eos_state_and_final_norm_layer(clip_l, tok):
    c = T.tokenize_chunks('a cat ' * 50, tok)
    with torch.no_grad():
        h, p = T.encode_ids(clip_l, c.ids, layer=-1, final_norm=True)
        last = clip_l(input_ids=c.ids).last_hidden_state
    torch.testing.assert_close(h, last)  # layer -1 + final norm == last_hidden_state
    eos = c.lengths + 1
    torch.testing.assert_close(p, last[torch.arange(len(eos)), eos])  # pooled at the first EOS, not padding
    h2, _ = T.encode_ids(clip_l, c.ids)
    assert not torch.allclose(h2, last)  # the default is penultimate, without final norm


def test_final_norm_with_projection_model(clip_g, tok):
    ids = T.tokenize_chunks('a cat', tok).ids
    with torch.no_grad():
        h, p = T.encode_ids(clip_g, ids, layer=-1, final_norm=True)
        out = clip_g(input_ids=ids)
    torch.testing.assert_close(h, out.last_hidden_state)
    torch.testing.assert_close(p, clip_g.text_projection(out.last_hidden_state[:, 3]))  # BOS a cat EOS


def test_weight_one_matches_no_emphasis(clip_l, tok):
    a = T.tokenize_chunks('(a cat:1.0), {[dog]}, bird', tok)
    b = T.tokenize_chunks('a cat, dog, bird', tok, emphasis=False)
    assert torch.equal(a.ids, b.ids) and (a.weights[0, :7] == 1).all()
    with torch.no_grad():
        ca, pa = T.encode_chunks(clip_l, a)
        cb, pb = T.encode_chunks(clip_l, b)
    assert torch.equal(ca, cb) and torch.equal(pa, pb)


def test_emphasis_scales_tokens_and_keeps_chunk_mean(clip_l, tok):
    w_chunks = T.tokenize_chunks('{{cat}} dog [bird]', tok)
    plain = T.tokenize_chunks('cat dog bird', tok)
    with torch.no_grad():
        cw, pw = T.encode_chunks(clip_l, w_chunks)
        cp, pp = T.encode_chunks(clip_l, plain)
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
        context, pooled = T.encode_prompts(clip_g, [long, short], tok)
        c_long, p_long = T.encode_chunks(clip_g, T.tokenize_chunks(long, tok))
        c_short, p_short = T.encode_chunks(clip_g, T.tokenize_chunks(short, tok))
        c_empty, _ = T.encode_chunks(clip_g, T.tokenize_chunks('', tok))
    assert context.shape == (2, 3 * 77, 48) and pooled.shape == (2, 24)
    torch.testing.assert_close(context[:1], c_long)
    torch.testing.assert_close(context[1:, :77], c_short)
    torch.testing.assert_close(context[1, 77:154], c_empty[0])  # padding chunks are empty prompts
    torch.testing.assert_close(context[1, 154:], c_empty[0])
    torch.testing.assert_close(pooled, torch.cat([p_long, p_short]))  # padding does not enter pooled


def test_sdxl_dual_encoder(clip_l, clip_g, tok, words):
    prompts = [' '.join(words[:100]), '{cat}']
    with torch.no_grad():
        context, pooled = T.encode_prompts([clip_l, clip_g], prompts, tok)
        cl, _ = T.encode_chunks(clip_l, [T.tokenize_chunks(p, tok) for p in prompts])
        cg, pg = T.encode_chunks(clip_g, [T.tokenize_chunks(p, tok) for p in prompts])
    assert context.shape == (2, 2 * 77, 32 + 48) and pooled.shape == (2, 24)
    torch.testing.assert_close(context, torch.cat([cl, cg], -1))
    torch.testing.assert_close(pooled, pg)  # pooled from the projection (bigG) model


def test_text_conditioner_and_from_pretrained(clip_l, clip_g, tok, tmp_path):
    prompts = ['1girl, {solo}, long hair', '']
    cond = T.TextConditioner([clip_l, clip_g])
    with torch.no_grad():
        out = cond(prompts)
        ref = T.encode_prompts([clip_l, clip_g], prompts, tok)
    assert set(out) == {'context', 'pooled'}
    torch.testing.assert_close(out['context'], ref[0])
    torch.testing.assert_close(out['pooled'], ref[1])
    # diffusers SDXL layout; tokenizer_2 pads with "!" (id 0) like SDXL's
    clip_l.save_pretrained(tmp_path / 'text_encoder')
    clip_g.save_pretrained(tmp_path / 'text_encoder_2')
    tok.save_pretrained(tmp_path / 'tokenizer')
    vocab, merges = T.clip_vocab_and_merges()
    CLIPTokenizer(vocab=vocab, merges=merges, pad_token='!').save_pretrained(tmp_path / 'tokenizer_2')
    loaded = T.TextConditioner.from_pretrained(tmp_path)
    assert loaded.tokenizers[1].pad_token_id == 0
    assert isinstance(loaded.encoders[1], CLIPTextModelWithProjection)
    with torch.no_grad():
        out2 = loaded(prompts)
        ref2 = T.encode_prompts([clip_l, clip_g], prompts, [tok, loaded.tokenizers[1]])
    torch.testing.assert_close(out2['context'], ref2[0])
    torch.testing.assert_close(out2['pooled'], ref2[1])
    torch.testing.assert_close(out2['context'][..., :32], out['context'][..., :32])  # same tokenizer for CLIP-L
