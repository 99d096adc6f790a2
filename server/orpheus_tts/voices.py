"""The voices a model speaks, each with its language.

The fine-tuned English Orpheus speaks the eight voices of `orpheus.VOICES`. The multilingual
research checkpoints (canopylabs/3b-{fr,de,ko,hi,zh,es_it}-ft-research_release) speak others
(French pierre, Korean 유나, ...), with the same prompt format, and nothing in their files lists
them. So a model's voices come, first found first: from the `model.voices` setting, from a
`voices.json` in the checkpoint directory (an engine build records it in its manifest), else the
English eight. Names are compared in Unicode NFC, so a name typed in decomposed Hangul or
Devanagari still matches; the prompt gets the name as listed here.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from orpheus_tts import orpheus
from orpheus_tts.config_build import ConfigError

VOICES_FILE = "voices.json"  # [{"name": "pierre", "language": "fr"}, ...] in a checkpoint directory
MAX_NAME_CHARS = 64
LANGUAGE_TAG = re.compile(r"[a-z]{2,3}(-[A-Za-z0-9]{2,8})*")  # BCP 47 as used here: en, fr, zh, pt-BR, zh-Hans


class VoicesError(ConfigError):
    """A voice list (setting, file or manifest) that cannot be used; the message says where."""


@dataclass(frozen=True)
class Voice:
    name: str
    language: str = ""  # a BCP 47 tag ("fr", "ko", "hi"); empty where not known (an adapter's voice)
    adapter: str | None = None  # the LoRA adapter it runs on; None: the base model

    def record(self) -> dict:
        """As `voices.json` and an engine manifest hold it."""
        return {"name": self.name, "language": self.language}


ENGLISH = tuple(Voice(name, "en") for name in orpheus.VOICES)


def canonical(name: object) -> object:
    """A voice name as it is compared (NFC); anything but a string is left for validation to refuse."""
    return unicodedata.normalize("NFC", name) if isinstance(name, str) else name


def make_voice(name: object, language: object, where: str) -> Voice:
    """A checked base-model voice: a printable name without ':' or outer spaces, a BCP 47 language."""
    if not isinstance(name, str) or not name or name != name.strip() or not name.isprintable() \
            or ":" in name or len(name) > MAX_NAME_CHARS:
        raise VoicesError(f"{where}: voice name {name!r} must be printable text of 1-{MAX_NAME_CHARS} characters "
                          f"without ':' or surrounding spaces")
    if not isinstance(language, str) or (language and not LANGUAGE_TAG.fullmatch(language)):
        raise VoicesError(f"{where}: language {language!r} of voice {name!r} is not a language tag such as "
                          f"fr, ko or zh-Hans")
    return Voice(canonical(name), language)


def parse_setting(entries: list[str], where: str = "model.voices") -> tuple[Voice, ...]:
    """`["pierre:fr", "amelie:fr", "custom"]` (`name` or `name:language`) as voices."""
    voices = []
    for i, entry in enumerate(entries):
        name, _, language = entry.partition(":")
        voices.append(make_voice(name, language, f"{where}[{i}]"))
    return _unique(voices, where)


def from_records(records: object, where: str) -> tuple[Voice, ...]:
    """Voices from `[{"name": ..., "language": ...}, ...]` (language optional), as in `voices.json`."""
    if not isinstance(records, list) or not records:
        raise VoicesError(f"{where}: expected a non-empty list of {{\"name\": ..., \"language\": ...}}")
    voices = []
    for i, record in enumerate(records):
        if not isinstance(record, Mapping) or "name" not in record or set(record) - {"name", "language"}:
            raise VoicesError(f"{where}[{i}]: expected {{\"name\": ..., \"language\": ...}}, got {record!r}")
        voices.append(make_voice(record["name"], record.get("language", ""), f"{where}[{i}]"))
    return _unique(voices, where)


def checkpoint_voices(model_path: str) -> tuple[Voice, ...]:
    """The voices of the checkpoint at `model_path`: its `voices.json`, else the English eight
    (also for `demo` and `random:` weights, which have no directory)."""
    file = Path(model_path) / VOICES_FILE
    if not file.is_file():
        return ENGLISH
    try:
        records = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise VoicesError(f"{file}: unreadable ({exc})") from None
    return from_records(records, str(file))


def voice_table(base: tuple[Voice, ...], adapter_voices: Mapping[str, str], default_voice: str) -> dict[str, Voice]:
    """Every voice a request may name, by name: the base model's, then those adapters add (an
    adapter voice of a base voice's name runs on the adapter, keeping that voice's language).
    The default voice must be among them, or every request naming none would be refused."""
    table = {voice.name: voice for voice in base}
    for name, adapter in adapter_voices.items():
        name = canonical(name)
        table[name] = Voice(name, table[name].language if name in table else "", adapter)
    if canonical(default_voice) not in table:
        raise ConfigError(f"default_voice {default_voice!r} is not one of this model's voices: {', '.join(table)}; "
                          f"set default_voice (or model.voices)")
    return table


def _unique(voices: list[Voice], where: str) -> tuple[Voice, ...]:
    names = [v.name for v in voices]
    if len(set(names)) != len(names):
        raise VoicesError(f"{where}: voice {next(n for n in names if names.count(n) > 1)!r} is listed twice")
    return tuple(voices)
