"""Fixtures for the operator tests (helpers live in operator_testkit.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Awaitable, Callable

import pytest
import yaml
from operator_testkit import FAST_SETTINGS, NAMESPACE, RESOURCES, VERBS, MockCluster, OperatorProcess

from orpheus_operator.crd import GROUP, PLURAL, crd_manifest


@pytest.fixture
async def mock_cluster(kmock: Any, tmp_path: Path) -> MockCluster:
    for resource, kind, subresources in RESOURCES:
        kmock.resources[resource] = kmock.ResourceInfo(
            kind=kind, namespaced=kind != "Namespace", verbs=VERBS, subresources=subresources
        )
    kmock.objects["apiextensions.k8s.io/v1/customresourcedefinitions", None, f"{PLURAL}.{GROUP}"] = crd_manifest()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kmock", "cluster": {"server": str(kmock.url).rstrip("/")}}],
        "users": [{"name": "test", "user": {"token": "test-token"}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "test", "namespace": NAMESPACE}}],
        "current-context": "kmock",
    }))
    return MockCluster(kmock, kubeconfig)


@pytest.fixture
async def start_operator(mock_cluster: MockCluster, tmp_path: Path) -> Callable[..., Awaitable[OperatorProcess]]:
    """Start the operator (again, after a stop); stopped at teardown, its log shown on failure."""
    op = OperatorProcess(mock_cluster.kubeconfig, tmp_path / "operator.log", FAST_SETTINGS)

    async def start(*args: str, **settings: str) -> OperatorProcess:
        """`args`: more `run` flags (`"--namespace", "voices"`); `settings`: OperatorSettings fields
        to override, e.g. build_retry_base_s="3"."""
        await op.stop()
        op.args = args
        op.env = {**FAST_SETTINGS, **{f"ORPHEUS_OPERATOR_{k.upper()}": v for k, v in settings.items()}}
        op.start()
        return op

    yield start
    await op.stop()
    shown = int(os.environ.get("OPERATOR_LOG_CHARS", "8000"))
    sys.stdout.write(f"\n--- operator log ---\n{op.logs()[-shown:]}\n")
