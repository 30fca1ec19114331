"""``--launcher ray``: workers placed on a Ray cluster by their model's resources.

The controller connects to the cluster as a Ray driver in its own namespace. For each
instance that needs a worker it creates a named, detached ``WorkerHost`` actor
(``corral.controller.ray_actor``) requesting exactly the model's ``resources``, so Ray
puts it on a node with room; the actor runs ``corral worker`` there, which joins the
controller like any worker (one instance per worker: the reservation is the instance's).

Supervision (every ``SUPERVISE_S``): each actor is asked for its worker's exit code. A
worker that exited, an actor that died or an actor that has not answered for a lease
TTL (its node is gone) is released (the actor killed, so Ray frees its resources) and
forgotten; the manager sees the worker's instances expire with its lease and asks for
new workers, which Ray places wherever there is room, after a backoff that doubles per
loss of the same shape. A launch Ray cannot place yet says so through ``waiting``
("waiting for Ray resources: ..."), checked against what the cluster's nodes have.
``close`` (the controller is stopping) drains and releases every worker; ``open`` adopts
the actors a previous run of this controller left alive (same namespace), so a restart
does not double them.

Ray is imported only here (and inside the actor), when this launcher is chosen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from corral.controller.ray_actor import WorkerHost
from corral.core.errors import ConfigError
from corral.core.launcher import LaunchedWorker, WorkerShape
from corral.core.spec import Resources
from corral.core.state import resources_from_dict

log = logging.getLogger(__name__)

SUPERVISE_S = 0.5
NODES_EVERY_S = 2.0  # how often the nodes' resources are read for the waiting message
BACKOFF_S, BACKOFF_MAX_S = 1.0, 60.0
WAITING_AFTER_S = 1.0  # a launch not placed after this long is reported as waiting
ACTOR_PREFIX = "corral-worker-"
CONNECT_TIMEOUT_S = 5.0
_UNANSWERED = object()  # a poll that got no answer (not an exit code)


def ray_request(resources: Resources | None) -> dict[str, float]:
    """A model's resources in Ray's names (``CPU``, ``GPU``, ``memory`` in bytes, custom
    names as they are). Keys left out ask for none; no ``resources`` at all asks for one
    CPU, as a Ray actor does by default."""
    if resources is None:
        return {"CPU": 1.0}
    out = {"CPU": resources.num_cpus or 0.0}
    if resources.num_gpus:
        out["GPU"] = resources.num_gpus
    if resources.memory_gb:
        out["memory"] = float(int(resources.memory_gb * 1024**3))
    out.update(resources.custom)
    return out


def unplaceable(request: dict[str, float], nodes: list[dict[str, float]]) -> bool:
    """Whether no node has ``request`` in total (not just free now)."""
    return not any(all(node.get(k, 0.0) >= v for k, v in request.items() if v > 0) for node in nodes)


def _shape_json(shape: WorkerShape) -> dict[str, Any]:
    return {"engine": shape.engine, "resources": shape.resources.as_dict() if shape.resources is not None else None}


def _shape_from(data: dict[str, Any]) -> WorkerShape:
    raw = data.get("resources")
    return WorkerShape(str(data["engine"]), resources_from_dict(raw) if raw is not None else None)


@dataclass
class _Actor:
    worker_id: str
    shape: WorkerShape
    handle: Any = None  # the Ray actor handle, once created
    started_at: float = field(default_factory=time.monotonic)
    asked_at: float = 0.0  # when the actor was created (placement asked of Ray)
    state: str = "waiting"
    node: str = ""
    detail: str = ""
    unanswered_since: float | None = None
    bring_up: asyncio.Task[None] | None = None


class RayLauncher:
    name = "ray"
    places_by_resources = True
    per_worker = 1  # each instance its own worker, so the actor's reservation is the instance's

    def __init__(
        self, address: str, namespace: str, controller_url: str, cluster_token: str | None,
        drain_timeout: float = 30.0, lease_ttl: float = 5.0,
    ) -> None:
        self._address = address
        self._namespace = namespace
        self._url = controller_url
        self._token = cluster_token
        self._drain_timeout = drain_timeout
        self._lease_ttl = lease_ttl
        self._actors: dict[str, _Actor] = {}
        self._losses: dict[WorkerShape, tuple[int, float]] = {}  # shape -> (losses in a row, last at)
        self._nodes: list[dict[str, float]] = []  # total resources of each alive node
        self._nodes_at = 0.0
        self._supervisor: asyncio.Task[None] | None = None
        self._ray: Any = None
        self._host_class: Any = None  # WorkerHost as a Ray actor class, made once

    # -- lifecycle ---------------------------------------------------------------------

    async def open(self) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigError('--launcher ray needs Ray: pip install "corral[ray]"') from None
        self._ray = ray
        await self._probe()
        # blocking, once, before the controller serves: ray.init is not made for a thread.
        # It replaces the SIGTERM handler with one that exits at once: the server's own
        # goes back, so a SIGTERM still drains and releases the launched workers (close)
        on_term = signal.getsignal(signal.SIGTERM)
        try:
            ray.init(address=self._address, namespace=self._namespace, log_to_driver=False,
                     logging_level=logging.WARNING, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ConfigError(f"cannot connect to the Ray cluster at {self._address}: {exc}") from None
        finally:
            if on_term is not None:
                signal.signal(signal.SIGTERM, on_term)
        self._host_class = ray.remote(WorkerHost)
        log.info("connected to the Ray cluster at %s (namespace %s)", self._address, self._namespace)
        await self._refresh_nodes()
        await self._adopt()
        self._supervisor = asyncio.create_task(self._supervise(), name="ray-launcher")

    async def _probe(self) -> None:
        """Refuse an address nothing answers at: ray.init would retry for minutes."""
        host, _, port = self._address.rpartition(":")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host.strip("[]"), int(port)), CONNECT_TIMEOUT_S)
        except ValueError:
            raise ConfigError(f"the Ray address {self._address!r} is not HOST:PORT") from None
        except (OSError, TimeoutError) as exc:
            raise ConfigError(f"cannot reach the Ray cluster at {self._address}: {exc or 'timed out'}") from None
        writer.close()

    async def _adopt(self) -> None:
        """Take over the workers a previous run of this controller left alive: they keep
        joining it, so launching new ones would double them."""
        ray = self._ray
        names = await asyncio.to_thread(ray.util.list_named_actors)
        for name in (n for n in names if isinstance(n, str) and n.startswith(ACTOR_PREFIX)):
            try:
                handle = await asyncio.to_thread(ray.get_actor, name)
                info = await asyncio.wait_for(handle.info.remote(), 10)
            except (ValueError, TimeoutError, ray.exceptions.RayError) as exc:
                log.warning("cannot adopt Ray actor %s: %s", name, exc)
                continue
            if not info.get("running"):
                log.info("releasing Ray actor %s: its worker is not running", name)
                ray.kill(handle, no_restart=True)
                continue
            actor = _Actor(str(info["worker_id"]), _shape_from(info["shape"]), handle, state="running")
            actor.node, actor.asked_at = str(info.get("node", "")), time.monotonic()
            actor.detail = f"pid {info.get('pid')} on {info.get('host')}:{info.get('port')}, log {info.get('log')} (adopted)"
            self._actors[actor.worker_id] = actor
            log.info("adopted worker %s on Ray node %s", actor.worker_id, actor.node)

    async def close(self) -> None:
        if self._supervisor is not None:
            self._supervisor.cancel()
        await asyncio.gather(*(self.stop(w) for w in list(self._actors)), return_exceptions=True)
        if self._ray is not None:
            with contextlib.suppress(Exception):
                self._ray.shutdown()

    # -- the seam ----------------------------------------------------------------------

    def can_launch(self, shape: WorkerShape) -> bool:
        return True  # the engine is installed on the cluster's nodes (docs/ray.md); a missing one fails the instance

    async def launch(self, shape: WorkerShape) -> str:
        worker_id = f"ray-{uuid.uuid4().hex[:8]}"
        actor = _Actor(worker_id, shape)
        self._actors[worker_id] = actor
        losses, _ = self._losses.get(shape, (0, 0.0))
        delay = min(BACKOFF_MAX_S, BACKOFF_S * 2 ** (losses - 1)) if losses else 0.0
        actor.detail = f"starting in {delay:.0f}s (after {losses} lost)" if delay else ""
        actor.bring_up = asyncio.create_task(self._bring_up(actor, delay), name=f"ray {worker_id}")
        if self._supervisor is None:
            self._supervisor = asyncio.create_task(self._supervise(), name="ray-launcher")
        return worker_id

    async def _bring_up(self, actor: _Actor, delay: float) -> None:
        ray = self._ray
        await asyncio.sleep(delay)
        request = ray_request(actor.shape.resources)
        custom = {k: v for k, v in request.items() if k not in ("CPU", "GPU", "memory")}
        options: dict[str, Any] = {
            "name": ACTOR_PREFIX + actor.worker_id, "lifetime": "detached", "max_restarts": 0,
            "num_cpus": request["CPU"], "num_gpus": request.get("GPU", 0), "resources": custom,
            "scheduling_strategy": "SPREAD",  # replicas of a model apart, as Ray Serve places replicas
        }
        if "memory" in request:
            options["memory"] = request["memory"]
        try:
            actor.handle = self._host_class.options(**options).remote(actor.worker_id, _shape_json(actor.shape))
            actor.asked_at = time.monotonic()
            info = await actor.handle.start.remote(self._url, self._token, self._lease_ttl, self._drain_timeout)
        except Exception as exc:  # RayError, or options Ray refused: the launch is lost, the manager asks again
            self._lose(actor, f"the actor failed to start: {exc}")
            return
        actor.state, actor.node = "running", str(info["node"])
        actor.detail = f"pid {info['pid']} on {info['host']}:{info['port']}, log {info['log']}"
        log.info("launched worker %s on Ray node %s (%s)", actor.worker_id, actor.node, actor.detail)

    def waiting(self, shape: WorkerShape) -> str | None:
        now = time.monotonic()
        stuck = [a for a in self._actors.values()
                 if a.shape == shape and a.state == "waiting" and a.asked_at and now - a.asked_at > WAITING_AFTER_S]
        if not stuck:
            return None
        what = shape.resources.describe() if shape.resources is not None else "CPU=1"
        if unplaceable(ray_request(shape.resources), self._nodes):
            why = "no node of the Ray cluster has that much (add a node that has, or change the model's resources)"
        else:
            why = "every node that has them is busy"
        return f"waiting for Ray resources: {what}: {why}"

    async def stop(self, worker_id: str) -> None:
        actor = self._actors.pop(worker_id, None)
        if actor is None:
            return
        actor.state = "stopping"
        if actor.bring_up is not None and not actor.bring_up.done():
            actor.bring_up.cancel()  # never placed, or still starting: nothing to drain
        elif actor.handle is not None:
            try:
                await asyncio.wait_for(actor.handle.stop.remote(self._drain_timeout), self._drain_timeout + 15)
            except (TimeoutError, self._ray.exceptions.RayError) as exc:
                log.warning("worker %s did not stop cleanly: %s", worker_id, exc)
        self._release(actor)
        log.info("stopped launched worker %s", worker_id)

    def launched(self) -> list[LaunchedWorker]:
        return [LaunchedWorker(a.worker_id, a.shape, a.started_at, a.state, a.detail, a.node) for a in self._actors.values()]

    # -- supervision -------------------------------------------------------------------

    def _release(self, actor: _Actor) -> None:
        if actor.handle is not None:
            with contextlib.suppress(Exception):
                self._ray.kill(actor.handle, no_restart=True)  # frees its resources; its worker dies with it

    def _lose(self, actor: _Actor, why: str) -> None:
        if self._actors.pop(actor.worker_id, None) is None:
            return
        losses, _ = self._losses.get(actor.shape, (0, 0.0))
        self._losses[actor.shape] = (losses + 1, time.monotonic())
        log.warning("launched worker %s on Ray node %s lost: %s", actor.worker_id, actor.node or "?", why)
        self._release(actor)

    async def _refresh_nodes(self) -> None:
        nodes = await asyncio.to_thread(self._ray.nodes)
        self._nodes = [dict(n.get("Resources") or {}) for n in nodes if n.get("Alive")]
        self._nodes_at = time.monotonic()

    async def _supervise(self) -> None:
        while True:
            await asyncio.sleep(SUPERVISE_S)
            try:
                if time.monotonic() - self._nodes_at > NODES_EVERY_S:
                    await self._refresh_nodes()
                running = [a for a in self._actors.values() if a.state == "running"]
                await asyncio.gather(*(self._check(a) for a in running))
            except Exception:  # one bad pass must not end supervision
                log.exception("ray launcher supervision pass failed")

    async def _check(self, actor: _Actor) -> None:
        ray = self._ray
        now = time.monotonic()
        try:
            code = await asyncio.wait_for(actor.handle.poll.remote(), self._lease_ttl)
        except (TimeoutError, ray.exceptions.ActorUnavailableError):
            code = _UNANSWERED
        except ray.exceptions.RayActorError as exc:  # the actor is dead (killed, or its node is gone)
            self._lose(actor, f"its actor died ({type(exc).__name__})")
            return
        except ray.exceptions.RayError:
            code = _UNANSWERED
        if code is _UNANSWERED:
            # no answer (a node that stopped answering, a network problem): Ray takes a while
            # to declare a node dead, the lease does not wait that long
            actor.unanswered_since = actor.unanswered_since or now
            if now - actor.unanswered_since >= self._lease_ttl:
                self._lose(actor, f"its actor has not answered for {now - actor.unanswered_since:.0f}s")
            return
        actor.unanswered_since = None
        if code is not None:
            self._lose(actor, f"its worker process exited ({code})")
        elif now - actor.asked_at > BACKOFF_MAX_S:
            self._losses.pop(actor.shape, None)  # it stayed up: the next loss starts the backoff again
