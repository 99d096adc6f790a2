"""One typed configuration for the whole server.

Values come, in rising priority, from the dataclass defaults, a YAML file
(`config/default.yaml` unless another is named), environment variables
(`ORPHEUS_TTS__SECTION__KEY=value`, for example `ORPHEUS_TTS__SCHEDULER__MAX_BATCH_SIZE=8`)
and `--set section.key=value` flags. Unknown keys are errors, so a typo never
silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

ENV_PREFIX = "ORPHEUS_TTS__"
DEFAULT_CONFIG_PATH = Path(__file__).resolve().parents[2] / "config" / "default.yaml"


class ConfigError(ValueError):
    """A configuration value is unknown, mistyped or out of range."""


@dataclass
class ModelConfig:
    """The Orpheus language model: `demo` (random tiny weights) or a Hugging Face checkpoint dir."""

    path: str = "demo"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (fp32 on CPU, bf16 on GPU) | float32 | bfloat16 | float16
    kv_cache_dtype: str = "auto"  # auto (the model dtype on CPU, bf16 on GPU) | float16 | bfloat16 | float32
    seed: int = 0  # seeds the demo weights
    quantization: str = "auto"  # auto (FP8 weights where the GPU has FP8) | fp8 | none
    cuda_graphs: bool = True  # capture decode steps as CUDA graphs (GPU only)
    compile: bool = True  # torch.compile the transformer on GPU: fuses the many small ops of a step


@dataclass
class CodecConfig:
    """SNAC 24 kHz: `demo` (random, seeded, small decoder) or a dir with config.json + pytorch_model.bin."""

    path: str = "demo"
    device: str = "auto"
    dtype: str = "auto"  # auto (float16 on GPU, float32 on CPU) | float32 | float16 | bfloat16
    seed: int = 0
    # SNAC adds random noise inside each decoder block (it was trained that way). Off makes
    # decoding deterministic, which tests use to compare two decodes of the same codes.
    noise: bool = True
    # Frames of already-emitted audio decoded again as left context for the next chunk.
    context_frames: int = 1
    # Frames held back (except at the end of a stream) so the emitted ones have right context.
    lookahead_frames: int = 1
    # Widen the left context until a window has this many frames (when the stream has them), so
    # windows of all sessions share one shape and decode in one call. 0 turns widening off.
    window_frames: int = 4
    # GPU: compile the decoder (fused snake and depthwise convolutions) before capturing its
    # graphs. Faster decodes, about two more minutes of start-up.
    compile: bool = True
    # GPU: the largest batch of windows one captured graph decodes; bigger batches go in parts.
    graph_max_batch: int = 64


@dataclass
class SchedulerConfig:
    max_concurrent_sessions: int = 32  # sessions holding a KV-cache slot at once
    max_batch_size: int = 16  # sessions decoded together in one step
    max_pending_sessions: int = 64  # admission queue behind the pool; beyond it requests are refused
    ttfb_priority_tokens: int = 20  # new sessions go first for at most this many tokens
    max_prefill_tokens: int = 2048  # prompt tokens prefilled per step, so running sessions keep pace
    # While sessions decode, new prompts wait up to this long to share one prefill (a burst of
    # arrivals costs running streams a few prefills, not one per step). 0 prefills at once.
    # H100, 200 streams: every stream real time with 40, 78% with 0.
    prefill_wait_ms: float = 40.0
    # Wait only if the next second's steps would take at least this share of the real-time
    # step (1/82 s, in which every stream needs its next id): the rows decoding now plus a
    # second's prompts at their recent rate, at the step time fitted to the batch size. 0 waits
    # at any load. H100: with 0.6, TTFB p50 at 16 / 64 streams 28-40 ms (69-77 with 0), but
    # at 200 streams 97-100% of streams real time (100% in each of four runs with 0): a stall
    # is heard, 40 ms more to the first audio is not, so 0 is the default.
    prefill_wait_min_load: float = 0.0
    flush_first_n_tokens: int = 7  # first audio chunk after this many audio tokens (one frame)
    flush_every_n_tokens: int = 14  # then a chunk every this many tokens
    # The first frames of a stream go out one per chunk, without waiting for lookahead, so the
    # client's buffer grows before chunks get bigger (a 2-frame chunk right after a 1-frame one
    # would need steps under 6.1 ms to arrive before the first frame has played).
    flush_startup_frames: int = 4
    # Later, a stream whose client holds too little audio for the wait of a bigger chunk goes
    # back to frame by frame, judged by the time steps take now. Chunk joins then follow the
    # load, so the same seed gives the same tokens but samples near joins may differ slightly;
    # false fixes the joins (bit-identical audio per seed) at the cost of stalls under load.
    adaptive_chunks: bool = True
    # Audio a client must still hold when a bigger chunk arrives, for the steps to slow down
    # meanwhile (a burst of new sessions) without a stall; 0 cuts it to the estimate alone.
    adaptive_margin_s: float = 0.1
    # Queue each decode step before reading the ids of the one before, and do that host work
    # (tokens, audio planning, scheduling) while the GPU runs: the GPU never waits for the
    # host. Each id is read one step later, and a session that says end-of-speech is decoded
    # once more (that id is dropped). False: the GPU idles while the host works.
    overlap_steps: bool = True
    session_timeout_s: float = 300.0  # a session older than this is ended with a timeout
    max_context_tokens: int = 4096  # prompt + generated tokens per session (the KV slot length)


# Settings the engine reads afresh at every step, so they may be changed on a running engine
# (the bench's A/B compares them on one warm engine); the others take effect at start-up only.
LIVE_KEYS = (
    "scheduler.overlap_steps", "scheduler.adaptive_chunks", "scheduler.adaptive_margin_s",
    "scheduler.flush_every_n_tokens", "scheduler.flush_startup_frames", "scheduler.ttfb_priority_tokens",
    "scheduler.max_prefill_tokens", "scheduler.prefill_wait_ms", "scheduler.prefill_wait_min_load",
)


@dataclass
class SamplingConfig:
    """Defaults for requests that do not set their own (Orpheus needs repetition_penalty >= 1.1)."""

    temperature: float = 0.6
    top_p: float = 0.8
    repetition_penalty: float = 1.1
    constrained: bool = True  # restrict each step to the audio ids valid at its frame position


@dataclass
class TuningProfile:
    max_text_chars: int
    target_concurrent: int
    target_ttfb_ms: float


def _default_profiles() -> dict[str, TuningProfile]:
    return {
        "conversational": TuningProfile(max_text_chars=250, target_concurrent=24, target_ttfb_ms=100),
        "longform": TuningProfile(max_text_chars=5000, target_concurrent=16, target_ttfb_ms=300),
    }


@dataclass
class ServerConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    profile: str = "longform"  # which tuning profile's limits apply
    tuning: dict[str, TuningProfile] = field(default_factory=_default_profiles)
    default_voice: str = "tara"

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
        }
        for name, value in positive.items():
            if value <= 0:
                raise ConfigError(f"{name} must be positive, got {value}")
        if s.max_pending_sessions < 0 or s.ttfb_priority_tokens < 0 or s.flush_startup_frames < 0:
            raise ConfigError("scheduler.max_pending_sessions, ttfb_priority_tokens and flush_startup_frames "
                              "must be >= 0")
        for name in ("flush_first_n_tokens", "flush_every_n_tokens"):
            if getattr(s, name) % 7:
                raise ConfigError(f"scheduler.{name} must be a multiple of 7 (one audio frame), got {getattr(s, name)}")
        if min(self.codec.context_frames, self.codec.lookahead_frames, self.codec.window_frames) < 0:
            raise ConfigError("codec.context_frames, lookahead_frames and window_frames must be >= 0")
        if self.model.quantization not in ("auto", "fp8", "none"):
            raise ConfigError(f"model.quantization must be auto, fp8 or none, got {self.model.quantization!r}")
        if self.profile not in self.tuning:
            raise ConfigError(f"profile {self.profile!r} is not one of {sorted(self.tuning)}")
        return self


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Turn a YAML/env/flag value into the annotated type, or say exactly what is wrong."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return _build(tp, value, where)
    if origin is dict:
        _, value_tp = typing.get_args(tp)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {k: _coerce(v, value_tp, f"{where}.{k}") for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _coerce(value, args[0], where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp in (int, float, str):
        if isinstance(value, bool) and tp is not str:
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
        try:
            if tp is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return tp(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}") from None
    return value


def _build(cls: type, data: Mapping[str, Any], where: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"unknown key(s) {sorted(unknown)} in {where or 'config'}; known: {sorted(names)}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}".lstrip(".")) for k, v in data.items()}
    return cls(**kwargs)


def _merge(base: dict, override: Mapping) -> dict:
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[leaf] = value


def load_config(
    path: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> ServerConfig:
    """Defaults < YAML file < environment < `overrides` ({"scheduler.max_batch_size": 8, ...})."""
    tree = dataclasses.asdict(ServerConfig())
    config_path = Path(path) if path else DEFAULT_CONFIG_PATH
    if path or config_path.exists():
        try:
            loaded = yaml.safe_load(config_path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config {config_path}: {exc}") from exc
        if not isinstance(loaded, Mapping):
            raise ConfigError(f"{config_path}: top level must be a mapping")
        _merge(tree, loaded)
    env = os.environ if environ is None else environ
    for key, value in env.items():
        if key.startswith(ENV_PREFIX):
            _set_dotted(tree, key[len(ENV_PREFIX):].lower().replace("__", "."), yaml.safe_load(value))
    for dotted, value in (overrides or {}).items():
        _set_dotted(tree, dotted, value)
    return _build(ServerConfig, tree).validate()


def parse_set_flags(items: list[str]) -> dict[str, Any]:
    """`["scheduler.max_batch_size=8"]` -> `{"scheduler.max_batch_size": 8}` (values parsed as YAML)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects section.key=value, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out
