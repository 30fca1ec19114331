"""Tables, target checks and the result files of the benchmark suite.

A section returns a ``Section``: its tables (printed on the terminal, written as
markdown), its checks against the issue's targets (PASS/MISS), notes, and raw data for
``latest.json``.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from corral.fmt.table import render_table

Cell = str | int | float | None


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[Cell]]

    def text(self) -> str:
        rows = [[_cell(c) for c in row] for row in self.rows]
        align = ["l"] + ["r"] * (len(self.headers) - 1)
        return f"{self.title}\n" + render_table(self.headers, rows, align=align, max_cell=80)  # type: ignore[arg-type]

    def markdown(self) -> str:
        lines = [f"**{self.title}**", "", "| " + " | ".join(self.headers) + " |",
                 "|" + "|".join("---" for _ in self.headers) + "|"]
        lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in self.rows]
        return "\n".join(lines)


@dataclass
class Check:
    """One target: ``value`` compared with ``limit`` (``>=`` or ``<=``)."""

    name: str
    value: float | None
    op: str
    limit: float
    unit: str = ""
    note: str = ""

    @property
    def passed(self) -> bool | None:
        if self.value is None:
            return None
        return self.value >= self.limit if self.op == ">=" else self.value <= self.limit

    @property
    def verdict(self) -> str:
        return {True: "PASS", False: "MISS", None: "n/a"}[self.passed]

    def row(self) -> list[Cell]:
        unit = f" {self.unit}" if self.unit else ""
        value = "-" if self.value is None else f"{_num(self.value)}{unit}"
        return [self.name, value, f"{self.op} {_num(self.limit)}{unit}", self.verdict, self.note]


@dataclass
class Section:
    name: str
    tables: list[Table] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def text(self) -> str:
        parts = [f"== {self.name} ({self.seconds:.0f} s) =="]
        parts += [t.text() for t in self.tables]
        if self.checks:
            parts.append(check_table(self.checks).text())
        parts += [f"note: {n}" for n in self.notes]
        return "\n\n".join(parts)

    def markdown(self) -> str:
        parts = [f"### {self.name}"]
        parts += [t.markdown() for t in self.tables]
        if self.checks:
            parts.append(check_table(self.checks).markdown())
        parts += [f"- {n}" for n in self.notes]
        return "\n\n".join(parts)

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "seconds": self.seconds,
            "tables": [asdict(t) for t in self.tables],
            "checks": [{**asdict(c), "passed": c.passed} for c in self.checks],
            "notes": self.notes,
            "raw": self.raw,
        }


def check_table(checks: Sequence[Check]) -> Table:
    return Table("targets", ["target", "measured", "wanted", "", "note"], [c.row() for c in checks])


def median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _num(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _cell(cell: Cell) -> str:
    if cell is None:
        return "-"
    if isinstance(cell, bool):
        return str(cell)
    if isinstance(cell, int | float):
        return _num(float(cell)) if isinstance(cell, float) else f"{cell:,}"
    return cell


def write(out_dir: Path, meta: dict[str, Any], sections: list[Section]) -> tuple[Path, Path]:
    """``latest.json`` (everything) and ``latest.md`` (the tables) in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data = {"meta": meta, "sections": [s.as_json() for s in sections]}
    json_path, md_path = out_dir / "latest.json", out_dir / "latest.md"
    json_path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    m = meta["machine"]
    head = [
        f"## Benchmark results, {meta['date']}",
        "",
        f"Machine: {m['cpus']} cores ({m['cpu_model']}), {m['memory_gib']} GiB, "
        f"{'a GPU' if m['gpu'] else 'no GPU'}, Python {m['python']}. "
        f"Cells of {meta['duration_s']:g} s, median of {meta['repeats']} runs; "
        f"total {meta['seconds']:.0f} s; load average {meta['load_average_before']} before, "
        f"{meta['load_average_after']} after (the suite itself loads the machine). `{meta['command']}`",
    ]
    md_path.write_text("\n\n".join(["\n".join(head), *[s.markdown() for s in sections]]) + "\n")
    return json_path, md_path
