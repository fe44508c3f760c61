"""The byte-level tokenizer: BOS first, UTF-8 bytes, special tokens dropped on decode."""

from runtime.tokenizer import BOS, EOS, VOCAB_SIZE, count_tokens, decode, encode


def test_ids_and_vocabulary():
    assert (BOS, EOS, VOCAB_SIZE) == (256, 257, 258)
    assert encode("hi") == [256, 104, 105]
    assert encode("") == [BOS]
    assert encode("é") == [BOS, 0xC3, 0xA9]  # two UTF-8 bytes, two tokens


def test_round_trip_and_specials_dropped():
    text = "Grüße, 世界! 🚀"
    ids = encode(text)
    assert len(ids) == 1 + len(text.encode("utf-8")) == count_tokens(text)
    assert decode(ids) == text
    assert decode([BOS, 104, EOS, 105, EOS]) == "hi"


def test_invalid_utf8_is_replaced_not_raised():
    assert decode([0xFF, 104]) == "\ufffdh"
    assert decode([0xE4, 0xB8]) == "\ufffd"  # a truncated 3-byte character
