"""Configuration: YAML, environment and flags in that order; typos and bad values are errors."""

import pytest

from orpheus_tts.config import ConfigError, load_config, parse_set_flags, settings


def test_defaults_carry_the_seed_knobs():
    c = load_config(environ={})
    s = c.scheduler
    assert (s.max_concurrent_sessions, s.max_batch_size, s.ttfb_priority_tokens) == (32, 16, 20)
    assert (s.flush_first_n_tokens, s.flush_every_n_tokens) == (7, 14)
    assert (c.sampling.temperature, c.sampling.top_p, c.sampling.repetition_penalty) == (0.6, 0.8, 1.1)
    assert c.tuning["conversational"].max_text_chars == 250 and c.tuning["longform"].target_ttfb_ms == 300


def test_yaml_then_environment_then_flags_override_in_order(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("scheduler:\n  max_batch_size: 4\n  max_concurrent_sessions: 8\nprofile: conversational\n")
    env = {"ORPHEUS_TTS__SCHEDULER__MAX_BATCH_SIZE": "6", "ORPHEUS_TTS__SAMPLING__CONSTRAINED": "false"}
    c = load_config(path, overrides=parse_set_flags(["scheduler.max_concurrent_sessions=12"]), environ=env)
    assert c.scheduler.max_batch_size == 6
    assert c.scheduler.max_concurrent_sessions == 12
    assert c.sampling.constrained is False
    assert c.active_profile.max_text_chars == 250


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"scheduler.max_bach_size": 4}, "unknown key"),
        ({"scheduler.max_batch_size": "many"}, "expected int"),
        ({"scheduler.max_batch_size": 0}, "must be positive"),
        ({"scheduler.flush_every_n_tokens": 10}, "multiple of 7"),
        ({"scheduler.prefill_guard_frames": -1}, r"scheduler.prefill_guard_frames must be >= 0"),
        ({"profile": "karaoke"}, "not one of"),
        ({"model.voices": ["pierre:French"]}, r"model.voices\[0\]: language 'French' of voice 'pierre' is not"),
        ({"model.voices": ["유나:ko", "유나"]}, "model.voices: voice '유나' is listed twice"),
        ({"model.voices": [" pierre:fr"]}, r"model.voices\[0\]: voice name ' pierre' must be printable"),
        ({"sampling.constrained": "perhaps"}, "true/false"),
    ],
)
def test_bad_values_are_rejected_with_the_key_named(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=overrides, environ={})


def test_set_flag_needs_key_and_value():
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_set_flags(["scheduler.max_batch_size"])


def test_every_setting_is_explained_for_the_generated_reference():
    undocumented = [s.key for s in settings() if not s.doc]
    assert undocumented == []


@pytest.mark.parametrize("overrides,message", [
    ({"adapters.voices": ["alice"]}, "adapters.voices entries must be voice:adapter, got 'alice'"),
    ({"adapters.voices": ["alice:"]}, "adapters.voices entries must be voice:adapter"),
    ({"adapters.dir": "/adapters", "adapters.max_resident": 0}, "adapters.dir is set but adapters.max_resident is 0"),
    ({"adapters.max_rank": 0}, "adapters.max_rank must be positive"),
])
def test_adapter_settings_that_cannot_work_are_refused_by_name(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=overrides, environ={})
