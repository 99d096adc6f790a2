"""Text into pieces: each piece is one Orpheus prompt whose speech budget fits a KV slot.

Long text is spoken as a sequence of prompts in the same slot (the model was trained on short
utterances and a slot holds `max_context_tokens`); the audio of all pieces is one stream.
"""

from __future__ import annotations

from tokenizers import Tokenizer

from orpheus_tts import orpheus
from orpheus_tts.engine.session import Piece
from orpheus_tts.errors import RequestError
from orpheus_tts.text import split_for_speech

_SHRINK = 0.8  # when a prompt does not fit beside its budget, try pieces this much shorter
_MIN_CHARS = 8


class PieceMaker:
    def __init__(self, tokenizer: Tokenizer, max_context_tokens: int):
        self.tokenizer = tokenizer
        self.max_context_tokens = max_context_tokens

    def make(self, voice: str, text: str) -> list[Piece]:
        """Split text into pieces whose prompt plus speech budget fit one KV slot."""
        max_context = self.max_context_tokens
        max_chars = orpheus.max_chars_for_tokens(max_context)
        while True:
            pieces = []
            for chunk in split_for_speech(text, max_chars):
                prompt = orpheus.prompt_ids(self.tokenizer.encode(orpheus.prompt_text(voice, chunk)).ids)
                budget = orpheus.audio_token_budget(chunk)
                if len(prompt) + budget > max_context:
                    break
                pieces.append(Piece(chunk, prompt, budget))
            else:
                return pieces
            if max_chars <= _MIN_CHARS:
                raise RequestError("text", f"cannot fit any speech in max_context_tokens={max_context}")
            max_chars = int(max_chars * _SHRINK)
