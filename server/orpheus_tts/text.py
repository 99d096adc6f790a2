"""Sentence-aware splitting of text into pieces the model speaks well.

Orpheus is trained on utterances of a sentence or a few; long text is spoken piece by piece
within one stream. Pieces end at sentence boundaries where possible, then at clause
punctuation, then at spaces; no piece is longer than `max_chars`.

Scripts differ in how a sentence ends. Latin `.!?…` end one only before a space (else "3.5"
and "e.g." would), or before Chinese, Japanese or Korean text that follows with no space. The
CJK stops `。！？．｡` and the Devanagari danda `।` and double danda `॥` end one wherever they
stand: Chinese and Japanese put no space between sentences, and neither mark occurs inside a
number. The CJK clause marks `，、；：` split over-long sentences the same way, space or not.
Pieces keep the text between them as it was (a space, or none), so nothing is added to
Chinese text and nothing is lost from any.
"""

from __future__ import annotations

import re

_CLOSERS = "\"'”’)\\]」』）》】〕〉〗"  # quotes and brackets that close after a sentence's stop
_STOPS = ".!?…"  # end a sentence before a space, or before CJK text
_WIDE_STOPS = "。！？．｡।॥"  # end a sentence wherever they stand
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uff01-\uff5e"  # kana, ideographs, Hangul, full-width

_SENTENCE_END = re.compile(rf"[{_WIDE_STOPS}][{_STOPS}{_WIDE_STOPS}]*[{_CLOSERS}]*\s*"
                           rf"|[{_STOPS}]+[{_CLOSERS}]*(?:\s+|(?=[{_CJK}]))")
_CLAUSE_END = re.compile(r"[,;:—–]\s+|[，、；：]\s*")
_SPACE = re.compile(r"\s+")
_ENDS_SENTENCE = re.compile(rf"[{_STOPS}{_WIDE_STOPS}][{_CLOSERS}]*\s*$")


def _cut(text: str, boundary: re.Pattern) -> list[str]:
    """`text` in consecutive slices, each ending where `boundary` matches (the match stays with
    the slice before it, spaces included), so the slices joined are `text` again."""
    cuts = [m.end() for m in boundary.finditer(text) if 0 < m.end() < len(text)]
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)]) if a < b]


def _pack(parts: list[str], max_chars: int) -> list[str]:
    """Join consecutive parts while they fit in `max_chars` (their outer spaces not counted)."""
    out: list[str] = []
    for part in parts:
        if out and len((out[-1] + part).strip()) <= max_chars:
            out[-1] += part
        else:
            out.append(part)
    return out


def _split_long(text: str, max_chars: int) -> list[str]:
    """Split one over-long sentence at clause punctuation, then at spaces, then hard."""
    for boundary in (_CLAUSE_END, _SPACE):
        parts = _cut(text, boundary)
        if len(parts) > 1:
            return _pack([piece for part in parts for piece in
                          ([part] if len(part.strip()) <= max_chars else _split_long(part, max_chars))], max_chars)
    return [text[i : i + max_chars] for i in range(0, len(text), max_chars)]


def split_for_speech(text: str, max_chars: int) -> list[str]:
    """Pieces of at most `max_chars`, in order, that together hold every word of `text`."""
    text = " ".join(text.split())
    pieces: list[str] = []
    for sentence in _cut(text, _SENTENCE_END):
        pieces.extend([sentence] if len(sentence.strip()) <= max_chars else _split_long(sentence, max_chars))
    return [piece.strip() for piece in _pack(pieces, max_chars) if piece.strip()]


def ends_sentence(text: str) -> bool:
    """True if `text` ends at a sentence boundary (used to decide when streamed text is speakable)."""
    return bool(_ENDS_SENTENCE.search(text))


class SentenceBuffer:
    """Holds streamed text until a whole sentence (or `max_chars` of text) is ready to speak."""

    def __init__(self, max_chars: int):
        self.max_chars = max_chars
        self._text = ""

    def add(self, text: str, final: bool = False) -> list[str]:
        """Append `text`; return the pieces now ready (everything left, when `final`)."""
        self._text += text
        if final:
            ready, self._text = self._text, ""
            return split_for_speech(ready, self.max_chars)
        cut = max((m.end() for m in _SENTENCE_END.finditer(self._text)), default=0)
        if not cut and len(self._text) > self.max_chars:  # no stop yet: the last clause mark or space, else hard
            head = self._text[: self.max_chars]
            cut = max((m.end() for p in (_CLAUSE_END, _SPACE) for m in p.finditer(head)), default=0) or self.max_chars
        ready, self._text = self._text[:cut], self._text[cut:]
        return split_for_speech(ready, self.max_chars)
