"""``corral report``: read the request records, print a summary, write the HTML report.

Read-only: no database or table is created (a missing SQLite file is an error,
not a new empty database). Failures are one ``corral: error: ...`` line on stderr (with a
hint) and exit code 1; an unsupported URL is a usage error (2).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from corral.core.errors import ConfigError, CorralError
from corral.observe.records import TABLE, RecordStore, default_records_url
from corral.observe.report import build_report

_WHERE = ("the server writes them where [server] records points (default sqlite:///$CORRAL_HOME/records.db); "
          "pass --records URL to read another database")


class _Failure(Exception):
    def __init__(self, message: str, hint: str | None = None, code: int = 1) -> None:
        super().__init__(message)
        self.message, self.hint, self.code = message, hint, code


def _fail(message: str, hint: str | None = None) -> None:
    print(f"corral: error: {message}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)


def _sqlite_file(url: str) -> Path | None:
    """The file of a ``sqlite:`` URL (``None`` for other databases and in-memory SQLite)."""
    parsed = make_url(url)
    if not parsed.drivername.startswith("sqlite") or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database).expanduser()


async def _read(url: str, since: float, until: float, model: str | None) -> list[dict[str, Any]]:
    try:
        store = RecordStore(url)
    except ConfigError as exc:
        raise _Failure(exc.message, code=2) from None
    try:
        if not await store.has_table():
            raise _Failure(f"{store.safe_url} holds no request records (no table {TABLE})", _WHERE)
        return await store.query(since, until, model)
    except CorralError as exc:
        raise _Failure(exc.message) from None
    finally:
        await store.close()


def run_report(args: argparse.Namespace) -> int:
    """Run ``corral report``; return the exit code."""
    until = time.time()
    since = until - args.since
    try:
        url = args.records or default_records_url()
        try:
            path = _sqlite_file(url)
        except ArgumentError:
            path = None  # RecordStore names the problem
        if path is not None and not path.is_file():
            raise _Failure(f"no request records at {path}: the file does not exist", _WHERE)
        rows = asyncio.run(_read(url, since, until, args.model))
        if not rows:
            which = f" for model {args.model!r}" if args.model else ""
            raise _Failure(f"no requests recorded{which} in the last {_ago(args.since)}",
                           "try a longer --since" + ("" if args.model else ", or check --records"))
        html, text = build_report(rows, since, until)
        out = Path(args.out).expanduser()
        try:
            out.write_text(html, encoding="utf-8")
        except OSError as exc:
            raise _Failure(f"cannot write {out}: {exc.strerror or exc}") from None
    except _Failure as exc:
        _fail(exc.message, exc.hint)
        return exc.code
    except KeyboardInterrupt:
        print(file=sys.stderr)
        _fail("interrupted")
        return 130
    print(text)
    print(f"\nreport written to {out}")
    return 0


def _ago(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0 and (unit != "d" or seconds >= 2 * size):
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
