"""The Manager: desired state (model specs) made real on workers.

A reconcile loop compares each deployed spec's replicas with the instances the
registry shows, starts missing ones on the least busy worker that has the engine,
drains surplus ones, replaces failed ones (with backoff), and stops instances of models
no longer deployed. For each autoscaled model it also keeps a ``standby`` record in the
registry: not an instance, the sign for gateways that the model exists at zero replicas
and wakes on demand (``corral.controller.autoscaling`` moves its replicas). Operations that need ordering (a rolling restart) run as tasks and
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

from corral.controller.capacity import JOIN_TIMEOUT_S, Capacity
from corral.controller.standby import StandbyRecords
from corral.controller.views import ManagerViews
from corral.controller.workers import WorkerClient, WorkerInfo
from corral.core.errors import Conflict, CorralError, ModelNotFound, NotFound, Unavailable
from corral.core.registry import InstanceRecord, InstanceState, Registry, Synced
from corral.core.spec import AutoscalePolicy, ModelSpec
from corral.core.state import AuditEvent, StateStore
from corral.engines.catalog import get_entry

log = logging.getLogger(__name__)

LIVE = (InstanceState.STARTING, InstanceState.READY, InstanceState.OFFLINE)
LOADS_INTERVAL_S = 1.0  # how often workers' loads are read (the autoscaler's engine signal)


class Manager(ManagerViews):
    def __init__(
        self,
        store: StateStore,
        registry: Registry,
        client_for: Callable[[WorkerInfo], WorkerClient],
        mode: str,
        drain_timeout: float = 30.0,
        interval: float = 0.5,
        capacity: Capacity | None = None,
    ) -> None:
        self._capacity = capacity  # launches workers when placement finds no room
        self._retired: set[str] = set()  # launched workers being stopped
        self._lost: set[str] = set()  # launched workers their launcher found dead: their records are not live
        self._store = store
        self._registry = registry
        self._client_for = client_for
        self.mode = mode
        self._drain_timeout = drain_timeout
        self._interval = interval
        self._specs: dict[str, ModelSpec] = {}
        self._specs_loaded = 0.0
        self._changed_at: dict[str, float] = {}  # model -> when this manager last changed its spec
        self._removed: set[str] = set()  # models stopped through this controller
        self._view: dict[str, InstanceRecord] = {}
        self.workers: dict[str, WorkerInfo] = {}
        self._pending: dict[str, tuple[str, float, str]] = {}  # instance id -> (model, when asked, worker id)
        self._stopping: dict[str, float] = {}  # instance id -> when asked
        self._operations: dict[str, str] = {}  # model -> what is going on
        self._backoff: dict[str, tuple[int, float, str]] = {}  # model -> (failures, retry at, last error)
        self._waiting: dict[str, str] = {}  # model -> what its launcher says about the workers asked for it
        self._engine_counts: dict[str, tuple[int, int]] = {}  # instance id -> (crashes, restarts) audited
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self._standby = StandbyRecords(registry, lease=mode == "cluster")
        self.decision_view: Callable[[str], dict[str, Any] | None] = lambda name: None  # set by the autoscaler
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

    def worker_seen(
        self, worker_id: str, address: str | None, engines: list[str], ttl: float | None, max_instances: int = 0
    ) -> None:
        if worker_id in self._retired:
            return
        info = self.workers.get(worker_id)
        if info is None:
            log.info("worker %s joined (%s; engines: %s)", worker_id, address, ", ".join(engines) or "none")
            self.workers[worker_id] = WorkerInfo(worker_id, address, engines, time.monotonic(), ttl, max_instances=max_instances)
            self._wake.set()
        else:
            info.address, info.engines, info.seen_at, info.ttl = address, engines, time.monotonic(), ttl
            info.max_instances = max_instances

    async def _refresh_loads(self) -> None:
        while True:
            await asyncio.sleep(LOADS_INTERVAL_S)
            now = time.monotonic()
            for info in list(self.workers.values()):
                if info.alive(now):
                    try:
                        info.loads = await self._client_for(info).loads()
                        await self._audit_engines(info)
                    except CorralError:
                        pass

    async def _audit_engines(self, info: WorkerInfo) -> None:
        """Engine crashes and in-place restarts the worker reports (counters in its
        loads) become audit events, as changes this manager did not make."""
        for instance_id, load in info.loads.items():
            counts = (int(load.get("crashes_total") or 0), int(load.get("restarts_total") or 0))
            before = self._engine_counts.get(instance_id, (0, 0))
            self._engine_counts[instance_id] = counts
            detail = {"model": load.get("model"), "crashes_total": counts[0], "restarts_total": counts[1]}
            if counts[0] > before[0]:
                await self._audit(f"worker:{info.worker_id}", "engine-crash", instance_id, {**detail, "new": counts[0] - before[0]})
            if counts[1] > before[1]:
                await self._audit(f"worker:{info.worker_id}", "engine-restart", instance_id, {**detail, "new": counts[1] - before[1]})
        gone = [i for i in self._engine_counts if i not in self._view]
        for instance_id in gone:
            self._engine_counts.pop(instance_id, None)

    # -- reconciliation ----------------------------------------------------------------

    def _instances(self, model: str) -> list[InstanceRecord]:
        return [r for r in self._view.values() if r.model == model and r.managed]

    async def reconcile(self) -> None:
        now = time.monotonic()
        self._pending = {i: p for i, p in self._pending.items() if now - p[1] < 60}
        self._stopping = {i: t for i, t in self._stopping.items() if now - t < self._drain_timeout + 30}
        if now - self._specs_loaded > 2.0:  # another controller may have changed the store
            loaded = {s.name: s for s in await self._store.list_models()}
            for name, at in self._changed_at.items():  # changed here while the store was read: newer
                if at >= now:
                    if name in self._specs:
                        loaded[name] = self._specs[name]
                    else:
                        loaded.pop(name, None)
            self._specs = loaded
            self._specs_loaded = now
        for record in list(self._view.values()):
            # only models this controller removed: an unknown model may belong to a spec it
            # has not loaded (another controller, or a store that did not survive a restart)
            if record.managed and record.model in self._removed and record.instance_id not in self._stopping:
                await self._stop(record, "model no longer deployed")
        for spec in list(self._specs.values()):
            if spec.name not in self._operations:
                await self._reconcile_model(spec, now)
        await self._standby.keep(self._specs, self._view, now)
        if self._capacity is not None:
            for worker_id in self._capacity.lost():
                log.warning("launched worker %s is gone; replacing its instances", worker_id)
                self.workers.pop(worker_id, None)
                self._lost.add(worker_id)
                self._retired.add(worker_id)  # a late heartbeat does not bring it back
                self._wake.set()
            self._lost &= {r.worker_id for r in self._view.values()}  # until its records expire
            busy = {r.worker_id for r in self._view.values()} | {w for _, _, w in self._pending.values()}
            for worker_id in self._capacity.stop_idle(self.workers, busy):
                self.workers.pop(worker_id, None)  # not a place for instances any more
                self._retired.add(worker_id)  # its heartbeats while it drains do not bring it back

    def engine_demand(self) -> dict[str, tuple[int, int]]:
        """Per model: (requests in flight and queued at its engines, ready instances), as
        the workers last reported."""
        out: dict[str, tuple[int, int]] = {}
        for record in self._view.values():
            if record.state is InstanceState.STANDBY:
                continue
            worker = self.workers.get(record.worker_id)
            load = worker.loads.get(record.instance_id, {}) if worker is not None else {}
            busy = int(load.get("in_flight") or 0) + int(load.get("queued") or 0)
            demand, ready = out.get(record.model, (0, 0))
            out[record.model] = (demand + busy, ready + (record.state is InstanceState.READY))
        return out

    async def _reconcile_model(self, spec: ModelSpec, now: float) -> None:
        records = self._instances(spec.name)
        for record in records:
            if record.state is InstanceState.FAILED and record.instance_id not in self._stopping:
                failures, _, _ = self._backoff.get(spec.name, (0, 0.0, ""))
                delay = min(60.0, 2.0**failures)
                self._backoff[spec.name] = (failures + 1, now + delay, record.last_error or "failed")
                log.warning("instance %s of %s failed (%s); retrying in %.0fs", record.instance_id, spec.name, record.last_error, delay)
                await self._stop(record, "failed")
                detail = {"model": spec.name, "error": record.last_error, "replace_in_s": delay}
                try:
                    await self._audit("manager", "instance-failed", record.instance_id, detail)
                except CorralError as exc:  # the store being down must not stop the replacement
                    log.warning("could not audit the failure of %s: %s", record.instance_id, exc.message)
        live = [r for r in records if r.state in LIVE and r.instance_id not in self._stopping and r.worker_id not in self._lost]
        pending = [i for i, (m, _, _) in self._pending.items() if m == spec.name and i not in self._view]
        missing = spec.replicas - len(live) - len(pending)
        if missing > 0:
            _, retry_at, _ = self._backoff.get(spec.name, (0, 0.0, ""))
            if now < retry_at:
                return
            for placed in range(missing):
                if not await self._start_one(spec):
                    await self._ask_for_capacity(spec, missing - placed)
                    break
        elif missing < 0:
            # surplus: starting and offline ones go first, then the newest
            order = {InstanceState.STARTING: 0, InstanceState.OFFLINE: 1, InstanceState.READY: 2}
            victims = sorted(live, key=lambda r: (order[r.state], -r.started_at))[: -missing]
            for record in victims:
                await self._stop(record, "scale down")
        if sum(1 for r in live if r.state is InstanceState.READY) >= spec.replicas:
            self._backoff.pop(spec.name, None)
            self._waiting.pop(spec.name, None)

    def _fits(self, spec: ModelSpec) -> Callable[[WorkerInfo], bool]:
        """Whether a worker may host ``spec`` beyond its engine: with a launcher that places
        by resources, a worker it launched hosts only models of the shape it reserved for,
        and a worker started by hand only models that reserve nothing."""
        if self._capacity is None or not self._capacity.launcher.places_by_resources:
            return lambda w: True
        want, shapes = self._capacity.shape_for(spec), self._capacity.shapes()
        return lambda w: shapes[w.worker_id] == want if w.worker_id in shapes else spec.resources is None

    def _pick_worker(self, spec: ModelSpec) -> WorkerInfo | None:
        """The live worker with the engine and room that has the fewest instances of
        this model, then the fewest overall (pending starts counted)."""
        now = time.monotonic()
        fits = self._fits(spec)

        def load(w: WorkerInfo) -> tuple[int, int]:
            models = [r.model for r in self._view.values() if r.worker_id == w.worker_id and r.state in LIVE]
            models += [m for i, (m, _, wid) in self._pending.items() if wid == w.worker_id and i not in self._view]
            return (models.count(spec.name), len(models))

        able = [w for w in self.workers.values() if w.alive(now) and spec.engine in w.engines and fits(w)]
        able = [w for w in able if not w.max_instances or load(w)[1] < w.max_instances]
        return min(able, key=load) if able else None

    def _can_launch(self, spec: ModelSpec) -> bool:
        return self._capacity is not None and self._capacity.can_launch(self._capacity.shape_for(spec))

    async def _ask_for_capacity(self, spec: ModelSpec, instances: int) -> None:
        if self._capacity is None or not self._can_launch(spec):
            return  # _start_one said why (no worker has the engine, or every one is full)
        try:
            message = await self._capacity.ensure(self._capacity.shape_for(spec), instances, self.workers)
        except (OSError, CorralError) as exc:
            message = f"cannot launch a worker: {getattr(exc, 'message', exc)}"
            log.error("%s: %s", spec.name, message)
        self._backoff.pop(spec.name, None)  # not a failure to retry: the launcher's word says what is going on
        self._waiting[spec.name] = message

    async def _start_one(self, spec: ModelSpec) -> str | None:
        worker = self._pick_worker(spec)
        if worker is None:
            now = time.monotonic()
            if any(w.alive(now) and spec.engine in w.engines for w in self.workers.values()):
                why = f"every worker with the {spec.engine} engine is at its max_instances"
            else:
                try:
                    hint = f": {get_entry(spec.engine).install_hint()} on a worker"
                except CorralError:
                    hint = ""
                why = f"no worker has the {spec.engine} engine installed{hint}"
            self._backoff[spec.name] = (0, 0.0, why)
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

    def deployed(self) -> list[ModelSpec]:
        """The desired state as this manager last read or changed it."""
        return list(self._specs.values())

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
        self._changed_at[spec.name] = time.monotonic()
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
        self._changed_at[name] = time.monotonic()
        self._removed.add(name)
        self._operations.pop(name, None)
        self._wake.set()
        await self._audit(actor, "stop", name)

    async def scale(self, name: str, replicas: int, actor: str, detail: dict[str, Any] | None = None) -> ModelSpec:
        spec = dataclasses.replace(self.spec(name), replicas=replicas)
        await self._save(spec)
        await self._audit(actor, "scale", name, {"replicas": replicas, **(detail or {})})
        return spec

    async def set_autoscale(self, name: str, policy: AutoscalePolicy | None, actor: str) -> ModelSpec:
        """Turn autoscaling on (or change its policy) or, with None, off: the model then
        keeps its current replica count."""
        spec = self.spec(name)
        replicas = spec.replicas
        if policy is not None:
            replicas = min(max(replicas, policy.min_replicas), policy.max_replicas)
        spec = dataclasses.replace(spec, autoscale=policy, replicas=replicas)
        await self._save(spec)
        detail = dataclasses.asdict(policy) if policy is not None else {"off": True}
        await self._audit(actor, "autoscale", name, detail)
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
                new_id = await self._start_replacement(self._specs.get(spec.name, spec))
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

    async def _start_replacement(self, spec: ModelSpec) -> str | None:
        """Start one more instance; when no worker has room and a launcher can add one,
        ask it (the reconcile loop leaves a model under an operation alone) and wait for
        the worker to join."""
        new_id = await self._start_one(spec)
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        while new_id is None and self._can_launch(spec) and time.monotonic() < deadline:
            await self._ask_for_capacity(spec, 1)
            await asyncio.sleep(self._interval)
            new_id = await self._start_one(spec)
        return new_id

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
