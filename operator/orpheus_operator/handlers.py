"""kopf wiring: which events call which function. The work is in `reconcile`, `plan` and below.

- create / resume / spec update -> `reconcile.rollout`: ensure the build Job; once it has
  succeeded, apply the serving objects. While the engine builds, the handler is retried
  (`TemporaryError`) every `engine_poll_s`; after a failed build, with a doubling backoff.
- timer -> `reconcile.observe`: refresh conditions and replica counts from the children.
- delete: nothing to do; every child carries an owner reference to the voice, so Kubernetes'
  garbage collector removes them (a shared build Job goes with its last owner).
"""

from __future__ import annotations

from typing import Any

import kopf

from . import reconcile
from .crd import GROUP, PLURAL, VERSION
from .kube import Cluster
from .settings import OperatorSettings

SETTINGS = OperatorSettings.from_env()
RESOURCE = (GROUP, VERSION, PLURAL)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # Keep kopf's bookkeeping in annotations so status holds only what the CRD declares.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    # No Kubernetes Events: the status conditions say what they would, and the operator's RBAC has
    # no events permission (kopf 1.45 posts none from its logs anyway; older ones would).
    settings.posting.enabled = False
    memo.cluster = Cluster.connect()


@kopf.on.resume(*RESOURCE)
@kopf.on.create(*RESOURCE)
@kopf.on.update(*RESOURCE, field="spec")
def rollout(body: kopf.Body, status: kopf.Status, memo: kopf.Memo, patch: kopf.Patch, **_: Any) -> None:
    outcome = reconcile.rollout(body, memo.cluster, status, SETTINGS)
    patch.status.update(reconcile.changed_fields(status, outcome.status))
    if outcome.retry_in_s is not None:
        raise kopf.TemporaryError(outcome.waiting_for, delay=outcome.retry_in_s)


@kopf.timer(*RESOURCE, interval=SETTINGS.status_interval_s)
def refresh_status(body: kopf.Body, status: kopf.Status, memo: kopf.Memo, patch: kopf.Patch, **_: Any) -> None:
    patch.status.update(reconcile.changed_fields(status, reconcile.observe(body, memo.cluster, status, SETTINGS)))
