"""Corral's benchmark suite in one command: ``make bench`` or ``python -m benchmarks.run``.

Sections (``--only`` picks some): 1. gateway overhead against a fake upstream, with the
bare aiohttp proxy as the reference; 2. engines (transformers batching, embeddings);
3. footprint (idle memory, ``corral --help``, cold start); 4. the observability
micro-benchmark (``benchmarks/observability.py``); 5. autoscaling 0 -> up -> down -> 0
(cold start, overload to new capacity, requests lost); 6. virtual keys (10,000 keys with
limits against a static key); 7. the HTTP floor (uvicorn against granian, same app);
8. ``corral gateway --processes 2`` against one process (``benchmarks/processes.py``);
9. 5,000 open slow streams and 10,000 queued requests (``benchmarks/streams.py``). Each prints its tables, its ratios
to a baseline measured in the same run and PASS/MISS per target; everything is written
to ``benchmarks/results/latest.json`` and ``latest.md``. The whole run takes about
19 minutes on 2 cores; ``--quick`` takes about one (for checking the suite itself).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from benchmarks import engines, footprint, gateway, keys, processes, scaling, servers, streams
from benchmarks.procs import Processes, bench_env, machine
from benchmarks.report import Section, Table, write
from corral import __version__

SECTIONS = ("gateway", "engines", "footprint", "observability", "scaling", "keys", "servers", "processes", "streams")
RESULTS = Path(__file__).with_name("results")


def observability(duration_s: float, repeats: int, work: Path, procs: Processes, say: Callable[[str], None]) -> Section:
    """The existing micro-benchmark, run as is; its markdown table is kept."""
    del duration_s, repeats, work
    t0 = time.perf_counter()
    say("observability: per-request cost of tracking, metrics and the records queue...")
    script = Path(__file__).with_name("observability.py")
    out = subprocess.run([sys.executable, str(script)], env=procs.env, capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"observability.py exited with {out.returncode}:\n{out.stderr[-2000:]}")
    lines = [line for line in out.stdout.splitlines() if line.startswith("|") and not line.startswith("|---")]
    split = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    width = len(split[0]) if split else 0
    rows: list[list[str | int | float | None]] = [list(r[:width]) + [None] * (width - len(r)) for r in split[1:]]
    tables = [Table("observability on the request path (benchmarks/observability.py)", split[0], rows)] if split else []
    notes = [line for line in out.stdout.splitlines() if line and not line.startswith("|")]
    return Section("4. observability", tables, [], notes, {"stdout": out.stdout}, time.perf_counter() - t0)


RUNNERS: dict[str, Callable[..., Section]] = {
    "gateway": gateway.run, "engines": engines.run, "footprint": footprint.run, "observability": observability,
    "scaling": scaling.run, "keys": keys.run, "servers": servers.run, "processes": processes.run,
    "streams": streams.run,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="0.5 s cells, one repeat: checks the suite, not Corral")
    parser.add_argument("--duration", type=float, help="seconds per measured cell (default 3, quick 0.5)")
    parser.add_argument("--repeats", type=int, help="runs per cell, the median is reported (default 3, quick 1)")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections: {', '.join(SECTIONS)}")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of latest.json and latest.md")
    args = parser.parse_args(argv)
    duration = args.duration or (0.5 if args.quick else 3.0)
    repeats = args.repeats or (1 if args.quick else 3)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")

    t0 = time.perf_counter()

    def say(text: str) -> None:
        elapsed = int(time.perf_counter() - t0)
        print(f"[{elapsed // 60:02d}:{elapsed % 60:02d}] {text}", flush=True)

    meta = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "corral": __version__,
        "command": "python -m benchmarks.run " + " ".join(argv if argv is not None else sys.argv[1:]),
        "duration_s": duration,
        "repeats": repeats,
        "load_average_before": round(os.getloadavg()[0], 2),
    }
    m = meta["machine"]
    say(f"corral {__version__} on {m['cpus']} cores ({m['cpu_model']}), sections: {', '.join(chosen)}; "  # type: ignore[index]
        f"{duration:g} s per cell, {repeats} repeat(s)")
    if os.getloadavg()[0] > 0.5:  # the ratios hold up to noise, absolute req/s do not
        say(f"warning: the machine is already busy (load average {os.getloadavg()[0]:.1f}): absolute numbers will be "
            "low; ratios and CPU per request are less affected")
    sections: list[Section] = []
    failed = False
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as tmp:
        work = Path(tmp)
        (work / "logs").mkdir()
        for name in chosen:
            with Processes(work / "logs", bench_env(work / "home")) as procs:
                try:
                    section = RUNNERS[name](duration, repeats, work, procs, say)
                except Exception as exc:  # one broken section must not lose the others' numbers
                    failed = True
                    say(f"{name}: FAILED: {exc}")
                    traceback.print_exc()
                    section = Section(name, notes=[f"failed: {str(exc).splitlines()[0] if str(exc) else exc!r}"])
            sections.append(section)
            print("\n" + section.text() + "\n", flush=True)
    meta["seconds"] = time.perf_counter() - t0
    meta["load_average_after"] = round(os.getloadavg()[0], 2)
    json_path, md_path = write(args.out, meta, sections)
    checks = [c for s in sections for c in s.checks]
    passed = sum(1 for c in checks if c.passed)
    say(f"done in {meta['seconds']:.0f} s: {passed}/{len(checks)} targets met; wrote {json_path} and {md_path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
