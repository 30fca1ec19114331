"""Reading the request records over HTTP, for the web console: ``GET /admin/v1/requests``
(recent records, filtered), ``GET /admin/v1/requests/{id}`` (one record and the records
of its trace, whose ``spans`` make the trace tree) and ``GET /admin/v1/requests/report``
(``corral report``'s HTML page for a time window).

They sit under ``/admin`` so the admin token guards them, as records may hold prompt
text; what they read is the same store ``corral trace`` and ``corral report`` read.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from corral.core.errors import InvalidRequest, NotFound
from corral.observe.records import RecordStore
from corral.observe.report import build_report
from corral.web.responses import json_response

MAX_LIMIT = 1000
MAX_WINDOW_S = 31 * 86400
LISTED = ("request_id", "time", "model", "instance_id", "engine", "worker_id", "route", "protocol", "stream",
          "outcome", "http_status", "error", "latency_s", "ttft_s", "prompt_tokens", "completion_tokens", "retries",
          "trace_id", "feedback_rating", "feedback_comment")


def _number(request: Request, name: str, default: float, low: float, high: float) -> float:
    text = request.query_params.get(name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        raise InvalidRequest(f"{name} must be a number", param=name) from None
    if not low <= value <= high:
        raise InvalidRequest(f"{name} must be between {low:g} and {high:g}", param=name)
    return value


def _status_matches(row: dict[str, Any], status: str) -> bool:
    if status in ("ok", "error"):
        return (row.get("outcome") == "ok") == (status == "ok")
    return str(row.get("http_status")) == status


def records_routes(current: Callable[[], RecordStore | None]) -> list[Route]:
    """``current`` gives the store now (None: records disabled, e.g. after a failed open)."""

    def need_store() -> RecordStore:
        store = current()
        if store is None:
            raise NotFound("request records are disabled on this server", code="records_disabled")
        return store

    async def recent(request: Request) -> Response:
        records = need_store()
        window = _number(request, "since_s", 3600, 1, MAX_WINDOW_S)
        limit = int(_number(request, "limit", 200, 1, MAX_LIMIT))
        q = request.query_params
        rows = await records.query(time.time() - window, model=q.get("model") or None)
        if q.get("instance"):
            rows = [r for r in rows if r.get("instance_id") == q["instance"]]
        if q.get("status"):
            rows = [r for r in rows if _status_matches(r, q["status"])]
        newest = rows[::-1][:limit]
        return json_response(200, {"requests": [{k: r.get(k) for k in LISTED} for r in newest]})

    async def one(request: Request) -> Response:
        records = need_store()
        rid = request.path_params["request_id"]
        row = await records.get(rid)
        if row is None:
            raise NotFound(f"no recorded request with id {rid!r}", param="request_id", code="request_not_found")
        trace = await records.by_trace(row["trace_id"]) if row.get("trace_id") else [row]
        spans = [s for r in trace for s in (r.get("spans") or [])]
        return json_response(200, {"request": row, "spans": spans})

    async def report(request: Request) -> Response:
        records = need_store()
        window = _number(request, "since_s", 86400, 60, MAX_WINDOW_S)
        until = time.time()
        rows = await records.query(until - window)
        if not rows:
            raise NotFound("no request records in that window", code="no_records")
        page, _ = build_report(rows, until - window, until)
        return HTMLResponse(page, headers={"content-disposition": 'attachment; filename="corral-report.html"'})

    p = "/admin/v1/requests"
    return [
        Route(p, recent, methods=["GET"]),
        Route(f"{p}/report", report, methods=["GET"]),  # before {request_id}
        Route(f"{p}/{{request_id}}", one, methods=["GET"]),
    ]
