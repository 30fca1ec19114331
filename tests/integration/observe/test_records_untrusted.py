"""What a client types stays contained in the records and the report, through the shared
``corral start`` and the real ``corral report``: requests for a 256-character model name
(the longest the API takes), an emoji model name and an HTML-injection model name are
recorded under one ``(unknown model)`` label (the asked-for name kept in ``params``), a
100,000-character name (refused with 400 at the wire) is recorded without it, a ``seed``
beyond 64 bits is recorded instead of dropped, and the report's terminal table and HTML
page group them, cap their cells and escape everything."""

from __future__ import annotations

import json
import re
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import API_KEY, DEMO_CHAT
from tests.integration.servers import Server, run_corral

pytestmark = pytest.mark.integration

UNKNOWN = "(unknown model)"
HUGE = "m" * 100_000
LONGEST = "m" * 256  # the longest model name the API takes
EMOJI = "🦙-llama-👩‍👩‍👧-🔥"
SCRIPT = "<script>alert('x')</script><b>"


def post(server: Server, model: str, rid: str, **extra: Any) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/chat/completions", timeout=60,
                      headers={"authorization": f"Bearer {API_KEY}", "x-request-id": rid},
                      json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **extra})


def rows(db: Path, ids: list[str], timeout: float = 30) -> dict[str, dict[str, Any]]:
    """The records of ``ids`` read from the SQLite file, polling until all are there."""
    deadline = time.monotonic() + timeout
    while True:
        conn = sqlite3.connect(db, timeout=10)
        conn.row_factory = sqlite3.Row
        try:
            marks = ",".join("?" * len(ids))
            found = {r["request_id"]: dict(r) for r in
                     conn.execute(f"SELECT * FROM corral_requests WHERE request_id IN ({marks})", ids)}
        finally:
            conn.close()
        if len(found) == len(ids) or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


@pytest.fixture(scope="module")
def sent(demo_server: Server, corral_home: Path) -> dict[str, str]:
    """request id -> model asked for; all answered 404 but one (the known model, a huge seed)."""
    tag = uuid.uuid4().hex[:8]
    asked = {f"long-{tag}": LONGEST, f"emoji-{tag}": EMOJI, f"script-{tag}": SCRIPT}
    for rid, model in asked.items():
        resp = post(demo_server, model, rid)
        assert resp.status_code == 404 and resp.json()["error"]["param"] == "model", resp.text[:300]
    resp = post(demo_server, HUGE, f"huge-{tag}")
    assert resp.status_code in (400, 404) and resp.json()["error"]["param"] == "model", resp.text[:300]
    asked[f"huge-{tag}"] = HUGE
    resp = post(demo_server, "no-such-model", f"seed-{tag}", seed=2**70)
    assert resp.status_code in (400, 404), resp.text[:300]
    asked[f"seed-{tag}"] = "no-such-model"
    return asked


def test_unknown_models_are_recorded_under_one_label_capped(sent: dict[str, str], corral_home: Path) -> None:
    found = rows(corral_home / "records.db", list(sent))
    assert set(found) == set(sent), "a request was not recorded (a huge seed used to drop its row)"
    for rid, model in sent.items():
        row = found[rid]
        assert row["outcome"] == "error" and len(row["error"] or "") <= 1024
        assert not any(isinstance(v, str) and "m" * 300 in v for v in row.values())
        if row["http_status"] == 400:  # refused at the wire (name too long, seed too big): no model read
            assert rid.startswith(("huge-", "seed-")) and row["model"] is None
            continue
        assert row["model"] == UNKNOWN
        assert json.loads(row["params"])["requested_model"] == (model if len(model) <= 256 else model[:255] + "…")
    seed = next(rid for rid in sent if rid.startswith("seed-"))
    assert json.loads(found[seed]["params"]).get("seed") in (str(2**70), None)  # None: refused before params


def test_the_report_groups_caps_and_escapes(sent: dict[str, str], demo_server: Server, corral_home: Path,
                                            tmp_path: Path) -> None:
    ok = post(demo_server, DEMO_CHAT, f"ok-{uuid.uuid4().hex[:8]}")
    assert ok.status_code == 200
    out = tmp_path / "report.html"
    result = run_corral(["report", "--records", f"sqlite:///{corral_home / 'records.db'}", "--since", "1h",
                         "--out", str(out)], tmp_path)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    models = [line.split("  ")[0] for line in text.splitlines()
              if line.startswith((UNKNOWN, DEMO_CHAT)) and re.search(r"\d", line)]
    assert models.count(UNKNOWN) == 1 and DEMO_CHAT in models  # one row for every unknown model
    assert "mmmmmmmmmm" * 10 not in text and "🦙" not in text and "<script>" not in text
    assert max(len(line) for line in text.splitlines()) < 400
    html = out.read_text()
    assert len(html) < 400_000  # the 100,000-character name is not in it
    assert "m" * 300 not in html and "<script>" not in html and "&lt;script&gt;" in html  # in the failed list
    assert html.count(f"<td>{UNKNOWN}</td>") >= 1 and "🦙" not in html.split("Failed requests")[0]
    assert "overflow-wrap:anywhere" in html
    for cell in re.findall(r"<td[^>]*>(.*?)</td>", html):
        assert len(cell) <= 1200, cell[:100]  # capped (escaping may lengthen a 200-character cell)
