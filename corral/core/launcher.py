"""The Launcher seam: where new workers come from when placement needs one.

The controller's manager asks a launcher for a worker when no live worker fits a model
(its engine and, for launchers that place by resources, its ``resources``) with room for
another instance, and asks it to stop a worker it launched once that worker has been
left without instances for a while. The interface is narrow (launch one of this shape;
stop one; list mine; say why a launch has not joined yet) so that a local-process
launcher, Ray and Kubernetes fit behind it. Implementations:
``corral.controller.local_launcher``, ``corral.controller.ray_launcher``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from corral.core.spec import Resources


@dataclass(frozen=True)
class WorkerShape:
    """What a launched worker is for: the engine it must have and, for a launcher that
    places by resources, what it reserves (``None``: nothing in particular). A worker
    launched for a shape hosts only models of that shape."""

    engine: str
    resources: Resources | None = None


@dataclass(frozen=True)
class LaunchedWorker:
    worker_id: str  # the id it joins the controller with
    shape: WorkerShape  # what it was launched for
    started_at: float  # time.monotonic() of its (latest) start
    state: str  # waiting (for a place), starting, running, restarting, stopping
    detail: str = ""  # e.g. its pid and log file, or the last exit
    node: str = ""  # where it runs: the host name, or the Ray node id


class Launcher(Protocol):
    name: str
    places_by_resources: bool  # True: a model's ``resources`` are reserved for each of its workers
    per_worker: int  # instances one launched worker takes

    async def open(self) -> None:
        """Connect to what starts the workers (and take over workers a previous run of
        this controller left running); called once on the controller's loop."""
        ...

    def can_launch(self, shape: WorkerShape) -> bool:
        """Whether a worker this launcher starts would have ``shape.engine``."""
        ...

    async def launch(self, shape: WorkerShape) -> str:
        """Start a worker that will join the controller; return its worker id at once
        (it joins when it is up)."""
        ...

    def waiting(self, shape: WorkerShape) -> str | None:
        """Why workers launched for ``shape`` have not joined yet, when the launcher knows
        (e.g. "waiting for Ray resources: ..."); None otherwise."""
        ...

    async def stop(self, worker_id: str) -> None:
        """Drain and stop a worker this launcher started."""
        ...

    def launched(self) -> list[LaunchedWorker]: ...

    async def close(self) -> None:
        """Stop every worker this launcher started (the controller is exiting)."""
        ...
