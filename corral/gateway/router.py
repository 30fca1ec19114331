"""The router: a local, watch-updated view of the registry, and the choice of an
instance for each request. No registry or controller round trip per request."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from corral.core.errors import InvalidRequest, ModelNotFound, Unavailable
from corral.core.registry import InstanceRecord, InstanceState, Registry
from corral.core.spec import ModelKind
from corral.gateway.balancers import make_balancer

log = logging.getLogger(__name__)

KIND_SERVES = {ModelKind.LLM: frozenset({"chat", "completion"}), ModelKind.EMBEDDING: frozenset({"embedding"})}


@dataclass(eq=False)
class Target:
    """A routable instance: its record and the client that reaches its engine."""

    record: InstanceRecord
    client: object  # an engine implementing the capability protocols (in-process or remote)
    in_flight: int = 0


Resolver = Callable[[InstanceRecord], object | None]


class Router:
    def __init__(self, registry: Registry, resolve: Resolver, policy: str = "power_of_two") -> None:
        self._registry = registry
        self._resolve = resolve
        self._policy = policy
        self._targets: dict[str, Target] = {}
        self._by_model: dict[str, list[Target]] = {}
        self._kinds: dict[str, ModelKind] = {}
        self._balancers: dict[str, object] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._follow(), name="router-watch")
        await asyncio.sleep(0)  # let the watch subscribe before anything is registered

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _follow(self) -> None:
        # the watch starts with a snapshot of every live record, then streams changes
        async for event in self._registry.watch():
            self._apply(event.record, event.removed)

    def _apply(self, record: InstanceRecord, removed: bool) -> None:
        self._kinds[record.model] = record.kind
        old = self._targets.pop(record.instance_id, None)
        if not removed:
            client = old.client if old is not None and old.client is not None else self._resolve(record)
            target = Target(record, client, old.in_flight if old is not None else 0)
            self._targets[record.instance_id] = target
        self._by_model = {}
        for target in self._targets.values():
            self._by_model.setdefault(target.record.model, []).append(target)

    def models(self) -> dict[str, list[InstanceRecord]]:
        return {name: [t.record for t in targets] for name, targets in self._by_model.items()}

    def pick(self, model: str, capability: str) -> Target:
        targets = self._by_model.get(model)
        if targets is None:
            raise ModelNotFound(f"the model {model!r} does not exist", param="model")
        kind = self._kinds[model]
        if capability not in KIND_SERVES[kind]:
            served = ", ".join(sorted(KIND_SERVES[kind]))
            raise InvalidRequest(
                f"model {model!r} is an {kind.value} model: it serves {served}, not {capability}", param="model"
            )
        ready = [t for t in targets if t.record.state is InstanceState.READY and t.client is not None]
        if not ready:
            states = ", ".join(sorted({t.record.state.value for t in targets}))
            raise Unavailable(f"model {model!r} has no ready instance (instances are {states}); retry shortly")
        balancer = self._balancers.get(model)
        if balancer is None:
            balancer = self._balancers[model] = make_balancer(self._policy)
        return balancer.pick(ready)  # type: ignore[attr-defined,no-any-return]
