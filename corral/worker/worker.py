"""A Worker hosts instances of one or more model specs.

It builds each engine through the engine catalog, starts it, and keeps the registry
told about its instances. In a cluster the records are leased (``lease_ttl``) and
refreshed by ``keep_registered``: if the worker dies, its instances vanish from every
gateway's view by themselves; if the registry is briefly down, the next refresh puts
them back. ``drain`` takes the worker out of rotation before it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Coroutine, Iterator
from typing import Any

from corral.core.errors import CorralError, NotFound
from corral.core.registry import InstanceRecord, InstanceState, Registry, WorkerDirectory
from corral.core.spec import ModelSpec
from corral.engines.catalog import get_entry, installed_engines
from corral.worker.instance import Instance

log = logging.getLogger(__name__)


class Worker:
    def __init__(
        self,
        registry: Registry,
        worker_id: str | None = None,
        address: str | None = None,
        lease_ttl: float | None = None,
    ) -> None:
        self.worker_id = worker_id or f"worker-{uuid.uuid4().hex[:8]}"
        self.address = address
        self._registry = registry
        self._lease_ttl = lease_ttl
        self._instances: dict[str, Instance] = {}
        self._active: dict[str, int] = {}  # requests being served, per instance
        self._idle = asyncio.Event()
        self._idle.set()
        self._background: set[asyncio.Task[object]] = set()

    def spawn(self, coro: Coroutine[Any, Any, object], name: str) -> None:
        """Run a management action (start, drain) after the API call has answered."""
        task: asyncio.Task[object] = asyncio.create_task(coro, name=name)
        self._background.add(task)

        def done(t: asyncio.Task[object]) -> None:
            self._background.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.warning("%s failed: %s", name, t.exception())

        task.add_done_callback(done)

    def get(self, instance_id: str) -> Instance | None:
        return self._instances.get(instance_id)

    def instances(self) -> list[Instance]:
        return list(self._instances.values())

    def _record(self, instance: Instance) -> InstanceRecord:
        return instance.record(self.address)

    async def _publish(self, instance: Instance) -> None:
        await self._registry.put(self._record(instance), ttl=self._lease_ttl)

    async def start_instance(self, spec: ModelSpec, instance_id: str | None = None, managed: bool = False) -> Instance:
        """Create and start one instance of ``spec``. On failure the instance stays
        registered as FAILED with its error, and the error is raised."""
        engine = get_entry(spec.engine).create(spec)
        instance_id = instance_id or f"{spec.name}-{uuid.uuid4().hex[:8]}"
        instance = Instance(instance_id, spec, engine, self.worker_id, managed=managed)
        self._instances[instance.instance_id] = instance
        await self._publish(instance)
        started = time.monotonic()
        try:
            await engine.start()
        except CorralError as exc:
            instance.set_state(InstanceState.FAILED, exc.message)
            await self._publish(instance)
            raise
        except Exception as exc:  # engine libraries raise anything on a bad model; keep the message
            message = f"{type(exc).__name__}: {exc}"
            log.exception("instance %s of %s failed to start", instance.instance_id, spec.name)
            instance.set_state(InstanceState.FAILED, message)
            await self._publish(instance)
            raise CorralError(f"model {spec.name!r} failed to start: {message}") from exc
        instance.load_seconds = time.monotonic() - started
        log.info(
            "model %s ready (instance %s, engine %s, %.1fs)",
            spec.name, instance.instance_id, spec.engine, time.monotonic() - started,
        )
        instance.set_state(InstanceState.OFFLINE if spec.offline else InstanceState.READY)
        await self._publish(instance)
        return instance

    async def start_all(self, specs: list[ModelSpec], managed: bool = False) -> list[CorralError]:
        """Start every replica of every spec concurrently; the errors of those that failed."""
        jobs = [self.start_instance(spec, managed=managed) for spec in specs for _ in range(spec.replicas)]
        results = await asyncio.gather(*jobs, return_exceptions=True)
        errors: list[CorralError] = []
        for result in results:
            if isinstance(result, CorralError):
                errors.append(result)
            elif isinstance(result, BaseException):
                errors.append(CorralError(f"{type(result).__name__}: {result}"))
        return errors

    async def set_offline(self, instance_id: str, offline: bool) -> Instance:
        """Offline: loaded, but gateways send it nothing. Only ready/offline instances switch."""
        instance = self._instances.get(instance_id)
        if instance is None:
            raise NotFound(f"no instance {instance_id!r} on this worker")
        if instance.state in (InstanceState.READY, InstanceState.OFFLINE):
            instance.set_state(InstanceState.OFFLINE if offline else InstanceState.READY)
            await self._publish(instance)
        return instance

    async def drain_instance(self, instance_id: str, timeout: float, grace: float = 1.0) -> None:
        """Take one instance out of rotation, let its requests finish (at most
        ``timeout``), then stop it."""
        instance = self._instances.get(instance_id)
        if instance is None:
            return
        if instance.state is not InstanceState.FAILED:
            instance.set_state(InstanceState.DRAINING)
            with contextlib.suppress(CorralError):
                await self._publish(instance)
            await asyncio.sleep(grace)  # gateways' views catch up before we wait for idleness
            deadline = time.monotonic() + timeout
            while self._active.get(instance_id, 0) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        await self.stop_instance(instance_id)

    async def stop_instance(self, instance_id: str) -> None:
        instance = self._instances.pop(instance_id, None)
        if instance is None:
            return
        instance.set_state(InstanceState.DRAINING)
        try:
            await self._publish(instance)
        except CorralError:
            pass  # the registry being down must not keep the engine running
        try:
            await instance.engine.stop()
        finally:
            with contextlib.suppress(CorralError):
                await self._registry.remove(instance_id)

    async def stop(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*(self.stop_instance(i) for i in list(self._instances)), return_exceptions=True)

    # -- cluster membership -------------------------------------------------------------

    async def keep_registered(self) -> None:
        """Refresh every instance's lease at a third of its ttl, forever; a worker that
        joined through a controller also tells it that it is alive (``announce_worker``)."""
        assert self._lease_ttl is not None
        directory = self._registry if isinstance(self._registry, WorkerDirectory) else None
        engines = installed_engines()
        down = False
        while True:
            try:
                if directory is not None:
                    await directory.announce_worker(self.worker_id, self.address, engines, self._lease_ttl)
                for instance in list(self._instances.values()):
                    await self._publish(instance)
                if down:
                    log.info("registry reachable again; instances re-registered")
                down = False
            except CorralError as exc:
                if not down:
                    log.warning("cannot refresh registration (will retry): %s", exc.message)
                down = True
            await asyncio.sleep(self._lease_ttl / 3)

    @contextlib.contextmanager
    def track(self, instance: Instance) -> Iterator[None]:
        """Counts a request being served, so ``drain`` knows when the worker is idle."""
        key = instance.instance_id
        self._active[key] = self._active.get(key, 0) + 1
        self._idle.clear()
        try:
            yield
        finally:
            self._active[key] -= 1
            if not any(self._active.values()):
                self._idle.set()

    async def drain(self, timeout: float, grace: float = 1.0) -> None:
        """Stop taking traffic: mark every instance DRAINING (gateways stop routing to
        it), wait ``grace`` for their views to update, then for requests in flight to
        finish, at most ``timeout`` seconds."""
        for instance in list(self._instances.values()):
            if instance.state is InstanceState.READY:
                instance.set_state(InstanceState.DRAINING)
                with contextlib.suppress(CorralError):
                    await self._publish(instance)
        await asyncio.sleep(grace)
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            log.warning("drain timeout: %d requests still running", sum(self._active.values()))

    def status(self) -> dict[str, Any]:
        out = []
        for instance in self._instances.values():
            load = instance.engine.load()
            out.append(
                {
                    "id": instance.instance_id,
                    "model": instance.spec.name,
                    "engine": instance.spec.engine,
                    "state": instance.state.value,
                    "in_flight": load.in_flight,
                    "queued": load.queued,
                    "completed_total": load.completed_total,
                    "cancelled_total": load.cancelled_total,
                    "requests_active": self._active.get(instance.instance_id, 0),
                    "last_error": instance.last_error,
                    "managed": instance.managed,
                    "load_seconds": instance.load_seconds,
                }
            )
        return {"worker_id": self.worker_id, "address": self.address, "engines": installed_engines(), "instances": out}
