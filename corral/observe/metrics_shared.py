"""One ``/metrics`` for several gateway processes serving one port (``corral gateway
--processes N``).

A scrape of the port lands on whichever process the kernel gives the connection to, so
every process must answer with the same, whole view: if each answered with its own
counts, successive scrapes would see counters jump back and forth. Two ways were open:

- prometheus_client's multiprocess mode (a memory-mapped file per process, chosen by an
  environment variable at import time): it does not carry Corral's own collectors (the
  router's gauges and the lock-free inter-token histogram are computed at scrape time,
  per process), and every ``inc`` becomes a write to a mapped file.
- **each process's own metrics, merged at scrape time, with a ``process`` label** (the
  process's slot, 0 to N-1): this one. Every series keeps its meaning, a request is
  counted by the one process that served it (no double counting), and the number of
  series is bounded by N whatever the restarts.

How: every process writes a snapshot of its own metrics (``SLOT-GENERATION.json`` in a
folder the supervisor made) every second and whenever it serves a scrape, *before*
answering, so any value a scrape ever showed is in that file. A scrape merges its own
live snapshot with the others' files. When a process exits (a crash, a SIGKILL, a
rolling restart), the supervisor folds its last snapshot into ``SLOT.exited.json``
(``fold_exited``): the counting families only (counters and histograms; its gauges
ended with it), summed with the slot's earlier generations. A slot's series is the sum
of its exited generations and its live ones, so a restart does not reset a counter and
a counter never goes backwards: what a killed process counted after its last snapshot
is lost, and was never shown. Gauges (in flight, queued, instance health) come from the
slot's newest live process. Other processes' values are up to a second old.

The folded file lists the generations it holds, so a reader that sees a snapshot and the
fold that swallowed it counts it once; a reader that finds a listed snapshot gone
(folded meanwhile) reads the folder again.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import Metric

log = logging.getLogger(__name__)

COUNTING = frozenset({"counter", "histogram", "summary"})  # summed over a slot's generations
SNAPSHOT_EVERY_S = 1.0
LABEL = "process"
_READ_ATTEMPTS = 5

Family = list[Any]  # [name, type, documentation, unit, [[sample name, {label: value}, value], ...]]


@dataclass(frozen=True)
class ProcessSlot:
    """Which of the supervisor's processes this one is: its slot (0..N-1, the ``process``
    label), its generation (unique per start, growing) and the shared snapshot folder."""

    folder: Path
    slot: int
    generation: int

    @property
    def snapshot(self) -> Path:
        return self.folder / f"{self.slot}-{self.generation}.json"


def _families(registries: Iterable[CollectorRegistry]) -> list[Family]:
    out: list[Family] = []
    for registry in registries:
        for metric in registry.collect():
            samples = [[s.name, dict(s.labels), s.value] for s in metric.samples if not s.name.endswith("_created")]
            out.append([metric.name, metric.type, metric.documentation, metric.unit, samples])
    return out


def _write(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(orjson.dumps(data))
    os.replace(tmp, path)  # atomic: a reader sees the old snapshot or the new one


def _read_folder(folder: Path, skip: Path | None) -> list[dict[str, Any]] | None:
    """Every snapshot and fold of the folder; None when one vanished while reading."""
    found = []
    for path in sorted(folder.glob("*.json")):
        if path == skip:
            continue
        try:
            found.append(orjson.loads(path.read_bytes()))
        except FileNotFoundError:
            return None  # folded meanwhile: read again, or it would be counted nowhere
        except (OSError, orjson.JSONDecodeError) as exc:  # never fail a scrape over one file
            log.warning("metrics snapshot %s unreadable: %s", path, exc)
    return found


class SharedMetrics:
    """A ``MetricsSource`` rendering the merged view; ``run`` keeps this process's
    snapshot fresh, ``close`` writes its last one."""

    def __init__(self, slot: ProcessSlot, registries: list[CollectorRegistry]) -> None:
        self._slot = slot
        self._registries = registries

    def write_snapshot(self) -> dict[str, Any]:
        own = {"slot": self._slot.slot, "generation": self._slot.generation, "pid": os.getpid(),
               "families": _families(self._registries)}
        try:
            _write(self._slot.snapshot, own)
        except OSError as exc:
            log.warning("cannot write the metrics snapshot %s: %s", self._slot.snapshot, exc)
        return own

    def render(self) -> tuple[bytes, str]:
        own = self.write_snapshot()  # before answering: see the module docstring
        for _ in range(_READ_ATTEMPTS):
            others = _read_folder(self._slot.folder, self._slot.snapshot)
            if others is not None:
                break
        else:
            others = []
        return generate_latest(_Merged(merge([own, *others]))), CONTENT_TYPE_PLAIN_0_0_4  # type: ignore[arg-type]

    async def run(self) -> None:
        while True:
            await asyncio.sleep(SNAPSHOT_EVERY_S)
            self.write_snapshot()

    def close(self) -> None:
        self.write_snapshot()


class _Merged:
    def __init__(self, metrics: list[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return iter(self._metrics)


def merge(snapshots: list[dict[str, Any]]) -> list[Metric]:
    """The families of every snapshot and fold, each sample labelled with its slot;
    counting families summed over a slot's generations, gauges from its newest live one."""
    folded = {g for s in snapshots if "folded" in s for g in s["folded"]}
    live = [s for s in snapshots if "folded" not in s and s["generation"] not in folded]
    newest = {}
    for s in live:
        newest[s["slot"]] = max(newest.get(s["slot"], -1), s["generation"])
    kinds: dict[str, tuple[str, str, str]] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for snap in snapshots:
        if "folded" not in snap and snap["generation"] in folded:
            continue  # already in its slot's fold
        gauges = "folded" not in snap and newest.get(snap["slot"]) == snap["generation"]
        slot = str(snap["slot"])
        for name, kind, doc, unit, samples in snap["families"]:
            if kind not in COUNTING and not gauges:
                continue
            kinds.setdefault(name, (kind, doc, unit))
            family = values.setdefault(name, {})
            for sample, labels, value in samples:
                key = (sample, tuple(sorted({**labels, LABEL: slot}.items())))
                family[key] = family.get(key, 0.0) + value
    out = []
    for name, (kind, doc, unit) in kinds.items():
        metric = Metric(name, doc, kind, unit)
        for (sample, labels), value in sorted(values[name].items()):
            metric.add_sample(sample, dict(labels), value)
        out.append(metric)
    return out


def fold_exited(slot: ProcessSlot) -> None:
    """After the process of ``slot`` (its generation) has exited: add its last snapshot's
    counting families to the slot's fold, then remove the snapshot. The supervisor's
    only writer of folds, so no two folds of one slot race."""
    try:
        snap = orjson.loads(slot.snapshot.read_bytes())
    except FileNotFoundError:
        return  # it died before its first snapshot: it counted nothing anyone saw
    except (OSError, orjson.JSONDecodeError) as exc:
        log.warning("cannot fold the metrics of %s: %s", slot.snapshot, exc)
        return
    path = slot.folder / f"{slot.slot}.exited.json"
    try:
        fold = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        fold = {"slot": slot.slot, "generation": -1, "folded": [], "families": []}
    sums: dict[str, Family] = {f[0]: f for f in fold["families"]}
    for name, kind, doc, unit, samples in snap["families"]:
        if kind not in COUNTING:
            continue
        family = sums.setdefault(name, [name, kind, doc, unit, []])
        index = {(s[0], tuple(sorted(s[1].items()))): s for s in family[4]}
        for sample, labels, value in samples:
            found = index.get((sample, tuple(sorted(labels.items()))))
            if found is None:
                family[4].append([sample, labels, value])
            else:
                found[2] += value
    fold["families"] = list(sums.values())
    fold["folded"] = [*fold["folded"], slot.generation]
    _write(path, fold)  # first the fold that holds it, then the snapshot goes: never counted nowhere
    slot.snapshot.unlink(missing_ok=True)
