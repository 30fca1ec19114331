"""``corral bench``: a load generator for any OpenAI-compatible endpoint.

Checks that the endpoint answers, runs the load (``corral.bench.loadgen``) with a live
progress line on stderr (rewritten in place on a terminal, a line every few seconds
otherwise), then prints a summary table, or the summary as JSON with ``--json``.
Exit codes: 0 when at least one request succeeded, 1 when the endpoint cannot be reached
or every request failed, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from typing import Any, TextIO

from corral.bench import loadgen
from corral.bench.http import Target, new_event_loop
from corral.bench.stats import Samples, summarize
from corral.fmt.table import render_table

_TTY_EVERY_S = 0.5
_LOG_EVERY_S = 5.0


def _config(args: argparse.Namespace) -> loadgen.LoadConfig:
    duration = args.duration if args.duration is not None else (None if args.requests is not None else 10.0)
    return loadgen.LoadConfig(
        url=args.url,
        model=args.model,
        api_key=args.api_key if args.api_key is not None else os.environ.get("CORRAL_API_KEY") or None,
        endpoint=args.endpoint,
        stream=args.stream,
        concurrency=args.concurrency or 1,
        rate=args.rate,
        poisson=args.poisson,
        duration_s=duration,
        requests=args.requests,
        prompt_tokens=args.prompt_tokens,
        max_tokens=args.max_tokens,
        inputs=args.inputs,
        timeout_s=args.timeout,
    )


class _Progress:
    """The live line on stderr."""

    def __init__(self, out: TextIO, label: str) -> None:
        self.out = out
        self.tty = out.isatty()
        self.label = label
        self.every_s = _TTY_EVERY_S if self.tty else _LOG_EVERY_S

    def __call__(self, p: loadgen.Progress) -> None:
        rate = p.ok / p.elapsed_s if p.elapsed_s > 0 else 0.0
        line = (f"{self.label} {p.elapsed_s:6.1f}s  {p.ok:,} ok  {p.failed:,} failed  {p.in_flight} in flight  "
                f"{rate:,.1f} req/s")
        if self.tty:
            self.out.write(f"\r\x1b[K{line}")
        else:
            self.out.write(line + "\n")
        self.out.flush()

    def tick(self, elapsed_s: float) -> None:
        if self.tty:
            self.out.write(f"\r\x1b[K{self.label} {elapsed_s:6.1f}s")
            self.out.flush()

    def done(self) -> None:
        if self.tty:
            self.out.write("\r\x1b[K")
            self.out.flush()


def _measure(config: loadgen.LoadConfig, processes: int, progress: _Progress) -> Samples:
    if processes > 1:
        return loadgen.run_processes(config, processes, progress.tick)
    return loadgen.run(config, progress, progress.every_s)


def _ms(value: float | None) -> str:
    """Milliseconds with three significant figures at most (0.084, 1.23, 45.6, 1234)."""
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def render_summary(summary: dict[str, Any]) -> str:
    """The human summary: a headline, a table of distributions, throughput and errors."""
    c = summary["config"]
    load = f"rate {c['rate']:g}/s" if c.get("rate") else f"concurrency {c['concurrency']}"
    shape = "streamed" if c.get("stream") else "not streamed"
    lines = [
        f"{summary['requests']:,} requests to {c['url']} ({c['endpoint']}, model {c['model']}, {load}, {shape}) "
        f"in {summary['elapsed_s']:.1f} s",
        "",
    ]
    rows = []
    for key, name in (("latency_ms", "latency (ms)"), ("ttft_ms", "time to first token (ms)"),
                      ("itl_ms", "inter-token latency (ms)")):
        d = summary[key]
        if d["count"]:
            rows.append([name, _ms(d["p50"]), _ms(d["p90"]), _ms(d["p99"]), _ms(d["mean"]), _ms(d["max"])])
    if rows:
        lines.append(render_table(["", "p50", "p90", "p99", "mean", "max"], rows, align=["l", "r", "r", "r", "r", "r"]))
        lines.append("")
    lines.append(f"throughput    {summary['requests_per_s']:,.1f} req/s, "
                 f"{summary['output_tokens_per_s']:,.1f} output tokens/s ({summary['output_tokens']:,} tokens)")
    lines.append(f"succeeded     {summary['ok']:,} of {summary['requests']:,}")
    errors = summary["errors"]
    lines.append("errors        " + (", ".join(f"{kind}: {n:,}" for kind, n in errors.items()) if errors else "none"))
    for kind, example in summary.get("error_examples", {}).items():
        lines.append(f"  first {kind}: {' '.join(example.split())}")
    return "\n".join(lines)


def run_bench(args: argparse.Namespace) -> int:
    try:
        config = _config(args)
        target = Target.parse(config.url)
    except ValueError as exc:
        print(f"corral bench: error: {exc}", file=sys.stderr)
        return 2
    loop = new_event_loop()
    try:
        model = loop.run_until_complete(loadgen.preflight(config))
    except loadgen.Unreachable as exc:
        print(f"corral bench: error: {exc}", file=sys.stderr)
        return 1
    finally:
        loop.close()
    config = replace(config, model=model)
    progress = _Progress(sys.stderr, "bench")
    try:
        if args.warmup:
            progress.label = "warm-up"
            warm = replace(config, duration_s=args.warmup, requests=None)
            _measure(warm, args.processes, progress)
            progress.label = "bench"
        samples = _measure(config, args.processes, progress)
    except KeyboardInterrupt:
        progress.done()
        print("corral bench: interrupted", file=sys.stderr)
        return 130
    finally:
        progress.done()
    summary = summarize(samples, {**config.as_dict(), "url": target.url(loadgen.ENDPOINTS[config.endpoint]),
                                  "processes": args.processes})
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(render_summary(summary))
    if summary["ok"] == 0:
        errors = ", ".join(f"{kind}: {n}" for kind, n in summary["errors"].items()) or "no request was sent"
        print(f"corral bench: error: every request failed ({errors})", file=sys.stderr)
        return 1
    return 0
