"""Tests for star_jax.data.tokenizer."""

import numpy as np
import pytest

from star_jax.data.tokenizer import CharTokenizer

PRINTABLE = "".join(chr(c) for c in range(32, 127))


def test_special_ids_and_vocab_size():
    tok = CharTokenizer()
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)
    assert tok.vocab_size == 100
    assert tok.encode("\n") == [4]
    assert tok.encode(" ~") == [5, 99]  # ' ' is ASCII 32, '~' is 126, the last id
    assert tok.encode("ab", add_bos=True, add_eos=True) == [1, *tok.encode("ab"), 2]


def test_round_trip_all_printable_and_newlines():
    tok = CharTokenizer()
    text = PRINTABLE + "\n" + PRINTABLE[::-1] + "\n\n"
    ids = tok.encode(text)
    assert len(ids) == len(text)
    assert all(4 <= i < tok.vocab_size for i in ids)
    assert len(set(tok.encode(PRINTABLE + "\n"))) == tok.vocab_size - 4
    assert tok.decode(ids) == text
    assert tok.decode(np.asarray(ids, dtype=np.int32)) == text


def test_decode_drops_or_shows_special_ids():
    tok = CharTokenizer()
    ids = [tok.bos_id, *tok.encode("1 2"), tok.eos_id, tok.pad_id, tok.pad_id]
    assert tok.decode(ids) == "1 2"
    assert tok.decode(np.asarray(ids)) == "1 2"
    assert tok.decode(ids, skip_special=False) == "<bos>1 2<eos><pad><pad>"
    with pytest.raises(ValueError, match="id 100"):
        tok.decode([100])
    with pytest.raises(ValueError, match="1-D"):
        tok.decode(np.zeros((2, 2), dtype=np.int32))


def test_out_of_vocabulary_error_names_char_and_index():
    tok = CharTokenizer()
    with pytest.raises(ValueError, match=r"'é' at index 3"):
        tok.encode("caf\u00e9")
    with pytest.raises(ValueError, match=r"'\\t' at index 0"):
        tok.encode("\tx")


def test_encode_batch():
    tok = CharTokenizer()
    assert tok.encode_batch(["a", "bc"], add_eos=True) == [[*tok.encode("a"), 2], [*tok.encode("bc"), 2]]
