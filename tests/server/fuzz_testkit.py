"""Shared by the property-based tests (test_fuzz_*.py): hypothesis profiles, hostile inputs, and a
watch on one real server that says what the server itself made of each request.

Profiles, picked by the environment variable `ORPHEUS_TTS_FUZZ`:

    ci    (the default) a few dozen examples per test, so all fuzz tests together stay well under a minute
    long  thousands of examples per test (`make fuzz`), for a run before a release or after a change to
          the request paths

No example database is kept (nothing is written into the work tree); a failure prints the
`@reproduce_failure` blob that replays it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from contextlib import contextmanager

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from orpheus_tts import orpheus

FUZZ_ENV = "ORPHEUS_TTS_FUZZ"
_COMMON = dict(deadline=None, database=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
settings.register_profile("ci", max_examples=60, **_COMMON)
settings.register_profile("long", max_examples=3000, **_COMMON)
FUZZ = settings.get_profile(os.environ.get(FUZZ_ENV, "ci"))


def fuzz_settings(share: float = 1.0) -> settings:
    """The profile's settings with `share` of its examples (a test whose examples cost more takes fewer)."""
    return settings(FUZZ, max_examples=max(10, int(FUZZ.max_examples * share)))


# -- hostile values ---------------------------------------------------------------------------

SPECIAL_TEXTS = [
    "\x00", "Hi\x00there.", "\ud800", "a\udc00b", "\ufeffHello.", "\u202eevil\u202c", "e\u0301" * 20, "\U0001F600" * 30,
    "<|begin_of_text|>", "<|eot_id|>Hi.", "<custom_token_7>", "<laugh> Ha.", "\r\n\t\x0b\x0c", "...", "!?", "\u3002",
    "\u0000\u0001\u0002\u001f\u007f", "Ω" * 150, "a" * 200, "a" * 201, " " * 10, "\u2028\u2029", "\ufffe\uffff",
]
# What Python's json module reads that JSON does not, and numbers no field can hold.
RAW_JSON_TOKENS = [
    "NaN", "Infinity", "-Infinity", "1e308", "1e309", "-1e309", "5e-324", "-0.0", "0", "-1", "4294967295", "4294967296",
    "9" * 5000, "-" + "9" * 5000, "1" + "0" * 400 + ".5", "1.5", "true", "null", "[]", "{}", '"\\ud800"', '"\\u0000"',
    "[" * 3000 + "]" * 3000, '{"a":' * 3000 + "1" + "}" * 3000,
]


def text_chars(surrogates: bool) -> st.SearchStrategy[str]:
    """Any code point: controls, NUL, combining marks, private use, and lone surrogates when JSON can carry them."""
    return st.characters(exclude_categories=() if surrogates else ("Cs",))


def hostile_text(surrogates: bool = True, huge: int = 300_000) -> st.SearchStrategy[str]:
    """Short random text, known troublemakers, and strings far over any limit."""
    chars = text_chars(surrogates)
    special = st.sampled_from([t for t in SPECIAL_TEXTS if surrogates or not re.search("[\ud800-\udfff]", t)])
    return st.one_of(
        st.text(chars, max_size=40),
        special,
        st.builds(lambda c, n: c * n, chars, st.integers(150, 250)),  # around the 200-character limit
        st.builds(lambda c, n: c * n, chars, st.integers(1000, huge)),
    )


def numbers() -> st.SearchStrategy:
    """Floats of every kind (NaN, infinities, subnormals), integers past 64 bits, and the edges of our ranges."""
    return st.one_of(
        st.floats(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.sampled_from([0, -0.0, 1, 2, 0.5, 1e308, -1e308, 5e-324, 2**32 - 1, 2**32, 2**63, -1, 1.1, 2.0000001]),
    )


def json_values(surrogates: bool = True) -> st.SearchStrategy:
    """Any JSON value Python can write: wrong types for every field, nested a little."""
    leaves = st.one_of(st.none(), st.booleans(), numbers(), hostile_text(surrogates, huge=5000))
    return st.recursive(leaves, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                        st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                        max_leaves=6)


def json_text_value() -> st.SearchStrategy[str]:
    """One value as JSON text: what json.dumps writes, or a raw token it would never write."""
    return st.one_of(json_values().map(json.dumps), st.sampled_from(RAW_JSON_TOKENS))


OMIT = object()  # a field left out of the request


@st.composite
def mostly_good(draw, good: dict[str, st.SearchStrategy], bad: dict[str, st.SearchStrategy],
                max_broken: int = 2) -> dict:
    """A request whose fields are all good (OMIT: left out) but for up to `max_broken` of them
    drawn from `bad`: most examples then get past validation to the engine, and each bad value
    is met beside good ones, so the field it breaks is the one the answer must name."""
    broken = draw(st.sets(st.sampled_from(sorted(bad)), max_size=max_broken))
    values = {name: draw(bad[name] if name in broken else strategy) for name, strategy in good.items()}
    values |= {name: draw(bad[name]) for name in broken if name not in good}
    return {name: value for name, value in values.items() if value is not OMIT}


def speakable_text(max_size: int = 40) -> st.SearchStrategy[str]:
    """Text a request may carry: any code point but surrogates, something besides whitespace."""
    return st.text(text_chars(False), min_size=1, max_size=max_size).filter(str.strip)


def optional(strategy: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(st.just(OMIT), strategy)


def json_request(good: dict[str, st.SearchStrategy], names: list[str]) -> st.SearchStrategy[dict[str, str]]:
    """A JSON request as {name: JSON text}: the good values written by json.dumps, up to two
    fields of `names` (or one we do not know) hostile, raw JSON tokens included."""
    unknown = st.text(text_chars(True), min_size=1, max_size=8).filter(lambda n: n not in names)
    bad = {name: json_text_value() for name in names}
    bad["?"] = st.tuples(unknown, json_text_value())
    request = mostly_good({name: strategy.map(lambda v: v if v is OMIT else json.dumps(v))
                           for name, strategy in good.items()}, bad)

    def unpack(fields: dict) -> dict[str, str]:
        extra = fields.pop("?", None)
        return fields | ({extra[0]: extra[1]} if extra else {})

    return request.map(unpack)


def object_text(fields: dict[str, str]) -> str:
    return "{" + ", ".join(f"{json.dumps(name)}: {value}" for name, value in fields.items()) + "}"


def raw_bodies() -> st.SearchStrategy[bytes]:
    """Bodies that are not one JSON object: bytes, truncated or deep JSON, other top-level values."""
    return st.one_of(
        st.binary(max_size=64),
        st.sampled_from(RAW_JSON_TOKENS).map(str.encode),
        st.builds(lambda depth: ("[" * depth + "]" * depth).encode(), st.integers(1, 100_000)),
        st.builds(lambda depth: ('{"input":' * depth + '"Hi."' + "}" * depth).encode(), st.integers(2, 100_000)),
        st.builds(lambda body, cut: body[:cut], st.just(b'{"input": "Hello there.", "voice": "tara"}'),
                  st.integers(0, 40)),
        st.just(b'{"input": "Hi.", "input": "Bye."}'),
        st.just('{"input": "caf\u00e9."}'.encode("latin-1")),  # not UTF-8
        st.just(b"\xef\xbb\xbf" + b'{"input": "Hi."}'),  # a byte-order mark
    )


# -- a watch on the server --------------------------------------------------------------------

_LOGFMT = re.compile(r'(\w+)=("[^"]*"|\S*)')


class ServerWatch(logging.Handler):
    """Records every request's log line (outcome and detail, by request id) and every error the
    server logs, and waits for its engine to settle: all slots free, nothing queued or running."""

    def __init__(self, server):
        super().__init__(logging.INFO)
        self.server = server
        self.requests: dict[str, dict[str, str]] = {}
        self.errors: list[str] = []
        self._logger = logging.getLogger("orpheus_tts")
        self._level = self._logger.level
        self._logger.setLevel(logging.INFO)
        self._logger.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.levelno >= logging.ERROR:
            self.errors.append(f"{record.name}: {message}")
        if message.startswith("request "):
            fields = {k: v.strip('"') for k, v in _LOGFMT.findall(message)}
            self.requests[fields.get("id", "")] = fields

    def close(self) -> None:
        self._logger.removeHandler(self)
        self._logger.setLevel(self._level)
        super().close()

    def outcome(self, request_id: str, timeout_s: float = 10.0) -> dict[str, str]:
        """The server's log line of one request (written when it ended, so it may still come)."""
        deadline = time.monotonic() + timeout_s
        while request_id not in self.requests:
            assert time.monotonic() < deadline, f"request {request_id} never ended on the server"
            time.sleep(0.005)
        return self.requests[request_id]

    def settle(self, timeout_s: float = 10.0):
        """Wait until no session holds a slot or waits for one; fail if that does not happen, if
        the engine thread died, or if the server logged an error. Returns the engine's stats."""
        engine = self.server.server.engine
        deadline = time.monotonic() + timeout_s
        while True:
            stats = engine.stats()
            if stats.free_slots == stats.max_concurrent and not stats.pending_sessions and not stats.active_sessions:
                break
            assert time.monotonic() < deadline, f"the engine did not settle: {stats}"
            time.sleep(0.005)
        assert engine._thread is not None and engine._thread.is_alive(), "the engine thread died"
        errors, self.errors = self.errors, []  # reported once, so the next example starts clean
        assert not errors, f"the server logged errors: {errors[:3]}"
        return stats


@contextmanager
def watched(server):
    """A started server and a watch on it, both closed at the end: (server, watch)."""
    watch = ServerWatch(server)
    try:
        yield server, watch
    finally:
        watch.close()
        server.close()


def refused_as_client_fault(outcome: dict[str, str]) -> None:
    """What the server logged for a request it refused: the client's fault, never its own."""
    assert outcome["outcome"] == "invalid_argument", outcome


def whole_frames(pcm: bytes) -> bool:
    return len(pcm) % (2 * orpheus.SAMPLES_PER_FRAME) == 0
