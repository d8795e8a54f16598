"""The kdiff_ztsnr.text package's API: the names it re-exports are its modules' own, and a conditioner built from
them (and from an SDXL diffusers folder) encodes as the functions do."""

import torch
from transformers import CLIPTextModelWithProjection, CLIPTokenizer

from kdiff_ztsnr import text as T
from kdiff_ztsnr.text import build, encode, tokens


def test_names_are_the_modules_objects():
    modules = {'build': build, 'encode': encode, 'tokens': tokens}
    exported = {n for n in vars(T) if not n.startswith('_') and n not in modules}
    assert {'TextConditioner', 'build_text', 'tokenize_chunks', 'parse_emphasis', 'encode_prompts',
            'CHUNK_LEN', 'MAX_CHUNKS'} <= exported
    for name in exported:
        owners = [m for m in modules.values() if getattr(T, name) is getattr(m, name, object())]
        assert owners, name
    assert T.CHUNK_LEN == 75 and (T.BOS_ID, T.EOS_ID) == (49406, 49407)


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
