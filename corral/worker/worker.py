"""A Worker hosts instances of one or more model specs.

It builds each engine through the engine catalog, starts it, and keeps the registry
told about its instances. In a cluster the records are leased (``lease_ttl``) and
refreshed by ``keep_registered``: if the worker dies, its instances vanish from every
gateway's view by themselves; if the registry is briefly down, the next refresh puts
them back. ``drain`` takes the worker out of rotation before it stops.

``watch_engines`` follows each started engine's own report (``Engine.load()``): an
engine whose loop crashed and is restarting is published as ``starting`` (no gateway
routes to it) until it has restarted, and one that can no longer serve (``failure``)
as ``failed``, which the manager replaces. Health and routing then tell the truth
within ``WATCH_INTERVAL_S`` plus the registry's propagation. Nobody manages the
instances of a worker's own config file, so the worker replaces those itself: the failed
instance is stopped and a fresh one of the same spec started, with a backoff that doubles
per spec up to ``REPLACE_BACKOFF_MAX_S`` (a model that keeps failing stays visible as
failed in between, and is not restarted in a tight loop).
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

WATCH_INTERVAL_S = 0.25  # how often engines are asked whether they still serve
REPLACE_BACKOFF_S = 1.0  # first wait before a worker replaces a failed unmanaged instance
REPLACE_BACKOFF_MAX_S = 60.0


ENGINES_REFRESH_S = 60.0

class Worker:
    def __init__(
        self,
        registry: Registry,
        worker_id: str | None = None,
        address: str | None = None,
        lease_ttl: float | None = None,
        max_instances: int = 0,
    ) -> None:
        self.max_instances = max_instances  # announced to a controller, which places no more here
        self.worker_id = worker_id or f"worker-{uuid.uuid4().hex[:8]}"
        self.address = address
        self._registry = registry
        self._lease_ttl = lease_ttl
        self._instances: dict[str, Instance] = {}
        self._active: dict[str, int] = {}  # requests being served, per instance
        self._idle = asyncio.Event()
        self._idle.set()
        self._background: set[asyncio.Task[object]] = set()
        self._replace_backoff: dict[str, float] = {}  # per spec name: the next replacement's wait
        self._engines: tuple[float, list[str]] | None = None  # (when, installed engines): see ``engines``

    def engines(self) -> list[str]:
        """The engines installed here. Finding them reads every distribution's entry
        points and looks for modules on disk, tens of milliseconds: ``status`` is read
        every second (the controller's load refresh), so the list is kept for
        ``ENGINES_REFRESH_S`` (an engine installed meanwhile is seen within that)."""
        now = time.monotonic()
        if self._engines is None or now - self._engines[0] >= ENGINES_REFRESH_S:
            self._engines = (now, installed_engines())
        return self._engines[1]

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

    async def watch_engines(self, interval: float = WATCH_INTERVAL_S) -> None:
        """Forever: publish what each started engine reports about itself (see the module
        docstring). Run as a task by the process hosting the worker."""
        while True:
            await asyncio.sleep(interval)
            for instance in list(self._instances.values()):
                try:
                    await self._follow_engine(instance)
                except CorralError as exc:  # the registry is down: the next refresh carries the state
                    log.warning("cannot publish the state of %s: %s", instance.instance_id, exc.message)
                except Exception:  # an engine whose load() raises must not stop watching the others
                    log.exception("cannot read the state of instance %s", instance.instance_id)

    async def _follow_engine(self, instance: Instance) -> None:
        if instance.load_seconds is None or instance.state in (InstanceState.FAILED, InstanceState.DRAINING):
            return  # still loading (its start publishes the outcome), or on its way out
        load = instance.engine.load()
        if load.failure is not None:
            log.error(
                "instance %s of %s can no longer serve (%s); marking it failed",
                instance.instance_id, instance.spec.name, load.failure,
            )
            instance.restarting = False
            instance.set_state(InstanceState.FAILED, load.failure)
            if not instance.managed:
                self.spawn(self._replace(instance), f"replace {instance.instance_id}")
        elif load.crashes_total > load.restarts_total:  # crashed, restart pending
            if instance.state is not InstanceState.READY:
                return
            log.warning("instance %s of %s: engine loop crashed; not ready until it restarts",
                        instance.instance_id, instance.spec.name)
            instance.restarting = True
            instance.set_state(InstanceState.STARTING, "the engine loop crashed; restarting it")
        elif instance.restarting:
            instance.restarting = False
            if instance.state is not InstanceState.STARTING:
                return
            log.info("instance %s of %s serves again", instance.instance_id, instance.spec.name)
            instance.set_state(InstanceState.READY)
        else:
            return
        await self._publish(instance)

    async def _replace(self, failed: Instance) -> None:
        """Replace a failed instance of the worker's own config (no manager will)."""
        name = failed.spec.name
        delay = self._replace_backoff.get(name, REPLACE_BACKOFF_S)
        self._replace_backoff[name] = min(delay * 2, REPLACE_BACKOFF_MAX_S)
        log.warning("replacing failed instance %s of %s in %.1fs", failed.instance_id, name, delay)
        await asyncio.sleep(delay)
        if self._instances.get(failed.instance_id) is not failed:
            return  # stopped or drained meanwhile: nothing to replace
        await self.stop_instance(failed.instance_id)
        replacement_id = f"{name}-{uuid.uuid4().hex[:8]}"
        try:
            await self.start_instance(failed.spec, replacement_id)
        except CorralError as exc:  # start_instance left it registered as failed: try again later
            log.error("replacement of %s failed: %s", name, exc.message)
            replacement = self._instances.get(replacement_id)
            if replacement is not None:
                self.spawn(self._replace(replacement), f"replace {replacement_id}")
            return
        log.info("failed instance %s of %s replaced", failed.instance_id, name)

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
        engines = self.engines()
        down = False
        while True:
            try:
                if directory is not None:
                    await directory.announce_worker(
                        self.worker_id, self.address, engines, self._lease_ttl, self.max_instances
                    )
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
                    "crashes_total": load.crashes_total,
                    "restarts_total": load.restarts_total,
                    "failure": load.failure,
                    "requests_active": self._active.get(instance.instance_id, 0),
                    "last_error": instance.last_error,
                    "managed": instance.managed,
                    "load_seconds": instance.load_seconds,
                }
            )
        return {"worker_id": self.worker_id, "address": self.address, "engines": self.engines(), "instances": out}
