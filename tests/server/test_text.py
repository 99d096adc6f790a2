"""Splitting text into speakable pieces, and buffering streamed text until sentences end."""

from orpheus_tts.text import SentenceBuffer, split_for_speech


def test_sentences_are_packed_into_pieces_up_to_the_limit():
    text = "One. Two two. Three three three! Four?"
    assert split_for_speech(text, 14) == ["One. Two two.", "Three three", "three! Four?"]
    assert split_for_speech(text, 100) == [text]


def test_every_word_survives_splitting_in_order():
    text = ("A very long sentence, with clauses; and more clauses: that goes on and on without a full stop "
            "until it finally ends. Then a short one. ") * 5
    for limit in (20, 45, 80, 200):
        pieces = split_for_speech(text, limit)
        assert all(len(p) <= limit for p in pieces)
        assert " ".join(pieces).split() == text.split()


def test_a_word_longer_than_the_limit_is_cut_rather_than_lost():
    pieces = split_for_speech("short " + "x" * 25, 10)
    assert "".join(pieces).replace(" ", "") == "short" + "x" * 25
    assert all(len(p) <= 10 for p in pieces)


def test_buffer_releases_whole_sentences_and_keeps_the_rest():
    buf = SentenceBuffer(max_chars=200)
    assert buf.add("Hello the") == []
    assert buf.add("re.") == []  # no space after the stop yet: it may be "3.5" or "e.g."
    assert buf.add(" How are you? I am") == ["Hello there. How are you?"]
    assert buf.add(" fine", final=True) == ["I am fine"]


def test_buffer_releases_text_without_punctuation_once_it_is_too_long():
    buf = SentenceBuffer(max_chars=20)
    out = buf.add("words without any stop at all keep coming")
    assert out and all(len(p) <= 20 for p in out)
