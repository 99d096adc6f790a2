"""Everything one voice leads to, decided without the cluster: refusal, engine hash, manifests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from .engine_job import engine_job
from .hashing import engine_hash
from .labels import engine_job_name, selector_labels, selector_string
from .serving import initial_replicas, serving_objects
from .voice import Refusal, Voice, refusal


@dataclass(frozen=True)
class Plan:
    voice: Voice
    refusal: Refusal | None
    engine_hash: str
    job: dict

    @property
    def job_name(self) -> str:
        return engine_job_name(self.engine_hash)

    @property
    def selector(self) -> str:
        return selector_string(selector_labels(self.voice.name))

    def serving(self, replicas: int | None) -> list[dict]:
        return serving_objects(self.voice, self.engine_hash, replicas)


def plan(body: Mapping[str, Any]) -> Plan:
    voice = Voice.from_body(body)
    digest = engine_hash(voice)
    return Plan(voice=voice, refusal=refusal(voice), engine_hash=digest, job=engine_job(voice, digest))


def render(body: Mapping[str, Any]) -> list[dict]:
    """What `kubectl apply` of this voice leads to on a fresh cluster: build Job, then serving.

    Raises ValueError with the refusal when the voice cannot be served.
    """
    p = plan(body)
    if p.refusal is not None:
        raise ValueError(f"{p.voice.namespace}/{p.voice.name}: {p.refusal.reason}: {p.refusal.message}")
    return [p.job, *p.serving(initial_replicas(p.voice))]
