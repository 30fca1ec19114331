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
from collections.abc import Iterator
from typing import Any

from corral.core.errors import CorralError
from corral.core.registry import InstanceRecord, InstanceState, Registry
from corral.core.spec import ModelSpec
from corral.engines.catalog import get_entry
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

    def get(self, instance_id: str) -> Instance | None:
        return self._instances.get(instance_id)

    def instances(self) -> list[Instance]:
        return list(self._instances.values())

    def _record(self, instance: Instance) -> InstanceRecord:
        return instance.record(self.address)

    async def _publish(self, instance: Instance) -> None:
        await self._registry.put(self._record(instance), ttl=self._lease_ttl)

    async def start_instance(self, spec: ModelSpec) -> Instance:
        """Create and start one instance of ``spec``. On failure the instance stays
        registered as FAILED with its error, and the error is raised."""
        engine = get_entry(spec.engine).create(spec)
        instance = Instance(f"{spec.name}-{uuid.uuid4().hex[:8]}", spec, engine, self.worker_id)
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
        log.info(
            "model %s ready (instance %s, engine %s, %.1fs)",
            spec.name, instance.instance_id, spec.engine, time.monotonic() - started,
        )
        instance.set_state(InstanceState.READY)
        await self._publish(instance)
        return instance

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
        await asyncio.gather(*(self.stop_instance(i) for i in list(self._instances)), return_exceptions=True)

    # -- cluster membership -------------------------------------------------------------

    async def keep_registered(self) -> None:
        """Refresh every instance's lease at a third of its ttl, forever."""
        assert self._lease_ttl is not None
        down = False
        while True:
            await asyncio.sleep(self._lease_ttl / 3)
            try:
                for instance in list(self._instances.values()):
                    await self._publish(instance)
                if down:
                    log.info("registry reachable again; instances re-registered")
                down = False
            except CorralError as exc:
                if not down:
                    log.warning("cannot refresh registration (will retry): %s", exc.message)
                down = True

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
                }
            )
        return {"worker_id": self.worker_id, "address": self.address, "instances": out}
