"""The operator's own knobs, in one typed place, read once from the environment.

`ORPHEUS_OPERATOR_<FIELD>` (upper case) overrides a field, e.g.
`ORPHEUS_OPERATOR_STATUS_INTERVAL_S=5`. Tests shorten every interval this way.

Besides the intervals, defaults for voices that leave a field out (the Helm chart sets
them from `voiceDefaults` and `engineCache.claimName`): `DEFAULT_IMAGE` (`spec.image`),
`DEFAULT_BUILDER_IMAGE` (`spec.builderImage`), `DEFAULT_GPU_PROFILE` (`spec.gpuProfile`; empty:
no default, and a voice without one is refused), `ENGINE_CACHE_CLAIM`
(`spec.engineCache.claimName`), and, as JSON objects shaped like the spec's fields,
`DEFAULT_SECURITY` (`spec.security`), `DEFAULT_NETWORK_POLICY` (`spec.networkPolicy`) and
`DEFAULT_ADAPTER_SLOTS` (`spec.adapterSlots`). An
empty value keeps the built-in default. The chart's `ENGINE_CACHE_STORAGE_CLASS` and `ENGINE_CACHE_SIZE` are not
read: the chart creates the cache PVC, the operator only mounts it by name.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Mapping

from .profiles import GPU_PROFILES

ENV_PREFIX = "ORPHEUS_OPERATOR_"

# Built-in defaults, used when neither the voice nor the environment names one.
DEFAULT_IMAGE = "orpheus-tts:0.1.0"
DEFAULT_BUILDER_IMAGE = "orpheus-tts-builder:0.1.0"
DEFAULT_CACHE_CLAIM = "orpheus-engine-cache"


@dataclass(frozen=True)
class OperatorSettings:
    engine_poll_s: float = 15.0  # how often a voice waiting for its engine build looks at the Job
    status_interval_s: float = 30.0  # how often a voice's status is refreshed from its Deployment
    build_retry_base_s: float = 30.0  # wait before rebuilding after the first failed build Job
    build_retry_max_s: float = 900.0  # the wait doubles per failure up to this
    default_image: str = DEFAULT_IMAGE  # server image of voices without spec.image
    default_builder_image: str = DEFAULT_BUILDER_IMAGE  # build Job image of voices without spec.builderImage
    default_gpu_profile: str = ""  # GPU profile of voices without spec.gpuProfile; "": none
    engine_cache_claim: str = DEFAULT_CACHE_CLAIM  # cache PVC of voices without spec.engineCache.claimName
    default_security: str = ""  # JSON, under every voice's spec.security; "": none
    default_network_policy: str = ""  # JSON, under every voice's spec.networkPolicy; "": none
    default_adapter_slots: str = ""  # JSON, under every voice's spec.adapterSlots; "": the server's defaults

    def __post_init__(self) -> None:
        for name in ("default_security", "default_network_policy", "default_adapter_slots"):
            self._json_object(name)
        if self.default_gpu_profile and self.default_gpu_profile not in GPU_PROFILES:
            raise ValueError(
                f"{ENV_PREFIX}DEFAULT_GPU_PROFILE must be empty or one of {', '.join(sorted(GPU_PROFILES))}, "
                f"got {self.default_gpu_profile!r}"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "OperatorSettings":
        env = os.environ if environ is None else environ
        values: dict[str, float | str] = {}
        for f in dataclasses.fields(cls):
            name = ENV_PREFIX + f.name.upper()
            raw = env.get(name)
            if raw is None:
                continue
            if isinstance(f.default, str):
                if raw.strip():  # empty: keep the built-in default
                    values[f.name] = raw.strip()
                continue
            try:
                values[f.name] = float(raw)
            except ValueError:
                raise ValueError(f"{name} must be a number, got {raw!r}") from None
        return cls(**values)  # type: ignore[arg-type]

    @property
    def security_defaults(self) -> dict:
        return self._json_object("default_security")

    @property
    def network_policy_defaults(self) -> dict:
        return self._json_object("default_network_policy")

    @property
    def adapter_slots_defaults(self) -> dict:
        return self._json_object("default_adapter_slots")

    def _json_object(self, name: str) -> dict:
        raw = getattr(self, name)
        try:
            value = json.loads(raw) if raw else {}
        except ValueError:
            value = None
        if not isinstance(value, dict):
            raise ValueError(f"{ENV_PREFIX}{name.upper()} must be a JSON object, got {raw!r}")
        return value

    def build_retry_delay_s(self, failures: int) -> float:
        """Backoff before build attempt `failures + 1`: base, 2 x base, 4 x base, ... up to max."""
        return min(self.build_retry_max_s, self.build_retry_base_s * 2 ** max(0, failures - 1))
