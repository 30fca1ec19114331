"""The merged /metrics of several gateway processes: each process's series under its
slot's ``process`` label, counters carried over a process's exit (never backwards, never
twice), gauges from the slot's newest live process only."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.parser import text_string_to_metric_families

from corral.observe.metrics_shared import ProcessSlot, SharedMetrics, fold_exited


class Proc:
    def __init__(self, folder: Path, slot: int, generation: int) -> None:
        self.slot = ProcessSlot(folder, slot, generation)
        self.registry = CollectorRegistry()
        self.requests = Counter("reqs", "Requests.", ["model"], registry=self.registry)
        self.in_flight = Gauge("in_flight", "In flight.", registry=self.registry)
        self.shared = SharedMetrics(self.slot, [self.registry])


def samples(shared: SharedMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = shared.render()[0].decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_each_process_under_its_slot_and_the_same_view_from_any(tmp_path: Path) -> None:
    a, b = Proc(tmp_path, 0, 1), Proc(tmp_path, 1, 2)
    a.requests.labels("m").inc(3)
    b.requests.labels("m").inc(5)
    b.in_flight.set(2)
    b.shared.write_snapshot()
    seen = samples(a.shared)
    assert seen[("reqs_total", (("model", "m"), ("process", "0")))] == 3
    assert seen[("reqs_total", (("model", "m"), ("process", "1")))] == 5
    assert seen[("in_flight", (("process", "1"),))] == 2
    assert not any(name.endswith("_created") for name, _ in seen)
    assert samples(b.shared) == seen  # a scrape of either answers alike


def test_an_exited_process_counts_live_on_and_its_gauges_end(tmp_path: Path) -> None:
    a, old = Proc(tmp_path, 0, 1), Proc(tmp_path, 1, 2)
    old.requests.labels("m").inc(7)
    old.in_flight.set(4)
    old.shared.write_snapshot()
    fold_exited(old.slot)
    assert not old.slot.snapshot.exists()
    new = Proc(tmp_path, 1, 3)
    new.requests.labels("m").inc(1)
    new.shared.write_snapshot()
    seen = samples(a.shared)
    assert seen[("reqs_total", (("model", "m"), ("process", "1")))] == 8  # 7 carried + 1: not reset
    assert seen[("in_flight", (("process", "1"),))] == 0  # the new one's, not the dead one's 4
    fold_exited(new.slot)  # and a second fold of the slot adds up
    assert samples(a.shared)[("reqs_total", (("model", "m"), ("process", "1")))] == 8


def test_two_live_generations_of_a_slot_during_a_rolling_restart(tmp_path: Path) -> None:
    old, new = Proc(tmp_path, 0, 1), Proc(tmp_path, 0, 2)
    old.requests.labels("m").inc(2)
    old.in_flight.set(1)
    new.requests.labels("m").inc(3)
    old.shared.write_snapshot()
    seen = samples(new.shared)
    assert seen[("reqs_total", (("model", "m"), ("process", "0")))] == 5  # each request once
    assert seen[("in_flight", (("process", "0"),))] == 0  # the newest one's gauges


def test_a_snapshot_already_folded_is_not_counted_twice(tmp_path: Path) -> None:
    a, old = Proc(tmp_path, 0, 1), Proc(tmp_path, 1, 2)
    old.requests.labels("m").inc(4)
    old.shared.write_snapshot()
    snapshot = old.slot.snapshot.read_bytes()
    fold_exited(old.slot)
    old.slot.snapshot.write_bytes(snapshot)  # as a reader may see both for a moment
    assert samples(a.shared)[("reqs_total", (("model", "m"), ("process", "1")))] == 4
