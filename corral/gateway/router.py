"""The router: a local, watch-updated view of the registry, and the choice of an
instance for each request. No registry or controller round trip per request.

It also keeps what the gateway learns by itself: requests in flight per instance,
an EWMA of time to first token, and consecutive failures. An instance that fails
``eject_after`` times in a row is ejected for ``eject_for`` seconds (doubling while it
keeps failing), and an active health check brings it back as soon as it answers.
With ``max_concurrency`` set on a model, requests beyond it wait in a bounded queue.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from corral.core.errors import InvalidRequest, ModelNotFound, Overloaded, Unavailable
from corral.core.registry import InstanceRecord, InstanceState, Registry, Synced
from corral.core.spec import ModelKind
from corral.core.types import RESPONSE_FORMAT, TOOLS, GenerationRequest
from corral.gateway.balancers import make_balancer

log = logging.getLogger(__name__)

SERVES = frozenset({"chat", "completion", "embedding", "rerank"})
_FEATURE_NAMES = {TOOLS: ("tool calling", "tools"), RESPONSE_FORMAT: ("response_format", "response_format")}

KIND_SERVES = {
    ModelKind.LLM: frozenset({"chat", "completion"}),
    ModelKind.EMBEDDING: frozenset({"embedding"}),
    ModelKind.RERANK: frozenset({"rerank"}),
}


@dataclass(eq=False)
class Target:
    """A routable instance: its record, the client that reaches its engine, and what
    this gateway has observed of it."""

    record: InstanceRecord
    client: object  # implements the engine capability protocols (in-process or remote)
    in_flight: int = 0
    latency: float | None = None
    failures: int = 0
    ejected_until: float = 0.0
    eject_for: float = 0.0

    @property
    def instance_id(self) -> str:
        return self.record.instance_id

    @property
    def weight(self) -> float:
        return self.record.weight


Resolver = Callable[[InstanceRecord], object | None]
HealthCheck = Callable[[Target], Awaitable[bool]]


@dataclass(frozen=True)
class RouterSettings:
    eject_after: int = 3
    eject_for: float = 2.0
    eject_max: float = 30.0
    health_interval: float = 1.0
    queue_limit: int = 256  # requests waiting per model when every instance is at max_concurrency
    queue_timeout: float = 30.0
    latency_alpha: float = 0.3
    forget_after: float = 60.0  # a model without instances for this long is unknown (404), before: 503


class Router:
    def __init__(
        self,
        registry: Registry,
        resolve: Resolver,
        settings: RouterSettings | None = None,
        health_check: HealthCheck | None = None,
    ) -> None:
        self._registry = registry
        self._resolve = resolve
        self._settings = settings or RouterSettings()
        self._health_check = health_check
        self._targets: dict[str, Target] = {}
        self._by_model: dict[str, list[Target]] = {}
        self._kinds: dict[str, ModelKind] = {}
        self._balancers: dict[tuple[str, str], object] = {}
        self._queues: dict[str, collections.deque[asyncio.Future[None]]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.synced = asyncio.Event()
        self.ejections_total: dict[tuple[str, str], int] = {}  # (model, instance) -> times ejected
        self._gone_at: dict[str, float] = {}  # model -> when its last instance disappeared

    async def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._follow(), name="router-watch"))
        if self._health_check is not None:
            self._tasks.append(asyncio.create_task(self._probe_ejected(), name="router-health"))
        await asyncio.sleep(0)  # let the watch subscribe before anything is registered

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()

    async def _follow(self) -> None:
        # the watch starts with a snapshot of every live record, then streams changes
        async for event in self._registry.watch():
            if isinstance(event, Synced):
                self.synced.set()
            else:
                self._apply(event.record, event.removed)

    def _apply(self, record: InstanceRecord, removed: bool) -> None:
        self._kinds[record.model] = record.kind
        if removed:
            self._targets.pop(record.instance_id, None)
        else:
            target = self._targets.get(record.instance_id)
            if target is None:
                self._targets[record.instance_id] = Target(record, self._resolve(record))
            else:
                # update in place: requests in flight hold this object and release it later
                target.record = record
                if target.client is None:
                    target.client = self._resolve(record)
        by_model: dict[str, list[Target]] = {}
        for target in self._targets.values():
            by_model.setdefault(target.record.model, []).append(target)
        if record.model not in by_model:
            self._gone_at[record.model] = time.monotonic()
        else:
            self._gone_at.pop(record.model, None)
        self._by_model = by_model
        self._wake(record.model)

    def models(self) -> dict[str, list[InstanceRecord]]:
        return {name: [t.record for t in targets] for name, targets in self._by_model.items()}

    def queued(self) -> dict[str, int]:
        """Requests waiting for a free instance, per model."""
        return {model: len(queue) for model, queue in self._queues.items()}

    def targets(self, model: str) -> list[Target]:
        return list(self._by_model.get(model, ()))

    # -- choosing ------------------------------------------------------------------------

    def _routable(
        self, model: str, capability: str, exclude: set[str], needs: frozenset[str] = frozenset()
    ) -> tuple[list[Target], list[Target]]:
        """(routable now, ready but at their concurrency limit). ``needs``: features the
        request uses (tools, response_format) that the instance's engine must honour."""
        targets = self._by_model.get(model)
        if targets is None:
            gone_at = self._gone_at.get(model)
            if gone_at is not None and time.monotonic() - gone_at < self._settings.forget_after:
                # it had instances moments ago: they are restarting or re-registering
                raise Unavailable(f"model {model!r} has no instance right now; retry shortly")
            raise ModelNotFound(f"the model {model!r} does not exist", param="model")
        now = time.monotonic()
        ready = [t for t in targets if t.record.state is InstanceState.READY and t.client is not None]
        if ready:
            # what an instance serves is what its engine implements (an llm attached to an
            # upstream that also embeds serves embeddings), as its record says
            capable = [t for t in ready if capability in _serves(t.record)]
            if not capable:
                served = ", ".join(sorted(SERVES.intersection(*(_serves(t.record) for t in ready)))) or "nothing"
                raise InvalidRequest(f"model {model!r} serves {served}, not {capability}", param="model")
            if needs:
                ready = [t for t in capable if needs <= t.record.capabilities]
                if not ready:
                    raise _unsupported(model, capable[0].record.engine, needs - capable[0].record.capabilities)
            else:
                ready = capable
        else:
            kind = self._kinds[model]
            if capability not in KIND_SERVES[kind]:
                served = ", ".join(sorted(KIND_SERVES[kind]))
                raise InvalidRequest(
                    f"model {model!r} is an {kind.value} model: it serves {served}, not {capability}", param="model"
                )
        ready = [t for t in ready if t.instance_id not in exclude]
        healthy = [t for t in ready if t.ejected_until <= now] or ready  # all ejected: try anyway
        if not healthy:
            states = ", ".join(sorted({t.record.state.value for t in targets})) or "none"
            raise Unavailable(f"model {model!r} has no ready instance (instances: {states}); retry shortly")
        free = [t for t in healthy if not t.record.max_concurrency or t.in_flight < t.record.max_concurrency]
        return free, healthy

    def has_routable(self, model: str, capability: str, exclude: set[str], needs: frozenset[str] = frozenset()) -> bool:
        try:
            self._routable(model, capability, exclude, needs)
        except (ModelNotFound, InvalidRequest, Unavailable):
            return False
        return True

    def _choose(self, model: str, targets: list[Target], request: GenerationRequest | None) -> Target:
        policy = targets[0].record.routing
        balancer = self._balancers.get((model, policy))
        if balancer is None:
            balancer = self._balancers[(model, policy)] = make_balancer(policy)
        target: Target = balancer.pick(targets, request)  # type: ignore[attr-defined]
        target.in_flight += 1
        return target

    async def acquire(
        self, model: str, capability: str, request: GenerationRequest | None = None, exclude: set[str] | None = None
    ) -> Target:
        """Pick an instance and count a request in flight on it; ``release`` undoes it.
        While every instance is at its concurrency limit, requests wait in a bounded
        first-come-first-served queue, at most ``queue_timeout`` seconds."""
        exclude = exclude or set()
        needs = request.features() if request is not None else frozenset()
        free, _ = self._routable(model, capability, exclude, needs)  # raises for unknown models: no queue for them
        queue = self._queues.setdefault(model, collections.deque())
        if free and not queue:
            return self._choose(model, free, request)
        if len(queue) >= self._settings.queue_limit:
            raise Overloaded(f"model {model!r} is at capacity and its queue is full; retry shortly")
        deadline = time.monotonic() + self._settings.queue_timeout
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue.append(turn)
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise Overloaded(
                        f"model {model!r} stayed at capacity for {self._settings.queue_timeout:.0f}s; retry shortly"
                    )
                try:
                    await asyncio.wait_for(asyncio.shield(turn), remaining)
                except TimeoutError:
                    continue
                free, _ = self._routable(model, capability, exclude, needs)
                if free:
                    return self._choose(model, free, request)
                # woken but nothing fits this request: keep its place at the head
                turn = asyncio.get_running_loop().create_future()
                queue[0] = turn
        finally:
            if turn in queue:
                queue.remove(turn)
            self._wake(model)  # pass the turn on if there is still room

    def release(self, target: Target) -> None:
        target.in_flight -= 1
        self._wake(target.record.model)

    def _wake(self, model: str) -> None:
        queue = self._queues.get(model)
        if queue and not queue[0].done():
            queue[0].set_result(None)

    # -- what the gateway observes ------------------------------------------------------

    def observe_ttft(self, target: Target, seconds: float) -> None:
        a = self._settings.latency_alpha
        target.latency = seconds if target.latency is None else a * seconds + (1 - a) * target.latency

    def succeeded(self, target: Target) -> None:
        if target.failures or target.ejected_until or target.eject_for:
            target.failures, target.ejected_until, target.eject_for = 0, 0.0, 0.0

    def failed(self, target: Target) -> None:
        target.failures += 1
        if target.failures >= self._settings.eject_after:
            s = self._settings
            target.eject_for = min(s.eject_max, target.eject_for * 2 if target.eject_for else s.eject_for)
            target.ejected_until = time.monotonic() + target.eject_for
            key = (target.record.model, target.instance_id)
            self.ejections_total[key] = self.ejections_total.get(key, 0) + 1
            log.warning(
                "ejected instance %s of %s for %.0fs after %d failures",
                target.instance_id, target.record.model, target.eject_for, target.failures,
            )

    async def _probe_ejected(self) -> None:
        assert self._health_check is not None
        while True:
            await asyncio.sleep(self._settings.health_interval)
            now = time.monotonic()
            for target in [t for t in self._targets.values() if t.ejected_until > now]:
                try:
                    healthy = await self._health_check(target)
                except Exception:  # a probe failure is just "not healthy yet"
                    healthy = False
                if healthy:
                    log.info("instance %s answers health checks again", target.instance_id)
                    target.failures, target.ejected_until = 0, 0.0


def _serves(record: InstanceRecord) -> frozenset[str]:
    # a record without capabilities comes from a worker older than them: go by its kind
    return record.capabilities or KIND_SERVES[ModelKind(record.kind)]


def _unsupported(model: str, engine: str, missing: frozenset[str]) -> InvalidRequest:
    what, param = _FEATURE_NAMES[sorted(missing)[0]]
    return InvalidRequest(
        f"{what} is not supported by model {model!r}: its engine {engine!r} does not honour it "
        "(see `corral engines` for the engines that do)",
        param=param,
        code="unsupported_parameter",
    )
