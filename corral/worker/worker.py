"""A Worker hosts instances of one or more model specs.

It builds each engine through the engine catalog, starts it, and keeps the registry
told about its instances' states. The gateway of the same process reaches instances
through ``get`` (standalone: zero network hops).
"""

from __future__ import annotations

import asyncio
import logging
import uuid

from corral.core.errors import CorralError
from corral.core.registry import InstanceState, Registry
from corral.core.spec import ModelSpec
from corral.engines.catalog import get_entry
from corral.worker.instance import Instance

log = logging.getLogger(__name__)


class Worker:
    def __init__(self, registry: Registry, worker_id: str | None = None) -> None:
        self.worker_id = worker_id or f"worker-{uuid.uuid4().hex[:8]}"
        self._registry = registry
        self._instances: dict[str, Instance] = {}

    def get(self, instance_id: str) -> Instance | None:
        return self._instances.get(instance_id)

    def instances(self) -> list[Instance]:
        return list(self._instances.values())

    async def start_instance(self, spec: ModelSpec) -> Instance:
        """Create and start one instance of ``spec``. On failure the instance stays
        registered as FAILED with its error, and the error is raised."""
        engine = get_entry(spec.engine).create(spec)
        instance = Instance(f"{spec.name}-{uuid.uuid4().hex[:8]}", spec, engine, self.worker_id)
        self._instances[instance.instance_id] = instance
        await self._registry.put(instance.record())
        started = asyncio.get_running_loop().time()
        try:
            await engine.start()
        except CorralError as exc:
            await self._registry.put(instance.with_state(InstanceState.FAILED, exc.message))
            raise
        except Exception as exc:  # engine libraries raise anything on a bad model; keep the message
            message = f"{type(exc).__name__}: {exc}"
            log.exception("instance %s of %s failed to start", instance.instance_id, spec.name)
            await self._registry.put(instance.with_state(InstanceState.FAILED, message))
            raise CorralError(f"model {spec.name!r} failed to start: {message}") from exc
        log.info(
            "model %s ready (instance %s, engine %s, %.1fs)",
            spec.name,
            instance.instance_id,
            spec.engine,
            asyncio.get_running_loop().time() - started,
        )
        await self._registry.put(instance.with_state(InstanceState.READY))
        return instance

    async def stop_instance(self, instance_id: str) -> None:
        instance = self._instances.pop(instance_id, None)
        if instance is None:
            return
        await self._registry.put(instance.with_state(InstanceState.DRAINING))
        try:
            await instance.engine.stop()
        finally:
            await self._registry.remove(instance_id)

    async def stop(self) -> None:
        await asyncio.gather(*(self.stop_instance(i) for i in list(self._instances)), return_exceptions=True)
