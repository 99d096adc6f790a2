"""Who may reach a voice's pods: API keys, TLS, per-key limits, and the NetworkPolicy's peers.

`spec.security` and `spec.networkPolicy` are read here into typed values, with the operator's
defaults (`ORPHEUS_OPERATOR_DEFAULT_SECURITY` / `_NETWORK_POLICY`, JSON; the Helm chart's
`voiceDefaults.security` / `.networkPolicy`) under them: each top-level key a voice sets
replaces the default's, so a voice can drop a default (`tls: {secretName: ""}`,
`networkPolicy: {enabled: false}`) without restating the rest.

The schema fragments live here too (crd.py puts them in the CRD), beside the values that read
them. Secrets reach the pods as secret volumes mounted as directories (never `subPath`, which the
kubelet does not refresh), so a rotated key file or certificate reaches a running server, which
reloads the files when they change; the operator itself never reads a Secret.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping

DEFAULT_API_KEYS_KEY = "api-keys"
KEYS_MOUNT = "/etc/orpheus-tts/keys"
KEYS_FILE = f"{KEYS_MOUNT}/api-keys"
TLS_MOUNT = "/etc/orpheus-tts/tls"
# Keys of a kubernetes.io/tls Secret (ca.crt as cert-manager writes it).
TLS_CERT, TLS_KEY, TLS_CA = "tls.crt", "tls.key", "ca.crt"
# Owner and group may read (the pods' fsGroup owns the files), nobody else.
SECRET_FILE_MODE = 0o440

_SECRET_NAME = {
    "type": "string",
    "pattern": r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?)?$",
    "maxLength": 253,
}
_LABEL_SELECTOR = {
    "type": "object",
    "description": "A label selector, as in a NetworkPolicy; {} selects everything.",
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["key", "operator"],
                "properties": {
                    "key": {"type": "string"},
                    "operator": {"type": "string", "enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                    "values": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}


def security_schema() -> dict:
    return {
        "type": "object",
        "description": "Who may call the voice's pods (the server's `security` settings). Default: the "
        "operator's ORPHEUS_OPERATOR_DEFAULT_SECURITY (the Helm chart's voiceDefaults.security); each "
        "of apiKeys, tls, limits and allowedOrigins that the voice sets replaces the default's.",
        "properties": {
            "apiKeys": {
                "type": "object",
                "description": "A Secret holding the accepted keys, one `name:key` per line, mounted "
                "read-only; requests then need a key (bearer token on HTTP and WebSocket, `authorization` "
                "metadata on gRPC); health, readiness and metrics stay open for the probes. The server "
                "reloads the file when it changes, so a rotated Secret reaches running pods without a "
                "restart (after the kubelet's sync, about a minute).",
                "required": ["secretName"],
                "properties": {
                    "secretName": {**_SECRET_NAME, "description": "The Secret, in the voice's namespace; "
                                   "empty: no keys, even where the operator has a default."},
                    "key": {"type": "string", "default": DEFAULT_API_KEYS_KEY, "pattern": r"^[-._a-zA-Z0-9]+$",
                            "description": "The Secret's key holding the file."},
                },
            },
            "tls": {
                "type": "object",
                "description": "TLS on the gRPC and HTTP ports from a kubernetes.io/tls Secret (tls.crt, "
                "tls.key; ca.crt for clientAuth), mounted read-only and reloaded by the server when it "
                "changes. The metrics port stays plain HTTP.",
                "required": ["secretName"],
                "properties": {
                    "secretName": {**_SECRET_NAME, "description": "The Secret, in the voice's namespace; "
                                   "empty: no TLS, even where the operator has a default."},
                    "clientAuth": {
                        "type": "boolean",
                        "default": False,
                        "description": "Mutual TLS: clients must present a certificate signed by the Secret's "
                        "ca.crt. The probes then present tls.crt themselves, so one CA (ca.crt) must issue "
                        "tls.crt, for both server and client auth.",
                    },
                    "serverName": {
                        "type": "string",
                        "minLength": 1,
                        "description": "With clientAuth: a DNS name in tls.crt that the pods' probe checks it "
                        "against (it connects to localhost). Default: <voice>.<namespace>.svc.",
                    },
                },
            },
            "limits": {
                "type": "object",
                "description": "Per API key (they need apiKeys), so one caller cannot take every slot; "
                "refused with RESOURCE_EXHAUSTED / HTTP 429 and Retry-After. Unset: no limit.",
                "properties": {
                    "maxSessionsPerKey": {"type": "integer", "minimum": 1,
                                          "description": "Concurrent sessions per key and pod."},
                    "requestsPerSecondPerKey": {"type": "number", "minimum": 0, "exclusiveMinimum": True,
                                                "description": "Sustained request rate per key and pod."},
                    "burstPerKey": {"type": "integer", "minimum": 1,
                                    "description": "Requests a key may make at once above the rate."},
                },
            },
            "allowedOrigins": {
                "type": "array",
                "items": {"type": "string", "pattern": r"^(\*|[a-z][a-z0-9+.-]*://[^/]+)$"},
                "description": "Other browser origins (scheme and host: https://app.example.com; * for any) "
                "whose pages may call over HTTP and WebSocket. Unset: the server's own origin only.",
            },
        },
    }


def network_policy_schema() -> dict:
    peer = {
        "type": "object",
        "minProperties": 1,
        "description": "Pods matching podSelector in namespaces matching namespaceSelector (either alone: "
        "the voice's namespace, or every pod of the matching namespaces).",
        "properties": {"namespaceSelector": _LABEL_SELECTOR, "podSelector": _LABEL_SELECTOR},
    }
    return {
        "type": "object",
        "description": "A NetworkPolicy for the voice's pods: only `clients` reach the gRPC and HTTP ports, "
        "only `metricsScrapers` the metrics port; egress is not restricted. The kubelet's probes are always "
        "allowed. Default: the operator's ORPHEUS_OPERATOR_DEFAULT_NETWORK_POLICY (the Helm chart's "
        "voiceDefaults.networkPolicy, off); each key the voice sets replaces the default's.",
        "properties": {
            "enabled": {"type": "boolean"},
            "clients": {"type": "array", "items": peer,
                        "description": "Who may call (the gateway); none: no one."},
            "metricsScrapers": {"type": "array", "items": peer,
                                "description": "Who may scrape /metrics (Prometheus); none: no one."},
        },
    }


@dataclass(frozen=True)
class Security:
    """The server's security settings for one voice, and where its Secrets come from."""

    api_keys_secret: str | None = None
    api_keys_key: str = DEFAULT_API_KEYS_KEY
    tls_secret: str | None = None
    client_auth: bool = False
    tls_server_name: str | None = None
    max_sessions_per_key: int | None = None
    requests_per_s_per_key: float | None = None
    burst_per_key: int | None = None
    allowed_origins: tuple[str, ...] | None = None

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any] | None, default: Mapping[str, Any] | None = None) -> "Security":
        merged = {**(default or {}), **(spec or {})}
        keys, tls, limits = merged.get("apiKeys") or {}, merged.get("tls") or {}, merged.get("limits") or {}
        origins = merged.get("allowedOrigins")
        return cls(
            api_keys_secret=keys.get("secretName") or None,
            api_keys_key=keys.get("key") or DEFAULT_API_KEYS_KEY,
            tls_secret=tls.get("secretName") or None,
            client_auth=bool(tls.get("clientAuth")),
            tls_server_name=tls.get("serverName") or None,
            max_sessions_per_key=limits.get("maxSessionsPerKey"),
            requests_per_s_per_key=limits.get("requestsPerSecondPerKey"),
            burst_per_key=limits.get("burstPerKey"),
            allowed_origins=None if origins is None else tuple(origins),
        )

    @property
    def has_limits(self) -> bool:
        return any(v is not None for v in (self.max_sessions_per_key, self.requests_per_s_per_key, self.burst_per_key))

    @property
    def tls(self) -> bool:
        return self.tls_secret is not None

    @property
    def mutual_tls(self) -> bool:
        return self.tls and self.client_auth

    def server_settings(self) -> dict[str, str]:
        """`--set` keys of the server's `security` section; only what the voice asks for."""
        out: dict[str, str] = {}
        if self.api_keys_secret:
            out["security.api_keys_file"] = KEYS_FILE
            out["security.open_probes"] = "true"  # the kubelet's probes carry no key
        if self.tls:
            out["security.tls_cert_file"] = f"{TLS_MOUNT}/{TLS_CERT}"
            out["security.tls_key_file"] = f"{TLS_MOUNT}/{TLS_KEY}"
            if self.client_auth:
                out["security.tls_client_ca_file"] = f"{TLS_MOUNT}/{TLS_CA}"
        for key, value in (("max_sessions_per_key", self.max_sessions_per_key),
                           ("requests_per_s_per_key", self.requests_per_s_per_key),
                           ("burst_per_key", self.burst_per_key)):
            if value is not None:
                out[f"security.{key}"] = str(value)
        if self.allowed_origins is not None:
            out["security.allowed_origins"] = json.dumps(list(self.allowed_origins))  # a YAML flow list
        return out

    def volumes(self) -> list[dict]:
        out = []
        if self.api_keys_secret:
            out.append({"name": "api-keys", "secret": {
                "secretName": self.api_keys_secret, "defaultMode": SECRET_FILE_MODE,
                "items": [{"key": self.api_keys_key, "path": KEYS_FILE.rsplit("/", 1)[1]}]}})
        if self.tls:
            out.append({"name": "tls", "secret": {"secretName": self.tls_secret, "defaultMode": SECRET_FILE_MODE}})
        return out

    def volume_mounts(self) -> list[dict]:
        mounts = {"api-keys": KEYS_MOUNT, "tls": TLS_MOUNT}
        return [{"name": v["name"], "mountPath": mounts[v["name"]], "readOnly": True} for v in self.volumes()]


@dataclass(frozen=True)
class NetworkAccess:
    """`spec.networkPolicy` with the operator's default under it."""

    enabled: bool = False
    clients: tuple[dict, ...] = ()
    metrics_scrapers: tuple[dict, ...] = ()

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any] | None, default: Mapping[str, Any] | None = None) -> "NetworkAccess":
        merged = {**(default or {}), **(spec or {})}
        return cls(
            enabled=bool(merged.get("enabled")),
            clients=tuple(merged.get("clients") or ()),
            metrics_scrapers=tuple(merged.get("metricsScrapers") or ()),
        )
