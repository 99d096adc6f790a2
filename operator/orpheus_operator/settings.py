"""The operator's own knobs, in one typed place, read once from the environment.

`ORPHEUS_OPERATOR_<FIELD>` (upper case) overrides a field, e.g.
`ORPHEUS_OPERATOR_STATUS_INTERVAL_S=5`. Tests shorten every interval this way.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Mapping

ENV_PREFIX = "ORPHEUS_OPERATOR_"


@dataclass(frozen=True)
class OperatorSettings:
    engine_poll_s: float = 15.0  # how often a voice waiting for its engine build looks at the Job
    status_interval_s: float = 30.0  # how often a voice's status is refreshed from its Deployment
    build_retry_base_s: float = 30.0  # wait before rebuilding after the first failed build Job
    build_retry_max_s: float = 900.0  # the wait doubles per failure up to this

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "OperatorSettings":
        env = os.environ if environ is None else environ
        values = {}
        for f in dataclasses.fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                try:
                    values[f.name] = float(raw)
                except ValueError:
                    raise ValueError(f"{ENV_PREFIX + f.name.upper()} must be a number, got {raw!r}") from None
        return cls(**values)

    def build_retry_delay_s(self, failures: int) -> float:
        """Backoff before build attempt `failures + 1`: base, 2 x base, 4 x base, ... up to max."""
        return min(self.build_retry_max_s, self.build_retry_base_s * 2 ** max(0, failures - 1))
