"""Sentence-aware splitting of text into pieces the model speaks well.

Orpheus is trained on utterances of a sentence or a few; long text is spoken piece by piece
within one stream. Pieces end at sentence boundaries where possible, then at clause
punctuation, then at spaces; no piece is longer than `max_chars`.
"""

from __future__ import annotations

import re

_SENTENCE_END = re.compile(r"(?<=[.!?…。！？])[\"'”’)\]]*\s+")
_CLAUSE_END = re.compile(r"(?<=[,;:—–])\s+")


def _split_long(text: str, max_chars: int) -> list[str]:
    """Split one over-long sentence at clause punctuation, then at spaces, then hard."""
    pieces: list[str] = []
    for pattern in (_CLAUSE_END, re.compile(r"\s+")):
        parts = [p for p in pattern.split(text) if p]
        if len(parts) > 1:
            for part in parts:
                pieces.extend(_pack([part], max_chars) if len(part) <= max_chars else _split_long(part, max_chars))
            return _pack(pieces, max_chars)
    return [text[i : i + max_chars] for i in range(0, len(text), max_chars)]


def _pack(parts: list[str], max_chars: int) -> list[str]:
    """Join consecutive parts with spaces while they fit in `max_chars`."""
    out: list[str] = []
    for part in parts:
        if out and len(out[-1]) + 1 + len(part) <= max_chars:
            out[-1] = f"{out[-1]} {part}"
        else:
            out.append(part)
    return out


def split_for_speech(text: str, max_chars: int) -> list[str]:
    """Pieces of at most `max_chars`, in order, that together hold every word of `text`."""
    text = " ".join(text.split())
    if not text:
        return []
    sentences: list[str] = []
    for sentence in _SENTENCE_END.split(text):
        sentence = sentence.strip()
        if sentence:
            sentences.extend([sentence] if len(sentence) <= max_chars else _split_long(sentence, max_chars))
    return _pack(sentences, max_chars)


def ends_sentence(text: str) -> bool:
    """True if `text` ends at a sentence boundary (used to decide when streamed text is speakable)."""
    return bool(re.search(r"[.!?…。！？][\"'”’)\]]*\s*$", text))


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
        if not cut and len(self._text) > self.max_chars:
            cut = self._text.rfind(" ", 0, self.max_chars) + 1 or self.max_chars
        ready, self._text = self._text[:cut], self._text[cut:]
        return split_for_speech(ready, self.max_chars)
