"""Everything one voice leads to, decided without the cluster: refusal, engine hash, manifests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from .engine_job import engine_job
from .hashing import engine_hash
from .labels import engine_job_name, selector_labels, selector_string
from .serving import initial_replicas, serving_objects
from .settings import OperatorSettings
from .voice import Refusal, Voice, refusal


@dataclass(frozen=True)
class Plan:
    voice: Voice
    refusal: Refusal | None
    engine_hash: str | None  # None when the voice has no (known) GPU profile: it is refused
    job: dict | None

    @property
    def job_name(self) -> str | None:
        return None if self.engine_hash is None else engine_job_name(self.engine_hash)

    @property
    def selector(self) -> str:
        return selector_string(selector_labels(self.voice.name))

    def serving(self, replicas: int | None) -> list[dict]:
        assert self.engine_hash is not None, "a refused voice has no serving objects"
        return serving_objects(self.voice, self.engine_hash, replicas)


def plan(body: Mapping[str, Any], settings: OperatorSettings | None = None) -> Plan:
    """`settings`: the operator's defaults for what the voice leaves out (built-in ones if None)."""
    voice = Voice.from_body(body, settings)
    if not voice.has_known_gpu:  # refused; without a GPU there is no engine to hash or build
        return Plan(voice=voice, refusal=refusal(voice), engine_hash=None, job=None)
    digest = engine_hash(voice)
    return Plan(voice=voice, refusal=refusal(voice), engine_hash=digest, job=engine_job(voice, digest))


def render(body: Mapping[str, Any], settings: OperatorSettings | None = None) -> list[dict]:
    """What `kubectl apply` of this voice leads to on a fresh cluster: build Job, then serving.

    Raises ValueError with the refusal when the voice cannot be served.
    """
    p = plan(body, settings)
    if p.refusal is not None:
        raise ValueError(f"{p.voice.namespace}/{p.voice.name}: {p.refusal.reason}: {p.refusal.message}")
    assert p.job is not None
    return [p.job, *p.serving(initial_replicas(p.voice))]
