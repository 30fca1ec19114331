"""``corral trace list`` and ``corral trace show ID``: traces from the request records,
with no tracing service needed."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from corral.fmt.table import render_table
from corral.core.errors import CorralError
from corral.observe.records import RecordStore, default_records_url
from corral.observe.tracing import attribute


def _since(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        return time.time() - float(text[:-1]) * units[text[-1]]
    except (KeyError, ValueError, IndexError):
        raise CorralError(f"--since {text!r}: use a number and a unit, e.g. 30m, 24h, 7d") from None


async def _rows(args: argparse.Namespace, since: float | None = None, ident: str | None = None) -> list[dict[str, Any]]:
    """Records since a time, or those of one trace (by trace id, else by request id)."""
    store = RecordStore(args.records or default_records_url())
    try:
        if not await store.has_table():
            raise CorralError("no request records yet: serve some requests first (or pass --records URL)")
        if ident is None:
            return await store.query(since or 0.0)
        rows = await store.by_trace(ident)
        if not rows:
            one = await store.get(ident)
            rows = await store.by_trace(one["trace_id"]) if one and one.get("trace_id") else []
        return rows
    finally:
        await store.close()


def run_trace(args: argparse.Namespace) -> int:
    try:
        if args.trace_command == "list":
            rows = asyncio.run(_rows(args, _since(args.since)))
            rows = [r for r in rows if r.get("trace_id")][-args.limit :]
            return _list(rows, args.json)
        match = asyncio.run(_rows(args, ident=args.id))
        if not match:
            raise CorralError(f"no trace {args.id!r} in the request records")
        return _show(match, args.json)
    except CorralError as exc:
        print(f"corral: error: {exc.message}", file=sys.stderr)
        return 1


def _list(rows: list[dict[str, Any]], as_json: bool) -> int:
    if as_json:
        print(json.dumps([{k: r.get(k) for k in ("trace_id", "request_id", "time", "model", "latency_s")} for r in rows]))
        return 0
    table = [
        [
            r["trace_id"],
            time.strftime("%H:%M:%S", time.localtime(r["time"])),
            r.get("model") or "",
            r.get("route") or "",
            r.get("outcome") or "",
            f"{(r.get('latency_s') or 0) * 1000:.1f}",
            str(len(r.get("spans") or [])),
        ]
        for r in rows
    ]
    print(render_table(["TRACE", "TIME", "MODEL", "ROUTE", "OUTCOME", "MS", "SPANS"], table))
    return 0


# what ``show`` prints of each span: (label, attribute; ``attribute`` also reads earlier names)
_SHOWN = (
    ("model", "gen_ai.request.model"), ("instance", "corral.instance_id"), ("outcome", "corral.outcome"),
    ("output_tokens", "gen_ai.usage.output_tokens"), ("output_tokens", "corral.engine.output_tokens"),
    ("finish", "gen_ai.response.finish_reasons"), ("ttft_s", "corral.ttft_s"),
    ("error", "corral.error"),  # last: a lost attempt's message
)


def _show(rows: list[dict[str, Any]], as_json: bool) -> int:
    spans = [s for r in rows for s in (r.get("spans") or [])]
    if as_json:
        print(json.dumps(spans))
        return 0
    by_parent: dict[str | None, list[dict[str, Any]]] = {}
    ids = {s["span_id"] for s in spans}
    for s in spans:
        parent = s.get("parent_span_id") if s.get("parent_span_id") in ids else None
        by_parent.setdefault(parent, []).append(s)
    start = min(s["start"] for s in spans)
    print(f"trace {spans[0]['trace_id']}")

    def walk(parent: str | None, depth: int) -> None:
        for s in sorted(by_parent.get(parent, []), key=lambda s: s["start"]):
            offset = (s["start"] - start) * 1000
            took = (s["end"] - s["start"]) * 1000
            shown: dict[str, Any] = {}
            for label, key in _SHOWN:
                if label not in shown and (value := attribute(s, key)) is not None:
                    shown[label] = value
            detail = " ".join(f"{label}={value}" for label, value in shown.items())
            print(f"{'  ' * depth}{s['name']:<28} +{offset:8.1f} ms {took:9.1f} ms  {detail}")
            walk(s["span_id"], depth + 1)

    walk(None, 1)
    return 0
