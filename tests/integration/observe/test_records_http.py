"""Request records and ``POST /v1/feedback`` on a real ``corral start``.

Two servers, each with its own SQLite records file: one with capture off (no prompt or
completion text may reach the database file), one with ``capture_text = true`` and a
redaction pattern. The records are read straight from the SQLite file, as an operator
would. Also: the store on a real PostgreSQL server.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.core.observe import RequestEvent
from corral.observe.records import RecordStore
from tests.integration.servers import Server, start_corral
from tests.services.postgres import Postgres, start_postgres

MODEL = "tiny"
MARKER = "MARKER-5b1e-prompt-never-stored"


@dataclass
class Recorded:
    server: Server
    db: Path

    def chat(self, content: str, **extra: Any) -> httpx.Response:
        body = {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 4,
                "ignore_eos": True, "temperature": 0.7, "seed": 11, **extra}
        resp = httpx.post(f"{self.server.url}/v1/chat/completions", json=body, timeout=120)
        return resp

    def feedback(self, body: Any) -> httpx.Response:
        return httpx.post(f"{self.server.url}/v1/feedback", json=body, timeout=30)

    def record(self, request_id: str, timeout: float = 0.0) -> dict[str, Any] | None:
        """The row of ``request_id`` read from the SQLite file, polling up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            conn = sqlite3.connect(self.db, timeout=5)
            conn.row_factory = sqlite3.Row
            try:
                row = conn.execute("SELECT * FROM corral_requests WHERE request_id = ?", (request_id,)).fetchone()
            except sqlite3.OperationalError:  # the table is created when the server starts
                row = None
            finally:
                conn.close()
            if row is not None or time.monotonic() >= deadline:
                return dict(row) if row is not None else None
            time.sleep(0.05)

    def raw_bytes(self) -> bytes:
        """The database file and its WAL/journal files as they are on disk."""
        return b"".join(p.read_bytes() for p in sorted(self.db.parent.glob(self.db.name + "*")))


def start(home: Path, folder: Path, capture: bool) -> Recorded:
    db = folder / "records.db"
    server_table = f'[server]\nrecords = "sqlite:///{db}"\nlog_level = "warning"\n'
    if capture:
        server_table += 'capture_text = true\nredact = ["secret-\\\\d+"]\n'
    config = folder / "corral.toml"
    config.write_text(
        server_table + f'\n[[models]]\nname = "{MODEL}"\nkind = "llm"\nengine = "transformers"\n'
        'source = "demo:tiny-llama"\n[models.options]\nmax_context = 256\n'
    )
    server = start_corral(["--config", str(config)], home, folder)
    return Recorded(server, db)


@pytest.fixture(scope="module")
def plain(corral_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recorded]:
    recorded = start(corral_home, tmp_path_factory.mktemp("records-plain"), capture=False)
    yield recorded
    recorded.server.stop()


@pytest.fixture(scope="module")
def captured(corral_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recorded]:
    recorded = start(corral_home, tmp_path_factory.mktemp("records-capture"), capture=True)
    yield recorded
    recorded.server.stop()


def test_chat_is_recorded_and_takes_feedback(plain: Recorded) -> None:
    before = time.time()
    resp = plain.chat("Say hello")
    assert resp.status_code == 200, resp.text
    rid, instance = resp.headers["x-request-id"], resp.headers["x-corral-instance"]
    usage = resp.json()["usage"]

    ok = plain.feedback({"request_id": rid, "rating": 4, "comment": "useful"})
    assert ok.status_code == 200 and ok.json() == {"ok": True}

    row = plain.record(rid)  # feedback waited for the row: it is there now
    assert row is not None
    assert (row["model"], row["instance_id"], row["route"], row["stream"]) == (MODEL, instance, "chat", 0)
    assert row["protocol"] == "openai"
    assert row["engine"] == "transformers"
    params = json.loads(row["params"])
    assert params["max_tokens"] == 4 and params["temperature"] == 0.7 and params["seed"] == 11
    assert (row["prompt_tokens"], row["completion_tokens"]) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert row["completion_tokens"] == 4
    assert 0 < row["latency_s"] < 120 and before - 1 <= row["time"] <= time.time()
    assert (row["outcome"], row["http_status"], row["error"]) == ("ok", 200, None)
    assert (row["feedback_rating"], row["feedback_comment"]) == (4, "useful")
    assert before <= row["feedback_time"] <= time.time() + 1
    assert row["prompt_text"] is None and row["completion_text"] is None


def test_streamed_chat_is_written_within_a_second_with_ttft(plain: Recorded) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Count"}], "max_tokens": 4,
            "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{plain.server.url}/v1/chat/completions", json=body, timeout=120) as resp:
        assert resp.status_code == 200
        rid = resp.headers["x-request-id"]
        resp.read()
    row = plain.record(rid, timeout=1.5)
    assert row is not None, "the record was not written within 1.5 s"
    assert row["stream"] == 1 and row["outcome"] == "ok" and row["completion_tokens"] == 4
    assert row["ttft_s"] is not None and 0 < row["ttft_s"] <= row["latency_s"]


def test_failed_request_is_recorded(plain: Recorded) -> None:
    resp = httpx.post(f"{plain.server.url}/v1/chat/completions", timeout=30,
                      json={"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status_code == 404
    row = plain.record(resp.headers["x-request-id"], timeout=2)
    assert row is not None and (row["outcome"], row["http_status"]) == ("error", 404) and row["error"]


def test_feedback_errors(plain: Recorded) -> None:
    unknown = plain.feedback({"request_id": f"unknown-{uuid.uuid4()}", "rating": 3, "comment": None})
    assert unknown.status_code == 404
    error = unknown.json()["error"]
    assert (error["code"], error["param"]) == ("request_not_found", "request_id")
    assert error["type"] == "invalid_request_error"
    for body, param in (({"request_id": "x", "rating": 9}, "rating"), ({"request_id": "x", "rating": "4"}, "rating"),
                        ({"rating": 1}, "request_id"), ({"request_id": "x", "rating": 1, "comment": 3}, "comment")):
        bad = plain.feedback(body)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == param, (body, bad.text)


def test_capture_off_stores_no_text(plain: Recorded) -> None:
    resp = plain.chat(f"Repeat after me: {MARKER}")
    assert resp.status_code == 200
    assert plain.feedback({"request_id": resp.headers["x-request-id"], "rating": 1}).status_code == 200
    row = plain.record(resp.headers["x-request-id"])
    assert row is not None and row["prompt_text"] is None and row["completion_text"] is None
    data = plain.raw_bytes()
    assert data and MARKER.encode() not in data


def test_capture_on_stores_redacted_text(captured: Recorded) -> None:
    resp = captured.chat(f"My code is secret-123, remember {MARKER}")
    assert resp.status_code == 200
    rid = resp.headers["x-request-id"]
    assert captured.feedback({"request_id": rid, "rating": 5, "comment": "ok"}).status_code == 200
    row = captured.record(rid)
    assert row is not None
    assert row["prompt_text"] == f"user: My code is [REDACTED], remember {MARKER}"
    assert isinstance(row["completion_text"], str) and row["completion_text"] == \
        resp.json()["choices"][0]["message"]["content"]
    data = captured.raw_bytes()
    assert MARKER.encode() in data and b"secret-123" not in data


# ---------------------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    server = start_postgres()  # fails with the install hint when PostgreSQL is missing
    yield server
    server.destroy()


async def test_record_store_on_postgresql(postgres: Postgres) -> None:
    store = RecordStore(postgres.url, retention_days=0)  # no retention task racing the prune below
    await store.open()
    store.retention_days = 1
    try:
        now = time.time()
        for i in range(250):
            store.request_finished(RequestEvent(
                request_id=f"pg-{i}", route="chat", started_at=now - (2 * 86400 if i % 5 == 0 else i),
                model="m", stream=True, params={"max_tokens": 4}, latency_s=0.1, prompt_tokens=3,
            ))
        store.request_finished(RequestEvent(request_id="pg-1", route="chat", started_at=now, model="dup"))
        assert await store.feedback("pg-1", 5, "fine") is True  # waits for the queued row
        assert await store.feedback("pg-unknown", 5, None) is False
        rows = await store.query(now - 86400)
        assert len(rows) == 200 and store.dropped_total == 0
        first = await store.get("pg-1")
        assert first is not None and first["model"] == "m" and first["params"] == {"max_tokens": 4}
        assert first["stream"] is True and (first["feedback_rating"], first["feedback_comment"]) == (5, "fine")
        assert await store.prune() == 50
        assert len(await store.query(0)) == 200
    finally:
        await store.close()
