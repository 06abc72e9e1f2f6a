import socket

import pytest

from tinygpt.data.tokenizer import Tokenizer, _encoding

TEXTS = ["Once upon a time, there was a little dog.", "Café crème brûlée à la française",
         "小猫在花园里玩。日本語のテキスト", "Emoji 🦄🎉👩‍👩‍👧 and ✨ sparkles"]


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network disabled in this test")
    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_encodes_like_gpt2_without_network(no_network):
    _encoding.cache_clear()  # really build it from the packaged file, with sockets refused
    tok = Tokenizer()
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode(" the cat") == [262, 3797]
    assert tok.eot_id == 50256 and tok.enc.n_vocab == 50257


@pytest.mark.parametrize("text", TEXTS)
def test_roundtrip(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text)) == text


@pytest.mark.parametrize("text", TEXTS)
def test_streaming_never_emits_broken_characters(tokenizer, text):
    stream = tokenizer.stream_decoder()
    pieces = [stream.push(i) for i in tokenizer.encode(text)] + [stream.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


def test_endoftext_is_text_unless_allowed(tokenizer):
    assert tokenizer.eot_id not in tokenizer.encode("a <|endoftext|> b")
    assert tokenizer.encode("a<|endoftext|>", allow_eot=True)[-1] == tokenizer.eot_id


def test_corrupt_ranks_file_is_refused(tmp_path, monkeypatch):
    import tinygpt.data.tokenizer as mod
    bad = tmp_path / "gpt2.tiktoken"
    bad.write_bytes(mod.RANKS_PATH.read_bytes()[:-10])
    monkeypatch.setattr(mod, "RANKS_PATH", bad)
    _encoding.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="corrupt"):
            Tokenizer()
    finally:
        monkeypatch.undo()
        _encoding.cache_clear()
