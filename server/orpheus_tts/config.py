"""One typed configuration for the whole server.

The dataclasses below are the one source of every default and of its explanation (each field's
`doc`); `make generate` writes the reference (`docs/configuration.md`) and a complete commented
example (`config/example.yaml`) from them. Values come, in rising priority, from these defaults,
a YAML file (only when one is named: `--config FILE`), environment variables
(`ORPHEUS_TTS__SECTION__KEY=value`, for example `ORPHEUS_TTS__SCHEDULER__MAX_BATCH_SIZE=8`)
and `--set section.key=value` flags. Unknown keys are errors, so a typo never
silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import yaml

from orpheus_tts.voices import parse_setting as parse_voice_setting
from orpheus_tts.config_build import (ConfigError, Setting, build, leaf_settings, merge, parse_set_flags,  # noqa: F401
                                      set_dotted)

ENV_PREFIX = "ORPHEUS_TTS__"


def setting(default: Any = dataclasses.MISSING, doc: str = "", *, live: bool = False,
            default_factory: Any = dataclasses.MISSING) -> Any:
    """A config field with its explanation (`doc`, for the generated reference).

    `live` marks a setting the engine reads afresh at every step, so it may be changed on a
    running engine (the bench's A/B compares such settings on one warm engine); the others take
    effect at start-up only.
    """
    return field(default=default, default_factory=default_factory, metadata={"doc": doc, "live": live})


@dataclass
class ModelConfig:
    """The Orpheus language model."""

    path: str = setting("demo", "`demo` (random tiny weights: every real code path, but it makes noise, not "
                                "speech) or a Hugging Face checkpoint directory (`config.json`, `model*.safetensors`, "
                                "`tokenizer.json`).")
    device: str = setting("auto", "auto (the GPU when there is one) | cpu | cuda | cuda:N.")
    dtype: str = setting("auto", "auto (float32 on CPU, bfloat16 on GPU) | float32 | bfloat16 | float16.")
    kv_cache_dtype: str = setting("auto", "auto (the model dtype on CPU, bfloat16 on GPU) | float16 | bfloat16 | "
                                          "float32 | fp8 (float8_e4m3fn with a scale per head and token: half the "
                                          "bytes a decode step reads, which bound the step at large batches; a GPU "
                                          "with FP8, sm_89+. Off by default until its quality check, "
                                          "`python -m orpheus_bench.kv_quality`, has run on a real checkpoint).")
    seed: int = setting(0, "Seeds the demo weights.")
    voices: list[str] = setting(
        doc="The voices the model speaks, as `name` or `name:language` entries (a BCP 47 tag: `pierre:fr`, "
            "`유나:ko`); requests may name only these (and those `adapters.voices` adds), and ListVoices and "
            "/v1/audio/voices show them with their languages. Empty: the checkpoint's `voices.json` "
            "(`[{\"name\": \"pierre\", \"language\": \"fr\"}, ...]`, recorded by an engine build), else the "
            "English model's eight (tara, leah, jess, leo, dan, mia, zac, zoe; `demo` has these).",
        default_factory=list)
    quantization: str = setting("auto", "auto (FP8 weights where the GPU has FP8: sm_89 and newer, else none) | fp8 "
                                        "| none.")
    cuda_graphs: bool = setting(True, "Capture decode and prefill steps, and SNAC decodes, as CUDA graphs (GPU "
                                      "only).")
    compile: bool = setting(True, "torch.compile the transformer and the sampler on GPU: fuses the many small ops "
                                  "of a step.")


@dataclass
class CodecConfig:
    """SNAC 24 kHz, the audio codec that turns audio tokens into samples."""

    path: str = setting("demo", "`demo` (random, seeded, small decoder) or a directory with `config.json` + "
                                "`pytorch_model.bin`.")
    device: str = setting("auto", "auto (the GPU when there is one) | cpu | cuda | cuda:N.")
    dtype: str = setting("auto", "auto (float16 on GPU: 58 dB SNR against float32; float32 on CPU) | float32 | "
                                 "float16 | bfloat16.")
    seed: int = setting(0, "Seeds the demo codec's weights and the decoder's noise.")
    noise: bool = setting(True, "SNAC adds random noise inside each decoder block (it was trained that way). Off "
                                "makes decoding deterministic, which tests use to compare two decodes of the same "
                                "codes.")
    context_frames: int = setting(1, "Frames of already-emitted audio decoded again as left context for the next "
                                     "chunk (at each chunk join).")
    lookahead_frames: int = setting(1, "Frames held back (except for the first chunks and at the end of a stream) "
                                       "so the emitted ones have right context.")
    window_frames: int = setting(4, "Widen the left context until a window has this many frames (when the stream "
                                    "has them), so windows of all sessions share one shape and decode in one call. "
                                    "0 turns widening off.")
    compile: bool = setting(True, "GPU, with `model.cuda_graphs`: compile the decoder (fused snake and depthwise "
                                  "convolutions) before capturing its graphs. Faster decodes, about two more "
                                  "minutes of start-up.")
    graph_max_batch: int = setting(64, "GPU: the largest batch of windows one captured graph decodes; bigger "
                                       "batches go in parts.")


@dataclass
class SchedulerConfig:
    """Sessions, batches, admission and audio chunks: what the engine loop runs at each step."""

    max_concurrent_sessions: int = setting(32, "Sessions holding a KV-cache slot at once.")
    max_batch_size: int = setting(16, "Sessions decoded together in one step.")
    max_pending_sessions: int = setting(64, "The admission queue behind the pool; when it is full, requests are "
                                            "refused (RESOURCE_EXHAUSTED / HTTP 429 with Retry-After).")
    admission: str = setting(
        "capacity", "capacity | slots: with capacity, a queued session is admitted only if every stream already "
                    "admitted (between their text pieces too) and it would still get each id in real time until "
                    "their texts are spoken, projected from each one's remaining speech budget and growing context "
                    "at the step time the engine fits to its batches and contexts as it runs, less "
                    "`admission_margin`; with slots, whenever a KV slot is free. Either way a free slot is needed.",
        live=True)
    admission_margin: float = setting(
        0.15, "Share of the real-time step (1/82 s) that capacity admission keeps free, for prefills, new "
              "streams' first chunks and the fit's error.", live=True)
    max_queue_wait_s: float = setting(
        2.0, "A request still queued after this long is refused (RESOURCE_EXHAUSTED / HTTP 429 with Retry-After, "
             "WebSocket 1013), so a client can go to another replica instead of waiting for its first audio.",
        live=True)
    ttfb_priority_tokens: int = setting(20, "New sessions go first for at most this many tokens.", live=True)
    max_prefill_tokens: int = setting(2048, "Prompt tokens prefilled per step, so running sessions keep pace.",
                                      live=True)
    prefill_guard_frames: int = setting(
        1, "With capacity admission, a step's prefill takes only the prompt tokens that fit in the decode step's "
           "real-time slack, or in the thinnest lead a playing stream holds less the time this many frames take "
           "(a prefill holds every decoding stream up; a burst's first audio then comes a little later instead). "
           "0: prefills bounded by max_prefill_tokens alone. H200, 2x capacity offered: admitted streams' worst "
           "stall 190 -> 9 ms.", live=True)
    prefill_wait_ms: float = setting(
        40.0, "While sessions decode, new prompts wait up to this long to share one prefill (a burst of arrivals "
              "costs running streams a few prefills, not one per step); a prompt that waits gets its first audio "
              "up to this much later. 0 prefills at once. H100, 200 streams: every stream real time with 40, 78% "
              "with 0.", live=True)
    prefill_wait_min_load: float = setting(
        0.0, "Wait only if the next second's steps would take at least this share of the real-time step (1/82 s, "
             "in which every stream needs its next id): the rows decoding now plus a second's prompts at their "
             "recent rate, at the step time the engine fits to the batch size as it runs. 0 waits at any load. "
             "H100: with 0.6, TTFB p50 at 16 / 64 streams 28-40 ms (69-77 with 0), but at 200 streams 97-100% of "
             "streams real time (100% in each of four runs with 0): a stall is heard, 40 ms more to the first "
             "audio is not, so 0 is the default.", live=True)
    flush_first_n_tokens: int = setting(7, "The first audio chunk goes out after this many audio tokens (one "
                                           "frame; a multiple of 7).")
    flush_every_n_tokens: int = setting(14, "Then a chunk every this many tokens (two frames; a multiple of 7).",
                                        live=True)
    flush_startup_frames: int = setting(
        4, "The first frames of a stream go out one per chunk, without waiting for lookahead, so the client's "
           "buffer grows before chunks get bigger (a 2-frame chunk right after a 1-frame one would need steps "
           "under 6.1 ms to arrive before the first frame has played).", live=True)
    adaptive_chunks: bool = setting(
        True, "Later, a stream whose client holds too little audio for the wait of a bigger chunk goes back to "
              "frame by frame, judged by the time steps take now (no stalls under load). Chunk joins then follow "
              "the load, so the same seed gives the same tokens but samples near joins may differ slightly; false "
              "fixes the joins (bit-identical audio per seed) at the cost of stalls under load.", live=True)
    adaptive_margin_s: float = setting(
        0.1, "Audio a client must still hold when a bigger chunk arrives, for the steps to slow down meanwhile (a "
             "burst of new sessions) without a stall; 0 cuts it to the estimate alone.", live=True)
    overlap_steps: bool = setting(
        True, "Queue each decode step before reading the ids of the one before, and do that host work (tokens, "
              "audio planning, scheduling) while the GPU runs: the GPU never waits for the host. Each id is read "
              "one step later, and a session that says end-of-speech is decoded once more (that id is dropped). "
              "False: the GPU idles while the host works.", live=True)
    session_timeout_s: float = setting(300.0, "A session older than this is ended with a timeout.")
    max_context_tokens: int = setting(4096, "Prompt + generated tokens per session: the KV slot length (one text "
                                            "piece's prompt and audio).")


@dataclass
class SamplingConfig:
    """Defaults for requests that do not set their own."""

    temperature: float = setting(0.6, "Softmax temperature.")
    top_p: float = setting(0.8, "Nucleus sampling: keep the most likely ids up to this probability mass.")
    repetition_penalty: float = setting(1.1, "Orpheus needs at least 1.1 for stable speech.")
    constrained: bool = setting(True, "Restrict each step to the audio ids valid at its frame position (and "
                                      "end-of-speech at a frame boundary): no invalid frame can be produced.")


@dataclass
class TuningProfile:
    """The limits and targets of one kind of traffic."""

    max_text_chars: int = setting(doc="The longest text one request may carry, in characters (streamed text "
                                       "included).")
    target_concurrent: int = setting(doc="The concurrent streams the profile is meant for (recorded; nothing reads "
                                          "it yet).")
    target_ttfb_ms: float = setting(doc="The TTFB p95 the profile aims for (`orpheus-tts bench --mode tuning` "
                                        "tests against it).")


def _default_profiles() -> dict[str, TuningProfile]:
    return {
        "conversational": TuningProfile(max_text_chars=250, target_concurrent=24, target_ttfb_ms=100),
        "longform": TuningProfile(max_text_chars=5000, target_concurrent=16, target_ttfb_ms=300),
    }


@dataclass
class EngineConfig:
    """A built engine directory (`orpheus-tts build-engine`) to start from."""

    path: str = setting("", "An engine directory: its serving weights, codec and compiled artifacts replace "
                            "`model.path` and `codec.path`. Empty: load `model.path` and compile at start-up.")
    on_mismatch: str = setting("refuse", "refuse | compile: what to do when the engine was compiled for another "
                                         "torch, GPU or compiled setting (a different precision or format is "
                                         "always refused).")


API_KEYS_ENV = "ORPHEUS_TTS_API_KEYS"  # keys from the environment: `name:key,name:key`, beside the file


@dataclass
class AdaptersConfig:
    """Fine-tuned voices: LoRA adapters (PEFT's format) served beside the base model, in one batch."""

    dir: str = setting("", "A directory of PEFT LoRA adapters, one per subdirectory (`adapter_config.json` + "
                           "`adapter_model.safetensors`), named by it; watched, so adapters copied in or removed "
                           "while serving are registered or unregistered. Empty: no adapters, no cost.")
    max_resident: int = setting(8, "Adapters kept on the GPU at once; more are loaded as requests need them, the "
                                   "least recently used unused one making room. Each place costs its memory (about "
                                   "190 MB at rank 64 on Orpheus-3B) and its read in every decode step. An engine "
                                   "is built for its places and max_rank (they are captured in its graphs).")
    max_rank: int = setting(64, "The largest LoRA rank an adapter may have; every place is sized for it.")
    scan_interval_s: float = setting(2.0, "How often `dir` is looked at again for added, removed or changed "
                                          "adapters.")
    voices: list[str] = setting(doc="Voice names that select an adapter, as `voice:adapter` entries, for clients "
                                    "that only choose a voice (OpenAI's SDK): a request for the voice runs on the "
                                    "adapter and says the voice in its prompt.", default_factory=list)

    def voice_map(self) -> dict[str, str]:
        """`voices` as voice -> adapter."""
        return dict(entry.split(":", 1) for entry in self.voices)


@dataclass
class SecurityConfig:
    """Who may call, and how: API keys, per-key limits, TLS and browser origins (docs/api.md)."""

    api_keys_file: str = setting("", "A file of API keys, one `name:key` a line (the name is what metrics and logs "
                                     "show; a bare `key` is named after its line, `key-3`); `#` comments and blank "
                                     "lines are ignored. Read again within a second of a change (a Kubernetes "
                                     "Secret's symlink swap included); a file that turns unreadable or empty keeps "
                                     "the last good keys, with a warning. The environment variable "
                                     "ORPHEUS_TTS_API_KEYS adds keys (`name:key,name:key`, read at start-up; keys are "
                                     "secrets, so never settings). With any key, every request but the open probes "
                                     "needs one: `Authorization: Bearer KEY` (gRPC: that metadata or `x-api-key`). "
                                     "Empty: no file.")
    open_probes: bool = setting(True, "With keys on, leave gRPC health, /healthz, /readyz and /metrics open to "
                                      "callers without a key (kubelet and Prometheus send none).")
    max_sessions_per_key: int = setting(0, "Speech streams one key may have open at once (gRPC Synthesize and "
                                           "StreamingSynthesize, POST /v1/audio/speech, WebSocket); more are refused "
                                           "(RESOURCE_EXHAUSTED / HTTP 429 / WebSocket 1013, Retry-After). 0: no "
                                           "limit. Needs keys.")
    requests_per_s_per_key: float = setting(0.0, "Requests per second one key may make on average (a token bucket "
                                                 "over every request but the open probes); more are refused like "
                                                 "the session limit's. 0: no limit. Needs keys.")
    burst_per_key: int = setting(0, "The token bucket's size: requests one key may make at once after a quiet "
                                    "spell. 0: one second's worth (`requests_per_s_per_key` rounded up).")
    tls_cert_file: str = setting("", "PEM certificate chain: gRPC and HTTP/WebSocket speak TLS only (with "
                                     "`tls_key_file`). Files are watched: a rotated certificate is served to new "
                                     "connections within a second. The metrics port stays plain HTTP. Empty: no "
                                     "TLS.")
    tls_key_file: str = setting("", "PEM private key of `tls_cert_file`.")
    tls_client_ca_file: str = setting("", "PEM CA bundle: mutual TLS, every client must present a certificate it "
                                          "signed (gRPC and HTTP alike). Empty: no client certificates.")
    allowed_origins: list[str] = setting(
        doc="Other browser origins (`https://app.example.com`) whose pages may call: they get CORS answers for "
            "POST and GET, and may open the WebSocket. A request whose `Origin` header is neither the server's own "
            "nor listed is refused with 403, so a page on another site cannot make a visitor's browser speak "
            "through a server inside their network. Programs that are not browsers send no `Origin` and are not "
            "affected. `*` allows every origin. Empty: the server's own origin only.",
        default_factory=list)


@dataclass
class ServerConfig:
    """The whole configuration: one section per part, then the tuning profiles."""

    model: ModelConfig = field(default_factory=ModelConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    adapters: AdaptersConfig = field(default_factory=AdaptersConfig)
    profile: str = setting("longform", "Which tuning profile's limits apply.")
    tuning: dict[str, TuningProfile] = setting(doc="Tuning profiles by name; add one under a new name (all three "
                                                   "keys), then select it with `profile`.",
                                               default_factory=_default_profiles)
    default_voice: str = setting("tara", "The voice of requests that name none; one of the model's voices "
                                         "(`model.voices`), checked at start-up.")

    @property
    def active_profile(self) -> TuningProfile:
        return self.tuning[self.profile]

    def validate(self) -> "ServerConfig":
        s = self.scheduler
        positive = {
            "scheduler.max_concurrent_sessions": s.max_concurrent_sessions,
            "scheduler.max_batch_size": s.max_batch_size,
            "scheduler.flush_first_n_tokens": s.flush_first_n_tokens,
            "scheduler.flush_every_n_tokens": s.flush_every_n_tokens,
            "scheduler.max_context_tokens": s.max_context_tokens,
            "scheduler.max_prefill_tokens": s.max_prefill_tokens,
            "scheduler.session_timeout_s": s.session_timeout_s,
            "scheduler.max_queue_wait_s": s.max_queue_wait_s,
            "adapters.max_rank": self.adapters.max_rank,
            "adapters.scan_interval_s": self.adapters.scan_interval_s,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ConfigError(f"{name} must be positive, got {value}")
        if self.adapters.max_resident < 0:
            raise ConfigError(f"adapters.max_resident must be >= 0, got {self.adapters.max_resident}")
        for entry in self.adapters.voices:
            voice, _, adapter = entry.partition(":")
            if not voice.strip() or not adapter.strip() or ":" in adapter:
                raise ConfigError(f"adapters.voices entries must be voice:adapter, got {entry!r}")
        if self.adapters.dir and not self.adapters.max_resident:
            raise ConfigError("adapters.dir is set but adapters.max_resident is 0: no adapter could be served")
        if s.max_pending_sessions < 0 or s.ttfb_priority_tokens < 0 or s.flush_startup_frames < 0:
            raise ConfigError("scheduler.max_pending_sessions, ttfb_priority_tokens and flush_startup_frames "
                              "must be >= 0")
        for name in ("flush_first_n_tokens", "flush_every_n_tokens"):
            if getattr(s, name) % 7:
                raise ConfigError(f"scheduler.{name} must be a multiple of 7 (one audio frame), got {getattr(s, name)}")
        if min(self.codec.context_frames, self.codec.lookahead_frames, self.codec.window_frames) < 0:
            raise ConfigError("codec.context_frames, lookahead_frames and window_frames must be >= 0")
        if s.admission not in ("capacity", "slots"):
            raise ConfigError(f"scheduler.admission must be capacity or slots, got {s.admission!r}")
        if s.prefill_guard_frames < 0:
            raise ConfigError(f"scheduler.prefill_guard_frames must be >= 0, got {s.prefill_guard_frames}")
        if not 0 <= s.admission_margin < 1:
            raise ConfigError(f"scheduler.admission_margin must be in [0, 1), got {s.admission_margin}")
        if self.model.quantization not in ("auto", "fp8", "none"):
            raise ConfigError(f"model.quantization must be auto, fp8 or none, got {self.model.quantization!r}")
        if self.engine.on_mismatch not in ("refuse", "compile"):
            raise ConfigError(f"engine.on_mismatch must be refuse or compile, got {self.engine.on_mismatch!r}")
        if self.engine.path and (self.model.path != "demo" or self.codec.path != "demo"):
            raise ConfigError("engine.path replaces model.path and codec.path: set one or the other")
        if self.profile not in self.tuning:
            raise ConfigError(f"profile {self.profile!r} is not one of {sorted(self.tuning)}")
        self._validate_security()
        parse_voice_setting(self.model.voices)  # default_voice is checked against the model's voices at start-up
        return self

    def _validate_security(self) -> None:
        sec = self.security
        if min(sec.max_sessions_per_key, sec.requests_per_s_per_key, sec.burst_per_key) < 0:
            raise ConfigError("security.max_sessions_per_key, requests_per_s_per_key and burst_per_key must be >= 0")
        if bool(sec.tls_cert_file) != bool(sec.tls_key_file):
            raise ConfigError("security.tls_cert_file and security.tls_key_file go together: set both or neither")
        if sec.tls_client_ca_file and not sec.tls_cert_file:
            raise ConfigError("security.tls_client_ca_file (mutual TLS) needs tls_cert_file and tls_key_file")
        for origin in sec.allowed_origins:
            if origin != "*" and ("://" not in origin or origin.endswith("/")):
                raise ConfigError(f"security.allowed_origins: {origin!r} is not an origin such as "
                                  f"https://app.example.com (scheme and host, no path)")


def load_config(
    path: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> ServerConfig:
    """Defaults < YAML file < environment < `overrides` ({"scheduler.max_batch_size": 8, ...}).

    The defaults are the dataclasses' own, so an installed wheel or an image has them without
    any file beside the code; a YAML file is read only when `path` names one.
    """
    tree = dataclasses.asdict(ServerConfig())
    if path:
        config_path = Path(path)
        try:
            loaded = yaml.safe_load(config_path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config {config_path}: {exc}") from exc
        if not isinstance(loaded, Mapping):
            raise ConfigError(f"{config_path}: top level must be a mapping")
        merge(tree, loaded)
    env = os.environ if environ is None else environ
    for key, value in env.items():
        if key.startswith(ENV_PREFIX):
            set_dotted(tree, key[len(ENV_PREFIX):].lower().replace("__", "."), yaml.safe_load(value))
    for dotted, value in (overrides or {}).items():
        set_dotted(tree, dotted, value)
    return build(ServerConfig, tree).validate()


def settings(config: Any = None) -> Iterator[Setting]:
    """Every leaf setting of `config` (the defaults when None), in declaration order."""
    return leaf_settings(ServerConfig() if config is None else config)


# What a running engine may change (`setting(..., live=True)`); the bench's A/B varies only these.
LIVE_KEYS = tuple(s.key for s in settings() if s.live)
