"""The router: a local, watch-updated view of the registry, and the choice of an
instance for each request. No registry or controller round trip per request.

It also keeps what the gateway learns by itself: requests in flight per instance,
an EWMA of time to first token, and consecutive failures. An instance that fails
``eject_after`` times in a row is ejected for ``eject_for`` seconds (doubling while it
keeps failing), and an active health check brings it back as soon as it answers.
Ejection is capped (Envoy's ``max_ejection_percent``): it never leaves a model with
fewer than half its ready instances in rotation, so never ejects the last one; such an
instance keeps its traffic, which fails fast with the instance's own error while it is
down. Only failures count: a refusal for load (``Overloaded``, the gateway's or the
engine's queue) is not one.
With ``max_concurrency`` set on a model, requests beyond it wait in a bounded queue.

A model whose instances are all starting (loading, or restarting in place after an
engine crash) holds its requests in that queue too, up to ``queue_timeout``, so an
in-place restart is a pause, not a burst of 503s.
An autoscaled model has a ``standby`` record (published by its manager, never routed
to): while it has no ready instance (scaled to zero, or waking), requests wait in the
same queue, up to the record's ``cold_start_timeout_s``, instead of getting a 503, and
``on_cold`` tells the autoscaler at once so it need not wait for its next look.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from corral.core.demand import GatewayDemand
from corral.core.errors import InvalidRequest, ModelNotFound, Overloaded, Unavailable
from corral.core.registry import InstanceRecord, InstanceState, Registry, Synced
from corral.core.spec import ModelKind
from corral.core.types import COUNT_TOKENS, RESPONSE_FORMAT, TOOLS, GenerationRequest
from corral.gateway.balancers import make_balancer

log = logging.getLogger(__name__)

SERVES = frozenset({"chat", "completion", "embedding", "rerank", COUNT_TOKENS})
_FEATURE_NAMES = {
    TOOLS: ("tool calling", "tools"), RESPONSE_FORMAT: ("response_format", "response_format"),
    COUNT_TOKENS: ("counting tokens", "model"),
}

KIND_SERVES = {
    ModelKind.LLM: frozenset({"chat", "completion", COUNT_TOKENS}),
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
TTFT_SAMPLES = 2048  # per model, for the autoscaler's p90
TTFT_LOOK_BACK_S = 30.0
ColdHook = Callable[[str], None]  # a request waits for a model with no ready instance


@dataclass(frozen=True)
class RouterSettings:
    eject_after: int = 3
    eject_for: float = 2.0
    eject_max: float = 30.0
    max_ejection_percent: float = 50.0  # of a model's ready instances ejected at once (never the last one)
    health_interval: float = 1.0
    queue_limit: int = 256  # requests waiting per model when every instance is at max_concurrency
    queue_timeout: float = 30.0
    latency_alpha: float = 0.3
    forget_after: float = 60.0  # a model without instances for this long is unknown (404), before: 503
    sync_timeout: float = 10.0  # how long a request waits for the registry's first snapshot


class Router:
    def __init__(
        self,
        registry: Registry,
        resolve: Resolver,
        settings: RouterSettings | None = None,
        health_check: HealthCheck | None = None,
        on_cold: ColdHook | None = None,
    ) -> None:
        self._registry = registry
        self._on_cold = on_cold
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
        self._ttfts: dict[str, collections.deque[tuple[float, float]]] = {}  # model -> (when, seconds)

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

    async def wait_synced(self) -> None:
        """Return once the view holds the registry's first snapshot. Before it, every
        model looks unknown: a gateway that has just (re)started would answer 404 for
        models that exist, so requests wait for it, and get a 503 if it does not come."""
        if self.synced.is_set():
            return
        try:
            await asyncio.wait_for(self.synced.wait(), self._settings.sync_timeout)
        except TimeoutError:
            raise Unavailable("the gateway has not loaded the registry's instances yet; retry shortly") from None

    def models(self) -> dict[str, list[InstanceRecord]]:
        return {name: [t.record for t in targets] for name, targets in self._by_model.items()}

    def queued(self) -> dict[str, int]:
        """Requests waiting for a free instance, per model."""
        return {model: len(queue) for model, queue in self._queues.items()}

    def cold_waiting(self) -> dict[str, int]:
        """Requests waiting for an autoscaled model that has no ready instance, per model."""
        return {m: len(q) for m, q in self._queues.items() if q and self._standby(m) is not None and not self._has_ready(m)}

    def gateway_demand(self) -> dict[str, GatewayDemand]:
        """This gateway's view of demand per model (``corral.core.demand``)."""
        cold = self.cold_waiting()
        models = set(self._queues) | set(self._ttfts)
        out = {m: GatewayDemand(len(self._queues.get(m, ())), cold.get(m, 0), self.ttft_p90(m)) for m in models}
        return {m: d for m, d in out.items() if d.waiting or d.ttft_p90_s is not None}

    def _standby(self, model: str) -> InstanceRecord | None:
        for target in self._by_model.get(model, ()):
            if target.record.state is InstanceState.STANDBY:
                return target.record
        return None

    def _starting(self, model: str) -> bool:
        return any(t.record.state is InstanceState.STARTING for t in self._by_model.get(model, ()))

    def _has_ready(self, model: str) -> bool:
        return any(t.record.state is InstanceState.READY and t.client is not None for t in self._by_model.get(model, ()))

    def targets(self, model: str) -> list[Target]:
        """The model's instances (its standby record, not being one, left out)."""
        return [t for t in self._by_model.get(model, ()) if t.record.state is not InstanceState.STANDBY]

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
            if not capable and capability == COUNT_TOKENS:  # a chat model whose engine cannot count
                raise _unsupported(model, ready[0].record.engine, frozenset({COUNT_TOKENS}))
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
        if not healthy and not exclude and (self._standby(model) is not None or self._starting(model)):
            # an autoscaled model waking up, or an instance (re)starting (an in-place
            # engine restart is published a beat after the engine has recovered): the
            # caller waits for it rather than turning a restart into 503s
            return [], []
        if not healthy:
            states = ", ".join(sorted({t.record.state.value for t in targets})) or "none"
            raise Unavailable(f"model {model!r} has no ready instance (instances: {states}); retry shortly")
        free = [t for t in healthy if not t.record.max_concurrency or t.in_flight < t.record.max_concurrency]
        return free, healthy

    def has_routable(self, model: str, capability: str, exclude: set[str], needs: frozenset[str] = frozenset()) -> bool:
        try:
            free, held = self._routable(model, capability, exclude, needs)
        except (ModelNotFound, InvalidRequest, Unavailable):
            return False
        return bool(free or held)  # neither: only waking or starting instances

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
        await self.wait_synced()
        exclude = exclude or set()
        needs = request.features() if request is not None else frozenset()
        free, _ = self._routable(model, capability, exclude, needs)  # raises for unknown models: no queue for them
        queue = self._queues.setdefault(model, collections.deque())
        if free and not queue:
            return self._choose(model, free, request)
        if len(queue) >= self._settings.queue_limit:
            raise Overloaded(f"model {model!r} is at capacity and its queue is full; retry shortly")
        timeout = self._settings.queue_timeout
        standby = self._standby(model) if not free else None
        if standby is not None:
            timeout = max(timeout, standby.cold_start_timeout_s)
            if self._on_cold is not None:
                self._on_cold(model)
        deadline = time.monotonic() + timeout
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue.append(turn)
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0 and standby is not None and not self._has_ready(model):
                    raise Unavailable(
                        f"model {model!r} is scaled to zero and no instance was ready within {timeout:.0f}s"
                        f"{self._wake_problem(model)}; retry shortly"
                    )
                if remaining <= 0 and not self._has_ready(model):
                    raise Unavailable(
                        f"model {model!r} has no ready instance: its instances were still starting after "
                        f"{timeout:.0f}s{self._wake_problem(model)}; retry shortly"
                    )
                if remaining <= 0:
                    raise Overloaded(
                        f"model {model!r} stayed at capacity for {self._settings.queue_timeout:.0f}s; retry shortly"
                    )
                try:
                    await asyncio.wait_for(asyncio.shield(turn), remaining)
                except TimeoutError:
                    continue
                if standby is not None and (problem := self._load_failure(model)) is not None:
                    raise Unavailable(f"model {model!r} could not be woken up: {problem}")
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

    def _load_failure(self, model: str) -> str | None:
        """The error of a waking model whose instances all failed (none ready or starting)."""
        targets = self._by_model.get(model, ())
        if any(t.record.state in (InstanceState.READY, InstanceState.STARTING) for t in targets):
            return None
        errors = [t.record.last_error or "failed" for t in targets if t.record.state is InstanceState.FAILED]
        return errors[-1] if errors else None

    def _wake_problem(self, model: str) -> str:
        """Why a waking model has no ready instance, if its instances say (a load error)."""
        errors = [t.record.last_error for t in self._by_model.get(model, ()) if t.record.last_error]
        return f" (last error: {errors[-1]})" if errors else ""

    def release(self, target: Target) -> None:
        target.in_flight -= 1
        self._wake(target.record.model)

    def _wake(self, model: str) -> None:
        queue = self._queues.get(model)
        if queue and not queue[0].done():
            queue[0].set_result(None)

    # -- what the gateway observes ------------------------------------------------------

    def observe_ttft(self, target: Target, seconds: float) -> None:
        samples = self._ttfts.setdefault(target.record.model, collections.deque(maxlen=TTFT_SAMPLES))
        samples.append((time.monotonic(), seconds))
        a = self._settings.latency_alpha
        target.latency = seconds if target.latency is None else a * seconds + (1 - a) * target.latency

    def ttft_p90(self, model: str, look_back: float = TTFT_LOOK_BACK_S) -> float | None:
        """Time to first token p90 of the model's requests of the last ``look_back`` seconds."""
        since = time.monotonic() - look_back
        recent = sorted(s for at, s in self._ttfts.get(model, ()) if at >= since)
        return recent[min(len(recent) - 1, int(0.9 * len(recent)))] if recent else None

    def succeeded(self, target: Target) -> None:
        if target.failures or target.ejected_until or target.eject_for:
            target.failures, target.ejected_until, target.eject_for = 0, 0.0, 0.0

    def failed(self, target: Target) -> None:
        target.failures += 1
        if target.failures >= self._settings.eject_after:
            s = self._settings
            if not self._may_eject(target):
                if target.failures == s.eject_after:  # once per failing streak
                    log.warning(
                        "instance %s of %s failed %d times in a row; not ejected: it would leave fewer than "
                        "%g%% of the model's ready instances in rotation",
                        target.instance_id, target.record.model, target.failures, 100 - s.max_ejection_percent,
                    )
                return
            target.eject_for = min(s.eject_max, target.eject_for * 2 if target.eject_for else s.eject_for)
            target.ejected_until = time.monotonic() + target.eject_for
            key = (target.record.model, target.instance_id)
            self.ejections_total[key] = self.ejections_total.get(key, 0) + 1
            log.warning(
                "ejected instance %s of %s for %.0fs after %d failures",
                target.instance_id, target.record.model, target.eject_for, target.failures,
            )

    def _may_eject(self, target: Target) -> bool:
        """Whether ejecting ``target`` keeps the others of its model within the cap."""
        now = time.monotonic()
        ready = [
            t for t in self._by_model.get(target.record.model, ())
            if t.record.state is InstanceState.READY and t.client is not None
        ]
        ejected = sum(1 for t in ready if t is not target and t.ejected_until > now)
        return ejected + 1 <= len(ready) * self._settings.max_ejection_percent / 100

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
