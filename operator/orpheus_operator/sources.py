"""Where files come from: a hub repository at a revision, or a directory on a PVC.

The model, the codec and each LoRA adapter of a voice name their files the same way, so the
schema fragment (crd.py puts it in the CRD) and the typed value live here, once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

HUB_REPO_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9._-]+$"


def source_schema(description: str, hub_fetched_by: str, default: dict | None = None) -> dict:
    """Exactly one of `hub` (a repository at a revision) or `pvc` (a directory on a claim).

    `hub_fetched_by` completes "A Hugging Face repository, fetched by ..." (what downloads it).
    """
    schema: dict[str, Any] = {
        "type": "object",
        "description": description,
        "oneOf": [{"required": ["hub"]}, {"required": ["pvc"]}],
        "properties": {
            "hub": {
                "type": "object",
                "description": f"A Hugging Face repository, fetched by {hub_fetched_by}.",
                "required": ["repo", "revision"],
                "properties": {
                    "repo": {"type": "string", "pattern": HUB_REPO_PATTERN},
                    "revision": {
                        "type": "string",
                        "minLength": 1,
                        "description": "A commit hash is best: the revision is used as written, so a new "
                        "commit on a branch starts no new build or rollout.",
                    },
                },
            },
            "pvc": {
                "type": "object",
                "description": "A directory on an existing PersistentVolumeClaim in this namespace.",
                "required": ["claimName", "path"],
                "properties": {
                    "claimName": {"type": "string", "minLength": 1},
                    "path": {
                        "type": "string",
                        "pattern": r"^[^/].*$",
                        "description": "Directory inside the claim, relative to its root.",
                    },
                },
            },
        },
    }
    if default is not None:
        schema["default"] = default
    return schema


@dataclass(frozen=True)
class ModelSource:
    """A checkpoint (or adapter) in a hub repository at a revision, or a directory on a PVC."""

    hub_repo: str | None = None
    revision: str | None = None
    pvc_claim: str | None = None
    pvc_path: str | None = None

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> "ModelSource":
        if "hub" in spec:
            return cls(hub_repo=spec["hub"]["repo"], revision=spec["hub"]["revision"])
        return cls(pvc_claim=spec["pvc"]["claimName"], pvc_path=spec["pvc"]["path"].strip("/"))

    @property
    def is_pvc(self) -> bool:
        return self.pvc_claim is not None

    def identity(self) -> dict[str, str]:
        """What identifies the files, for the engine hash and status: {"pvc": claim/path} or {"hub": repo@revision}."""
        if self.is_pvc:
            return {"pvc": f"{self.pvc_claim}/{self.pvc_path}"}
        return {"hub": f"{self.hub_repo}@{self.revision}"}

    def describe(self) -> str:
        """`pvc:claim/path` or `hub:repo@revision`, as status shows it."""
        ((kind, where),) = self.identity().items()
        return f"{kind}:{where}"
