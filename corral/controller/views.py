"""What the admin API shows of the Manager's state: models, instances, workers.

A mixin of ``Manager`` (``corral.controller.manager``), kept apart so the manager holds
the reconcile logic only; it reads the manager's view of the registry and its specs,
and never changes them.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

from corral.controller.capacity import Capacity
from corral.controller.workers import WorkerInfo
from corral.core.errors import ModelNotFound
from corral.core.launcher import LaunchedWorker
from corral.core.registry import InstanceRecord, InstanceState
from corral.core.spec import ModelSpec


class ManagerViews:
    # the manager's state these views read
    _view: dict[str, InstanceRecord]
    _specs: dict[str, ModelSpec]
    _operations: dict[str, str]
    _backoff: dict[str, tuple[int, float, str]]
    _waiting: dict[str, str]
    _capacity: Capacity | None
    workers: dict[str, WorkerInfo]
    decision_view: Callable[[str], dict[str, Any] | None]

    def _instance_view(self, r: InstanceRecord) -> dict[str, Any]:
        worker = self.workers.get(r.worker_id)
        load = worker.loads.get(r.instance_id, {}) if worker is not None else {}
        return {
            "id": r.instance_id,
            "worker_id": r.worker_id,
            "address": r.address,
            "state": r.state.value,
            "in_flight": load.get("in_flight"),
            "queued": load.get("queued"),
            "uptime_s": round(time.time() - r.started_at, 1) if r.started_at else None,
            "last_error": r.last_error,
        }

    def model_view(self, name: str) -> dict[str, Any]:
        records = [r for r in self._view.values() if r.model == name and r.state is not InstanceState.STANDBY]
        spec = self._specs.get(name)
        operation = self._operations.get(name)
        failures, _, error = self._backoff.get(name, (0, 0.0, ""))
        if operation is None and name in self._waiting and not failures:
            operation = self._waiting[name]  # what the launcher says, e.g. "waiting for Ray resources: ..."
        if operation is None and name in self._backoff:
            operation = f"retrying: {error}"
        if spec is None:
            if not records:
                raise ModelNotFound(f"no model named {name!r}", param="name")  # (a lone standby: its spec is gone)
            first = records[0]
            base: dict[str, Any] = {
                "name": name, "kind": first.kind.value, "engine": first.engine, "source": None, "options": {},
                "routing": first.routing, "replicas": len(records), "managed": False,
            }
        else:
            base = {
                "name": name, "kind": spec.kind.value, "engine": spec.engine, "source": spec.source,
                "options": _redacted(spec.options), "routing": spec.routing, "replicas": spec.replicas, "managed": True,
                "offline": spec.offline,
                "autoscale": dataclasses.asdict(spec.autoscale) if spec.autoscale is not None else None,
                "sampling": dict(spec.sampling.pairs()),
                "resources": spec.resources.as_dict() if spec.resources is not None else None,
                "autoscaler": self.decision_view(name),
            }
        return {
            **base,
            "ready": sum(1 for r in records if r.state is InstanceState.READY),
            "operation": operation,
            "instances": [self._instance_view(r) for r in sorted(records, key=lambda r: r.started_at)],
        }

    def models_view(self) -> list[dict[str, Any]]:
        names = set(self._specs) | {r.model for r in self._view.values() if r.state is not InstanceState.STANDBY}
        return [self.model_view(n) for n in sorted(names)]

    def workers_view(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        launched = {w.worker_id: w for w in self._capacity.launcher.launched()} if self._capacity else {}
        return [
            {
                "id": w.worker_id,
                "address": w.address,
                "engines": w.engines,
                "instances": sum(1 for r in self._view.values() if r.worker_id == w.worker_id),  # standby: no worker
                "last_seen_s": round(now - w.seen_at, 1),
                "alive": w.alive(now),
                "max_instances": w.max_instances,
                "launched": launched[w.worker_id].detail if w.worker_id in launched else None,
                "launcher": self._capacity.launcher.name if w.worker_id in launched and self._capacity else None,
                "node": launched[w.worker_id].node if w.worker_id in launched else None,
                "resources": _reserved(launched[w.worker_id]) if w.worker_id in launched else None,
            }
            for w in sorted(self.workers.values(), key=lambda w: w.worker_id)
        ]


def _reserved(launched: LaunchedWorker) -> dict[str, Any] | None:
    resources = launched.shape.resources
    return resources.as_dict() if resources is not None else None


_SECRET_WORDS = ("key", "token", "secret", "password")


def _redacted(options: dict[str, Any]) -> dict[str, Any]:
    """Engine options as the admin API shows them: values of secret-looking keys hidden
    (``api_key_env`` names a variable, not a secret, and stays)."""
    return {
        k: "***" if any(w in k.lower() for w in _SECRET_WORDS) and not k.lower().endswith("_env") else v
        for k, v in options.items()
    }
