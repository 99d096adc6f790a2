"""Orpheus facts: special token ids, the prompt, voices, and how audio tokens map to SNAC codes.

Everything here comes from the public Orpheus-TTS and SNAC sources; the rest of the server
asks this module instead of repeating a number.
"""

from __future__ import annotations

import math

VOCAB_SIZE = 156_940  # 128,256 Llama-3 + 10 special + 7 x 4096 audio tokens
TEXT_VOCAB_SIZE = 128_256

BOS = 128_000
END_OF_TEXT = 128_009  # <|eot_id|>
START_OF_SPEECH = 128_257
END_OF_SPEECH = 128_258  # the stop token
START_OF_HUMAN = 128_259
END_OF_HUMAN = 128_260
START_OF_AI = 128_261
END_OF_AI = 128_262
PAD = 128_263
AUDIO_TOKEN_BASE = 128_266  # <custom_token_10>: code 0 at frame position 0

CODEBOOK_SIZE = 4096
TOKENS_PER_FRAME = 7
AUDIO_VOCAB_SIZE = TOKENS_PER_FRAME * CODEBOOK_SIZE

SAMPLE_RATE_HZ = 24_000
SAMPLES_PER_FRAME = 2048  # SNAC hop 512 x the 4 finest-level codes in a frame
FRAME_SECONDS = SAMPLES_PER_FRAME / SAMPLE_RATE_HZ  # 85.33 ms
TOKENS_PER_SECOND = TOKENS_PER_FRAME / FRAME_SECONDS  # 82.03: what a stream needs to play in real time

VOICES = ("tara", "leah", "jess", "leo", "dan", "mia", "zac", "zoe")  # the English model's; others: voices.py
EMOTION_TAGS = ("<laugh>", "<chuckle>", "<sigh>", "<cough>", "<sniffle>", "<groan>", "<yawn>", "<gasp>")

# Frame position -> (SNAC level, index of this code inside the frame's entries of that level).
# Level 0 holds 1 code per frame, level 1 holds 2 (positions 1, 4), level 2 holds 4 (2, 3, 5, 6).
FRAME_LAYOUT = ((0, 0), (1, 0), (2, 0), (2, 1), (1, 1), (2, 2), (2, 3))

# Speech-length budget: about twice the time a slow speaker needs, so speech is never cut;
# the model normally stops long before at end-of-speech.
BUDGET_BASE_SECONDS = 1.5
BUDGET_SECONDS_PER_CHAR = 0.15


def custom_token_id(n: int) -> int:
    """`<custom_token_N>` has id 128256 + N."""
    return TEXT_VOCAB_SIZE + n


def audio_token_id(code: int, position: int) -> int:
    """Token id for SNAC `code` at frame `position` (0..6)."""
    return AUDIO_TOKEN_BASE + CODEBOOK_SIZE * position + code


def token_to_code(token_id: int, index: int) -> int | None:
    """Code of the `index`-th audio token of a stream, or None if the id is not valid there."""
    code = token_id - AUDIO_TOKEN_BASE - CODEBOOK_SIZE * (index % TOKENS_PER_FRAME)
    return code if 0 <= code < CODEBOOK_SIZE else None


def prompt_ids(text_ids: list[int]) -> list[int]:
    """Wrap the tokenized `"{voice}: {text}"` (with BOS) in Orpheus' speaker-turn markers."""
    if not text_ids or text_ids[0] != BOS:
        text_ids = [BOS, *text_ids]
    return [START_OF_HUMAN, *text_ids, END_OF_TEXT, END_OF_HUMAN, START_OF_AI, START_OF_SPEECH]


def prompt_text(voice: str, text: str) -> str:
    return f"{voice}: {text}"


def audio_token_budget(text: str) -> int:
    """Most audio tokens a piece of `text` may take: whole frames, generous (see constants)."""
    seconds = BUDGET_BASE_SECONDS + BUDGET_SECONDS_PER_CHAR * len(text)
    return math.ceil(seconds / FRAME_SECONDS) * TOKENS_PER_FRAME


def max_chars_for_tokens(audio_tokens: int) -> int:
    """Inverse of `audio_token_budget`: the longest text whose budget fits `audio_tokens`."""
    seconds = (audio_tokens // TOKENS_PER_FRAME) * FRAME_SECONDS
    return max(0, int((seconds - BUDGET_BASE_SECONDS) / BUDGET_SECONDS_PER_CHAR))
