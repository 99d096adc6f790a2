"""The few Kubernetes API calls the operator makes, on raw JSON dicts.

It uses the official client only for connection and authentication (in-cluster service
account, or a kubeconfig) and `ApiClient.call_api` for requests, so objects stay the plain
dicts that the builders return and the tests compare, with no typed-model round trip.

Updates are server-side apply (`application/apply-patch+yaml`) under one field manager: a field
the operator stops setting is removed, and fields that others own (the HPA's replicas) are left
alone. Creation is a plain POST, so the replicas set at creation belong to a different
(create-time) manager entry and later applies, which leave replicas out, never reset them.
"""

from __future__ import annotations

import json
from typing import Any

import kubernetes
from kubernetes.client.rest import ApiException

from .labels import FIELD_MANAGER

# apiVersion, kind -> plural, for the kinds this operator touches.
PLURALS: dict[tuple[str, str], str] = {
    ("v1", "Service"): "services",
    ("apps/v1", "Deployment"): "deployments",
    ("batch/v1", "Job"): "jobs",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "horizontalpodautoscalers",
    ("policy/v1", "PodDisruptionBudget"): "poddisruptionbudgets",
    ("networking.k8s.io/v1", "NetworkPolicy"): "networkpolicies",
}


class Conflict(Exception):
    """The object already exists (HTTP 409 on create)."""


def object_path(api_version: str, kind: str, namespace: str, name: str | None = None) -> str:
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{prefix}/namespaces/{namespace}/{PLURALS[(api_version, kind)]}"
    return f"{path}/{name}" if name else path


def _path_of(obj: dict, with_name: bool = True) -> str:
    meta = obj["metadata"]
    return object_path(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"] if with_name else None)


class Cluster:
    """Synchronous calls (kopf runs sync handlers in a thread pool)."""

    def __init__(self, api_client: Any):
        self._api = api_client

    @classmethod
    def connect(cls) -> "Cluster":
        """In-cluster service account when running in a pod, else the current kubeconfig."""
        try:
            kubernetes.config.load_incluster_config()
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config()
        return cls(kubernetes.client.ApiClient())

    def _call(self, method: str, path: str, body: Any = None, content_type: str = "application/json",
              query: list[tuple[str, str]] | None = None) -> dict:
        response = self._api.call_api(
            path,
            method,
            query_params=query or [],
            header_params={"Accept": "application/json", "Content-Type": content_type},
            body=body,
            auth_settings=["BearerToken"],
            _return_http_data_only=True,
            _preload_content=False,
            _request_timeout=30,
        )
        data = response.data
        return json.loads(data) if data else {}

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict | None:
        try:
            return self._call("GET", object_path(api_version, kind, namespace, name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def create(self, obj: dict) -> dict:
        try:
            return self._call("POST", _path_of(obj, with_name=False), obj, query=[("fieldManager", FIELD_MANAGER)])
        except ApiException as exc:
            if exc.status == 409:
                raise Conflict(f"{obj['kind']} {obj['metadata']['name']} already exists") from exc
            raise

    def apply(self, obj: dict) -> dict:
        """Server-side apply of the whole desired object; conflicts are taken over (force)."""
        return self._call(
            "PATCH",
            _path_of(obj),
            obj,
            content_type="application/apply-patch+yaml",
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
        )

    def merge_patch(self, api_version: str, kind: str, namespace: str, name: str, patch: dict) -> dict:
        path = object_path(api_version, kind, namespace, name)
        return self._call("PATCH", path, patch, content_type="application/merge-patch+json")

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        """Delete with background propagation (a Job's pods go too); False if it was not there."""
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
        try:
            self._call("DELETE", object_path(api_version, kind, namespace, name), body)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True
