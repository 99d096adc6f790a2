"""Text to token ids through Hugging Face `tokenizers` (a checkpoint's `tokenizer.json`).

The demo model has no tokenizer file, so it gets a byte-level one built here: every UTF-8
byte is one token (ids 0-255, inside the Llama-3 text range) and BOS is added the way the
Llama-3 tokenizer adds it. Same library, same code path as a real `tokenizer.json`.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

from orpheus_tts import orpheus

BOS_TOKEN = "<|begin_of_text|>"


def demo_tokenizer() -> Tokenizer:
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: i for i, symbol in enumerate(sorted(alphabet))}
    vocab[BOS_TOKEN] = orpheus.BOS
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([BOS_TOKEN])
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A", special_tokens=[(BOS_TOKEN, orpheus.BOS)]
    )
    return tokenizer


def load_tokenizer(model_path: str) -> Tokenizer:
    """The tokenizer of the caller's text. Special tokens written in that text (`<|eot_id|>`,
    `<custom_token_N>`) are encoded as the characters they are, never as control ids, so a caller
    cannot steer the prompt; the prompt's own markers are added by id (`orpheus.prompt_ids`), and
    emotion tags such as `<laugh>` are ordinary text to the model."""
    if model_path == "demo" or model_path.startswith("random:"):
        tokenizer = demo_tokenizer()
    else:
        file = Path(model_path) / "tokenizer.json"
        if not file.exists():
            raise FileNotFoundError(f"{model_path}: no tokenizer.json")
        tokenizer = Tokenizer.from_file(str(file))
    tokenizer.encode_special_tokens = True
    return tokenizer
