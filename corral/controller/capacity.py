"""New capacity from a launcher (``corral.core.launcher``): how many workers to ask for,
and which launched ones to let go.

When instances of a model cannot be placed (no live worker of its shape has room: the
engine, and for a launcher that places by resources, the model's ``resources``), the
manager asks ``ensure`` for room for them: enough workers of that shape are launched for
what is missing, counting those already launched that have not joined yet (a launch that
has not joined within ``JOIN_TIMEOUT_S`` no longer counts, so a worker that cannot start
does not block for ever, unless its launcher says it is still waiting for a place, so a
cluster without room is not asked again and again). A launched worker left with no
instances for ``idle_s`` is stopped (``stop_idle``), and so is a launch still waiting
for a place whose shape nothing has asked for since; workers started by hand are never
stopped.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Mapping

from corral.controller.workers import WorkerInfo
from corral.core.launcher import Launcher, WorkerShape
from corral.core.spec import ModelSpec

log = logging.getLogger(__name__)

JOIN_TIMEOUT_S = 180.0
UNWANTED_S = 5.0  # a launch still waiting this long past idle_s after its shape was last asked for is cancelled


class Capacity:
    def __init__(self, launcher: Launcher, idle_s: float) -> None:
        self.launcher = launcher
        self._per_worker = max(1, launcher.per_worker)
        self._idle_s = idle_s
        self._asked: dict[str, tuple[WorkerShape, float]] = {}  # worker id -> (shape, when launched)
        self._wanted_at: dict[WorkerShape, float] = {}  # shape -> when ensure last asked for it
        self._empty_since: dict[str, float] = {}
        self._stopping: set[asyncio.Task[None]] = set()
        self._known: set[str] = set()  # every worker id the launcher has listed
        self._let_go: set[str] = set()  # ids this class asked the launcher to stop

    def lost(self) -> set[str]:
        """Workers the launcher listed and no longer does, without being asked to stop
        them (it found them dead: an exited process, a dead actor, a lost node); each id
        is reported once."""
        current = {w.worker_id for w in self.launcher.launched()}
        gone = self._known - current
        self._known = (self._known - gone) | current
        lost = gone - self._let_go
        self._let_go = (self._let_go - gone) & self._known  # an id let go before it was ever listed is dropped
        return lost

    def shape_for(self, spec: ModelSpec) -> WorkerShape:
        """The kind of worker an instance of ``spec`` needs from this launcher."""
        return WorkerShape(spec.engine, spec.resources if self.launcher.places_by_resources else None)

    def shapes(self) -> dict[str, WorkerShape]:
        """Worker id -> shape, for every worker this launcher started."""
        return {w.worker_id: w.shape for w in self.launcher.launched()}

    def can_launch(self, shape: WorkerShape) -> bool:
        return self.launcher.can_launch(shape)

    async def ensure(self, shape: WorkerShape, instances: int, workers: Mapping[str, WorkerInfo]) -> str:
        """Launch workers for ``instances`` more instances of ``shape``; say what is going on."""
        now = time.monotonic()
        self._wanted_at[shape] = now
        states = {w.worker_id: w.state for w in self.launcher.launched()}
        for worker_id, (_, at) in list(self._asked.items()):
            state = states.get(worker_id)
            if worker_id in workers or state is None or (now - at > JOIN_TIMEOUT_S and state != "waiting"):
                self._asked.pop(worker_id)  # joined (placement sees it now), gone, or given up on
        joining = sum(1 for s, _ in self._asked.values() if s == shape)
        wanted = math.ceil(instances / self._per_worker) - joining
        for _ in range(max(0, wanted)):
            worker_id = await self.launcher.launch(shape)
            self._asked[worker_id] = (shape, now)
        joining = sum(1 for s, _ in self._asked.values() if s == shape)
        waiting = self.launcher.waiting(shape)
        if waiting:
            return waiting
        what = f" ({shape.resources.describe()})" if shape.resources is not None else ""
        return f"launching {joining} {self.launcher.name} worker(s) for the {shape.engine} engine{what}"

    def stop_idle(self, workers: Mapping[str, WorkerInfo], busy: set[str]) -> list[str]:
        """Stop (in the background: a worker drains first) launched workers that have
        hosted nothing for ``idle_s``, and launches still waiting for a place that nothing
        wants any more; return their ids."""
        now = time.monotonic()
        stopped = []
        for launched in self.launcher.launched():
            worker_id = launched.worker_id
            if worker_id not in workers:
                self._empty_since.pop(worker_id, None)
                wanted = self._wanted_at.setdefault(launched.shape, now)
                if launched.state == "waiting" and now - wanted >= self._idle_s + UNWANTED_S:
                    log.info("cancelling launched worker %s: nothing has needed it for %.0fs", worker_id, now - wanted)
                    self._stop(worker_id)
                    stopped.append(worker_id)
                continue
            if worker_id in busy:
                self._empty_since.pop(worker_id, None)
                continue
            since = self._empty_since.setdefault(worker_id, now)
            if now - since >= self._idle_s:
                self._empty_since.pop(worker_id, None)
                log.info("stopping launched worker %s: no instances for %.0fs", worker_id, now - since)
                self._stop(worker_id)
                stopped.append(worker_id)
        return stopped

    def _stop(self, worker_id: str) -> None:
        self._let_go.add(worker_id)
        task = asyncio.create_task(self.launcher.stop(worker_id), name=f"stop {worker_id}")
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)
