"""kdiff_ztsnr.text.tokens: real CLIP BPE, A1111/NAI emphasis parsing, lossless 75-token chunks (report §4.2)."""

import pytest
import torch
from transformers import CLIPTokenizer

from kdiff_ztsnr.text import tokens as T
from tests.text.tiny_clip import BOS, EOS, plain_ids

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


