"""Reading what a gateway recorded, for the cluster tests that assert on it: the rows of
its SQLite request records, a request's spans through ``corral trace show``, and its
``/metrics`` samples."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.servers import corral_env


def rows(db: Path, where: str = "1 = 1", args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    conn = sqlite3.connect(db, timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(f"SELECT * FROM corral_requests WHERE {where} ORDER BY time", args)]
    except sqlite3.OperationalError:  # the table is created when the gateway starts
        return []
    finally:
        conn.close()


def record(db: Path, request_id: str, timeout: float = 10.0) -> dict[str, Any]:
    """The row of one request; records are written in batches, so poll for it."""
    deadline = time.monotonic() + timeout
    while True:
        found = rows(db, "request_id = ?", (request_id,))
        if found:
            return found[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"no record of request {request_id} in {db}")
        time.sleep(0.05)


def wait_rows(db: Path, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
    """Every row, once there are at least ``count`` (the writer flushes within a second)."""
    deadline = time.monotonic() + timeout
    while True:
        found = rows(db)
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def trace_show(records_url: str, home: Path, trace_id: str, *extra: str) -> str:
    """What ``corral trace show ID`` prints."""
    show = subprocess.run(
        [sys.executable, "-m", "corral.cli.main", "trace", "show", trace_id, "--records", records_url, *extra],
        env=corral_env(home), capture_output=True, text=True, timeout=60,
    )
    assert show.returncode == 0, show.stderr
    return show.stdout


def trace_spans(records_url: str, home: Path, trace_id: str) -> list[dict[str, Any]]:
    """The spans of one trace as ``corral trace show ID --json`` prints them."""
    return json.loads(trace_show(records_url, home, trace_id, "--json"))  # type: ignore[no-any-return]


def metric(url: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` (a counter's ``_total`` sample) whose labels include ``labels``."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total
