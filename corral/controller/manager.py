"""The Manager: desired state (model specs) made real on workers.

A reconcile loop compares each deployed spec's replicas with the instances the
registry shows, starts missing ones on the least busy worker that has the engine,
drains surplus ones, replaces failed ones (with backoff), and stops instances of models
no longer deployed. Operations that need ordering (a rolling restart) run as tasks and
hold the model so the loop does not fight them. Every change is an audit event.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from corral.controller.workers import WorkerClient, WorkerInfo
from corral.core.errors import Conflict, CorralError, ModelNotFound, NotFound, Unavailable
from corral.core.registry import InstanceRecord, InstanceState, Registry, Synced
from corral.core.spec import ModelSpec
from corral.core.state import AuditEvent, StateStore
from corral.engines.catalog import get_entry

log = logging.getLogger(__name__)

LIVE = (InstanceState.STARTING, InstanceState.READY, InstanceState.OFFLINE)


class Manager:
    def __init__(
        self,
        store: StateStore,
        registry: Registry,
        client_for: Callable[[WorkerInfo], WorkerClient],
        mode: str,
        drain_timeout: float = 30.0,
        interval: float = 0.5,
    ) -> None:
        self._store = store
        self._registry = registry
        self._client_for = client_for
        self.mode = mode
        self._drain_timeout = drain_timeout
        self._interval = interval
        self._specs: dict[str, ModelSpec] = {}
        self._specs_loaded = 0.0
        self._removed: set[str] = set()  # models stopped through this controller
        self._view: dict[str, InstanceRecord] = {}
        self.workers: dict[str, WorkerInfo] = {}
        self._pending: dict[str, tuple[str, float, str]] = {}  # instance id -> (model, when asked, worker id)
        self._stopping: dict[str, float] = {}  # instance id -> when asked
        self._operations: dict[str, str] = {}  # model -> what is going on
        self._backoff: dict[str, tuple[int, float, str]] = {}  # model -> (failures, retry at, last error)
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self.synced = asyncio.Event()

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self, reconcile: bool = True) -> None:
        self._specs = {s.name: s for s in await self._store.list_models()}
        self._tasks.append(asyncio.create_task(self._follow(), name="manager-watch"))
        self._tasks.append(asyncio.create_task(self._refresh_loads(), name="manager-loads"))
        if reconcile:
            self.start_reconciling()

    def start_reconciling(self) -> None:
        self._tasks.append(asyncio.create_task(self._loop(), name="manager-reconcile"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()

    async def _follow(self) -> None:
        async for event in self._registry.watch():
            if isinstance(event, Synced):
                self.synced.set()
                continue
            if event.removed:
                self._view.pop(event.record.instance_id, None)
                self._stopping.pop(event.record.instance_id, None)
            else:
                self._view[event.record.instance_id] = event.record
            self._pending.pop(event.record.instance_id, None)
            self._wake.set()

    async def _loop(self) -> None:
        await self.synced.wait()
        while True:
            try:
                await self.reconcile()
            except Exception:  # one bad pass must not end reconciliation
                log.exception("reconcile pass failed")
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self._interval)
            except TimeoutError:
                pass

    def worker_seen(self, worker_id: str, address: str | None, engines: list[str], ttl: float | None) -> None:
        info = self.workers.get(worker_id)
        if info is None:
            log.info("worker %s joined (%s; engines: %s)", worker_id, address, ", ".join(engines) or "none")
            self.workers[worker_id] = WorkerInfo(worker_id, address, engines, time.monotonic(), ttl)
            self._wake.set()
        else:
            info.address, info.engines, info.seen_at, info.ttl = address, engines, time.monotonic(), ttl

    async def _refresh_loads(self) -> None:
        while True:
            await asyncio.sleep(2.0)
            now = time.monotonic()
            for info in list(self.workers.values()):
                if info.alive(now):
                    try:
                        info.loads = await self._client_for(info).loads()
                    except CorralError:
                        pass

    # -- reconciliation ----------------------------------------------------------------

    def _instances(self, model: str) -> list[InstanceRecord]:
        return [r for r in self._view.values() if r.model == model and r.managed]

    async def reconcile(self) -> None:
        now = time.monotonic()
        self._pending = {i: p for i, p in self._pending.items() if now - p[1] < 60}
        self._stopping = {i: t for i, t in self._stopping.items() if now - t < self._drain_timeout + 30}
        if now - self._specs_loaded > 2.0:  # another controller may have changed the store
            self._specs = {s.name: s for s in await self._store.list_models()}
            self._specs_loaded = now
        for record in list(self._view.values()):
            # only models this controller removed: an unknown model may belong to a spec it
            # has not loaded (another controller, or a store that did not survive a restart)
            if record.managed and record.model in self._removed and record.instance_id not in self._stopping:
                await self._stop(record, "model no longer deployed")
        for spec in list(self._specs.values()):
            if spec.name not in self._operations:
                await self._reconcile_model(spec, now)

    async def _reconcile_model(self, spec: ModelSpec, now: float) -> None:
        records = self._instances(spec.name)
        for record in records:
            if record.state is InstanceState.FAILED and record.instance_id not in self._stopping:
                failures, _, _ = self._backoff.get(spec.name, (0, 0.0, ""))
                delay = min(60.0, 2.0**failures)
                self._backoff[spec.name] = (failures + 1, now + delay, record.last_error or "failed")
                log.warning("instance %s of %s failed (%s); retrying in %.0fs", record.instance_id, spec.name, record.last_error, delay)
                await self._stop(record, "failed")
        live = [r for r in records if r.state in LIVE and r.instance_id not in self._stopping]
        pending = [i for i, (m, _, _) in self._pending.items() if m == spec.name and i not in self._view]
        missing = spec.replicas - len(live) - len(pending)
        if missing > 0:
            _, retry_at, _ = self._backoff.get(spec.name, (0, 0.0, ""))
            if now < retry_at:
                return
            for _ in range(missing):
                if not await self._start_one(spec):
                    break
        elif missing < 0:
            # surplus: starting and offline ones go first, then the newest
            order = {InstanceState.STARTING: 0, InstanceState.OFFLINE: 1, InstanceState.READY: 2}
            victims = sorted(live, key=lambda r: (order[r.state], -r.started_at))[: -missing]
            for record in victims:
                await self._stop(record, "scale down")
        if sum(1 for r in live if r.state is InstanceState.READY) >= spec.replicas:
            self._backoff.pop(spec.name, None)

    def _pick_worker(self, spec: ModelSpec) -> WorkerInfo | None:
        now = time.monotonic()
        able = [w for w in self.workers.values() if w.alive(now) and spec.engine in w.engines]
        if not able:
            return None

        def load(w: WorkerInfo) -> tuple[int, int]:
            """(instances of this model, all instances) on ``w``, counting pending starts."""
            models = [r.model for r in self._view.values() if r.worker_id == w.worker_id and r.state in LIVE]
            models += [m for i, (m, _, wid) in self._pending.items() if wid == w.worker_id and i not in self._view]
            return (models.count(spec.name), len(models))

        return min(able, key=load)

    async def _start_one(self, spec: ModelSpec) -> str | None:
        worker = self._pick_worker(spec)
        if worker is None:
            try:
                hint = f": {get_entry(spec.engine).install_hint()} on a worker"
            except CorralError:
                hint = ""
            self._backoff[spec.name] = (0, 0.0, f"no worker has the {spec.engine} engine installed{hint}")
            return None
        instance_id = f"{spec.name}-{uuid.uuid4().hex[:8]}"
        self._pending[instance_id] = (spec.name, time.monotonic(), worker.worker_id)
        try:
            await self._client_for(worker).start(spec, instance_id)
        except CorralError as exc:
            self._pending.pop(instance_id, None)
            log.warning("worker %s refused %s: %s", worker.worker_id, spec.name, exc.message)
            failures, _, _ = self._backoff.get(spec.name, (0, 0.0, ""))
            self._backoff[spec.name] = (failures + 1, time.monotonic() + min(60.0, 2.0**failures), exc.message)
            return None
        log.info("starting %s on worker %s", instance_id, worker.worker_id)
        return instance_id

    async def _stop(self, record: InstanceRecord, why: str) -> None:
        worker = self.workers.get(record.worker_id)
        self._stopping[record.instance_id] = time.monotonic()
        if worker is None:
            return  # its worker is gone: the lease removes the record
        log.info("stopping %s (%s)", record.instance_id, why)
        try:
            await self._client_for(worker).stop(record.instance_id, self._drain_timeout)
        except CorralError as exc:
            self._stopping.pop(record.instance_id, None)
            log.warning("could not stop %s: %s", record.instance_id, exc.message)

    # -- operations (the admin API) ----------------------------------------------------

    def spec(self, name: str) -> ModelSpec:
        spec = self._specs.get(name)
        if spec is None:
            if any(r.model == name for r in self._view.values()):
                raise Conflict(f"model {name!r} comes from a worker's config file; the controller cannot change it")
            raise ModelNotFound(f"no model named {name!r} is deployed", param="name")
        return spec

    async def _audit(self, actor: str, action: str, target: str, detail: dict[str, Any] | None = None) -> None:
        await self._store.append_audit(AuditEvent(time.time(), actor, action, target, detail or {}))

    async def _save(self, spec: ModelSpec) -> None:
        await self._store.put_model(spec)
        self._specs[spec.name] = spec
        self._wake.set()

    async def deploy(self, spec: ModelSpec, actor: str) -> ModelSpec:
        if spec.name in self._specs or any(r.model == spec.name for r in self._view.values()):
            raise Conflict(f"a model named {spec.name!r} already exists", code="model_exists")
        self._removed.discard(spec.name)
        await self._save(spec)
        await self._audit(actor, "deploy", spec.name, {"engine": spec.engine, "source": spec.source, "replicas": spec.replicas})
        return spec

    async def remove(self, name: str, actor: str) -> None:
        self.spec(name)
        await self._store.delete_model(name)
        self._specs.pop(name, None)
        self._removed.add(name)
        self._operations.pop(name, None)
        self._wake.set()
        await self._audit(actor, "stop", name)

    async def scale(self, name: str, replicas: int, actor: str) -> ModelSpec:
        spec = dataclasses.replace(self.spec(name), replicas=replicas)
        await self._save(spec)
        await self._audit(actor, "scale", name, {"replicas": replicas})
        return spec

    async def update(self, name: str, actor: str, **changes: Any) -> ModelSpec:
        spec = dataclasses.replace(self.spec(name), **changes)
        await self._save(spec)
        await self._audit(actor, "update", name, changes)
        # routing and limits travel in instance records: running instances pick it up on restart
        return spec

    async def set_model_offline(self, name: str, offline: bool, actor: str) -> ModelSpec:
        spec = dataclasses.replace(self.spec(name), offline=offline)
        await self._save(spec)
        for record in self._instances(name):
            if record.state in (InstanceState.READY, InstanceState.OFFLINE):
                await self._client(record).set_offline(record.instance_id, offline)
        await self._audit(actor, "offline" if offline else "online", name)
        return spec

    async def set_instance_offline(self, instance_id: str, offline: bool, actor: str) -> InstanceRecord:
        record = self._view.get(instance_id)
        if record is None:
            raise NotFound(f"no instance {instance_id!r}", param="instance_id")
        await self._client(record).set_offline(instance_id, offline)
        await self._audit(actor, "offline" if offline else "online", instance_id, {"model": record.model})
        return record

    def _client(self, record: InstanceRecord) -> WorkerClient:
        worker = self.workers.get(record.worker_id)
        if worker is None:
            raise Unavailable(f"the worker of instance {record.instance_id} is not connected to this controller")
        return self._client_for(worker)

    async def restart(self, name: str, actor: str) -> None:
        spec = self.spec(name)
        if name in self._operations:
            raise Conflict(f"model {name!r} is busy: {self._operations[name]}")
        old = [r for r in self._instances(name) if r.state in LIVE]
        self._operations[name] = f"restarting 0/{len(old)}"
        await self._audit(actor, "restart", name, {"instances": len(old)})
        self._tasks.append(asyncio.create_task(self._rolling_restart(spec, old), name=f"restart {name}"))

    async def _rolling_restart(self, spec: ModelSpec, old: list[InstanceRecord]) -> None:
        """One at a time: a replacement is ready before an old instance drains, so a model
        with two or more replicas keeps serving throughout."""
        try:
            for i, record in enumerate(old, 1):
                self._operations[spec.name] = f"restarting {i}/{len(old)}"
                new_id = await self._start_one(self._specs.get(spec.name, spec))
                if new_id is None:
                    raise CorralError(f"no worker could start a replacement for {record.instance_id}")
                await self._wait(lambda: self._state(new_id) in (InstanceState.READY, InstanceState.OFFLINE, InstanceState.FAILED), 600)
                if self._state(new_id) is InstanceState.FAILED:
                    raise CorralError(f"replacement {new_id} failed: {self._view[new_id].last_error}")
                await self._stop(record, "rolling restart")
                await self._wait(lambda: record.instance_id not in self._view, self._drain_timeout + 30)
        except (CorralError, TimeoutError) as exc:
            log.error("rolling restart of %s stopped: %s", spec.name, getattr(exc, "message", exc))
        finally:
            self._operations.pop(spec.name, None)
            self._wake.set()

    def _state(self, instance_id: str) -> InstanceState | None:
        record = self._view.get(instance_id)
        return record.state if record is not None else None

    async def _wait(self, condition: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError("timed out")
            await asyncio.sleep(0.1)

    async def audit(self, limit: int) -> list[AuditEvent]:
        return await self._store.audit(limit)

    # -- views -------------------------------------------------------------------------

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
        records = [r for r in self._view.values() if r.model == name]
        spec = self._specs.get(name)
        operation = self._operations.get(name)
        if operation is None and name in self._backoff:
            operation = f"retrying: {self._backoff[name][2]}"
        if spec is None:
            if not records:
                raise ModelNotFound(f"no model named {name!r}", param="name")
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
            }
        return {
            **base,
            "ready": sum(1 for r in records if r.state is InstanceState.READY),
            "operation": operation,
            "instances": [self._instance_view(r) for r in sorted(records, key=lambda r: r.started_at)],
        }

    def models_view(self) -> list[dict[str, Any]]:
        names = set(self._specs) | {r.model for r in self._view.values()}
        return [self.model_view(n) for n in sorted(names)]

    def workers_view(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        return [
            {
                "id": w.worker_id,
                "address": w.address,
                "engines": w.engines,
                "instances": sum(1 for r in self._view.values() if r.worker_id == w.worker_id),
                "last_seen_s": round(now - w.seen_at, 1),
                "alive": w.alive(now),
            }
            for w in sorted(self.workers.values(), key=lambda w: w.worker_id)
        ]


_SECRET_WORDS = ("key", "token", "secret", "password")


def _redacted(options: dict[str, Any]) -> dict[str, Any]:
    """Engine options as the admin API shows them: values of secret-looking keys hidden
    (``api_key_env`` names a variable, not a secret, and stays)."""
    return {
        k: "***" if any(w in k.lower() for w in _SECRET_WORDS) and not k.lower().endswith("_env") else v
        for k, v in options.items()
    }
