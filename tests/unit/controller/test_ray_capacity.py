"""Placement by resources, without Ray: the request a model's resources become, whether
any node could ever hold it, and how ``Capacity`` counts launches per worker shape
(the real thing, on a real Ray cluster: tests/integration/ray)."""

from __future__ import annotations

import asyncio
import time

from corral.controller.capacity import Capacity
from corral.controller.ray_launcher import ray_request, unplaceable
from corral.controller.workers import WorkerInfo
from corral.core.launcher import LaunchedWorker, WorkerShape
from corral.core.spec import ModelKind, ModelSpec, Resources


def test_resources_become_ray_names_and_nothing_more() -> None:
    assert ray_request(None) == {"CPU": 1.0}  # a Ray actor's own default
    assert ray_request(Resources(num_cpus=1.5, num_gpus=1, memory_gb=2, custom=(("nodeb", 1.0),))) == {
        "CPU": 1.5, "GPU": 1, "memory": 2.0 * 1024**3, "nodeb": 1.0,
    }
    assert ray_request(Resources(custom=(("nodeb", 0.1),))) == {"CPU": 0.0, "nodeb": 0.1}  # exactly what was asked


def test_unplaceable_compares_with_each_node_not_the_sum() -> None:
    nodes = [{"CPU": 2.0, "memory": 8e9}, {"CPU": 2.0, "nodeb": 1.0}]
    assert not unplaceable({"CPU": 1.5}, nodes)
    assert unplaceable({"CPU": 3.0}, nodes)  # 4 CPUs in all, but no node has 3
    assert not unplaceable({"CPU": 1.0, "nodeb": 1.0}, nodes)
    assert unplaceable({"CPU": 2.0, "memory": 1e9, "nodeb": 1.0}, nodes)  # no one node has both
    assert unplaceable({"gpu_box": 1.0}, nodes) and unplaceable({"CPU": 1.0}, [])


class Launches:
    """A launcher that records what it was asked for and lists it as waiting."""

    name = "fake"
    places_by_resources = True
    per_worker = 1

    def __init__(self) -> None:
        self.workers: dict[str, LaunchedWorker] = {}
        self.stopped: list[str] = []

    async def open(self) -> None: ...

    def can_launch(self, shape: WorkerShape) -> bool:
        return True

    async def launch(self, shape: WorkerShape) -> str:
        worker_id = f"w{len(self.workers) + len(self.stopped)}"
        self.workers[worker_id] = LaunchedWorker(worker_id, shape, time.monotonic(), "waiting")
        return worker_id

    def waiting(self, shape: WorkerShape) -> str | None:
        return "waiting for Ray resources: test" if any(w.shape == shape for w in self.workers.values()) else None

    async def stop(self, worker_id: str) -> None:
        self.workers.pop(worker_id, None)
        self.stopped.append(worker_id)

    def launched(self) -> list[LaunchedWorker]:
        return list(self.workers.values())

    async def close(self) -> None: ...


async def test_capacity_launches_per_shape_and_cancels_launches_nobody_wants() -> None:
    launches = Launches()
    capacity = Capacity(launches, idle_s=0.0)
    small = ModelSpec("a", ModelKind.LLM, "transformers", "x", resources=Resources(num_cpus=0.5))
    big = ModelSpec("b", ModelKind.LLM, "transformers", "x", resources=Resources(num_cpus=2))
    assert capacity.shape_for(small) != capacity.shape_for(big)
    message = await capacity.ensure(capacity.shape_for(small), 2, {})
    assert message == "waiting for Ray resources: test" and len(launches.workers) == 2
    await capacity.ensure(capacity.shape_for(small), 2, {})  # still joining: not launched again
    assert len(launches.workers) == 2
    await capacity.ensure(capacity.shape_for(big), 1, {})  # another shape counts apart
    assert len(launches.workers) == 3
    assert capacity.shapes()["w2"] == WorkerShape("transformers", Resources(num_cpus=2.0))
    # the first one joins; then nothing asks for either shape any more
    joined = {"w0": WorkerInfo("w0", "http://127.0.0.1:1", ["transformers"], time.monotonic(), 5.0)}
    assert capacity.stop_idle(joined, busy={"w0"}) == []
    capacity._wanted_at = {shape: at - 60 for shape, at in capacity._wanted_at.items()}  # as if a minute went by
    assert sorted(capacity.stop_idle(joined, busy={"w0"})) == ["w1", "w2"]  # waiting launches cancelled, w0 kept
    await asyncio.sleep(0)
    assert sorted(launches.stopped) == ["w1", "w2"]
    assert capacity.lost() == set()  # stopped on purpose: not lost
    launches.workers.pop("w0")  # the launcher found it dead
    assert capacity.lost() == {"w0"} and capacity.lost() == set()


async def test_a_launcher_that_ignores_resources_gets_one_shape_per_engine() -> None:
    launches = Launches()
    launches.places_by_resources = False
    capacity = Capacity(launches, idle_s=30.0)
    spec = ModelSpec("a", ModelKind.LLM, "transformers", "x", resources=Resources(num_cpus=4))
    assert capacity.shape_for(spec) == WorkerShape("transformers", None)
