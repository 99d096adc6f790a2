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


def test_chinese_and_japanese_sentences_end_at_their_stops_with_no_space_between():
    chinese = "今天天气很好。我们去公园散步吧！你觉得怎么样？圆周率是3.14。"
    assert split_for_speech(chinese, 12) == ["今天天气很好。", "我们去公园散步吧！", "你觉得怎么样？", "圆周率是3.14。"]
    assert split_for_speech(chinese, 17) == ["今天天气很好。我们去公园散步吧！", "你觉得怎么样？圆周率是3.14。"]
    japanese = "これはペンです．あれは本です．「いい天気ですね。」と彼は言った。"
    assert split_for_speech(japanese, 10) == ["これはペンです．", "あれは本です．", "「いい天気ですね。」", "と彼は言った。"]
    assert split_for_speech("你好!我很好?谢谢。", 5) == ["你好!", "我很好?", "谢谢。"]  # ASCII stops before CJK text


def test_hindi_sentences_end_at_the_danda_and_double_danda():
    text = "मेरा नाम ऋतिका है। मैं दिल्ली में रहती हूँ।आप कैसे हैं? धन्यवाद॥"
    assert split_for_speech(text, 24) == ["मेरा नाम ऋतिका है।", "मैं दिल्ली में रहती हूँ।", "आप कैसे हैं? धन्यवाद॥"]
    assert split_for_speech(text, 200) == [text]


def test_a_long_chinese_sentence_splits_at_its_commas_and_keeps_every_character():
    text = "我们今天去了公园，看到了很多美丽的花、几棵大树和一个小湖；湖边有一些小鸟在树上唱歌，然后我们就回家了" * 3
    for limit in (8, 15, 40):
        pieces = split_for_speech(text, limit)
        assert "".join(pieces) == text and all(len(p) <= limit for p in pieces)  # no space added, nothing lost
    assert split_for_speech(text, 15)[:3] == ["我们今天去了公园，", "看到了很多美丽的花、", "几棵大树和一个小湖；"]


def test_korean_sentences_end_at_latin_stops_before_spaces():
    text = "안녕하세요. 저는 유나입니다. 만나서 반갑습니다!"
    assert split_for_speech(text, 12) == ["안녕하세요.", "저는 유나입니다.", "만나서 반갑습니다!"]


def test_buffer_releases_cjk_and_devanagari_sentences_without_waiting_for_a_space():
    buf = SentenceBuffer(max_chars=200)
    assert buf.add("今天天气") == []
    assert buf.add("很好。我们去") == ["今天天气很好。"]
    assert buf.add("公园。") == ["我们去公园。"]
    assert buf.add("मेरा नाम ऋतिका है।") == ["मेरा नाम ऋतिका है।"]
    assert buf.add("好的", final=True) == ["好的"]


def test_buffer_cuts_long_chinese_text_without_stops_at_its_last_comma():
    buf = SentenceBuffer(max_chars=12)
    assert buf.add("我们今天去了公园，看到了很多花，还有") == ["我们今天去了公园，"]
    assert buf.add("一些小鸟", final=True) == ["看到了很多花，", "还有一些小鸟"]
