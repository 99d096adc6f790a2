"""What the load benchmark's streams say, and when their clients hang up.

The standard workload: one 57-character sentence (a 118-frame budget), every stream the same. The
mixed one (the capacity issue's): 70% short sentences, 30% two-sentence long-form, and 10% of
streams cancelled at a random moment 0.2-3 s after they start.
"""

from __future__ import annotations

import random

DEFAULT_TEXT = "The quick brown fox jumps over the lazy dog by the river."  # 57 chars: a 118-frame budget
SHORT_TEXTS = ("Sure, I can help with that.", "Your order has shipped and arrives on Tuesday.",
               "One moment while I check.", "The meeting moved to three o'clock.", "Thanks for calling, goodbye.")
LONG_TEXTS = ("The quick brown fox jumps over the lazy dog by the river. Then it rests in the shade of an old oak tree.",
              "Your appointment is confirmed for Monday at nine. Please bring your insurance card and arrive early.",
              "We found two flights that match your dates. The earlier one is cheaper but has a stop in Denver.")


class Workload:
    """What each stream says, and when (if ever) its client hangs up."""

    def __init__(self, kind: str, text: str = DEFAULT_TEXT, seed: int = 0):
        if kind not in ("standard", "mixed"):
            raise ValueError(f"unknown workload {kind!r}: standard or mixed")
        self.kind, self.text, self.rng = kind, text, random.Random(seed)

    def next(self) -> tuple[str, float | None]:
        if self.kind == "standard":
            return self.text, None
        text = self.rng.choice(SHORT_TEXTS if self.rng.random() < 0.7 else LONG_TEXTS)
        return text, self.rng.uniform(0.2, 3.0) if self.rng.random() < 0.1 else None

    def describe(self) -> dict:
        if self.kind == "standard":
            return dict(kind="standard", text=self.text, text_chars=len(self.text))
        return dict(kind="mixed", short_share=0.7, long_share=0.3, cancelled_share=0.1, cancel_after_s=[0.2, 3.0],
                    short_texts=list(SHORT_TEXTS), long_texts=list(LONG_TEXTS))
