"""Request records written before the spans followed the GenAI conventions still read:
``corral trace show`` prints a row of then (old attribute names in the stored spans) and
the gateway's span of an old row comes back with the current names; a new row keeps what
its columns lack (finish reasons, queue wait, routing policy)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from corral.core.observe import RequestEvent
from corral.observe.records import RecordStore
from corral.observe.tracing import new_id

TRACE, GATEWAY, WORKER = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", "11f067aa0ba902b7"


def show(records: str, *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "corral.cli.main", "trace", "show", TRACE, "--records", records,
                             *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


async def test_a_row_of_an_earlier_version_reads_with_current_names(tmp_path: Path) -> None:
    db = tmp_path / "records.db"
    store = RecordStore(f"sqlite:///{db}")
    await store.open()
    e = RequestEvent("new", "chat", time.time(), model="tiny", instance_id="tiny-1", trace_id=new_id(16),
                     span_id=new_id(8), finish_reasons=["length"], queue_wait_s=0.25, routing="round_robin")
    store.request_finished(e)
    await store.flush()
    await store.close()
    now = time.time()
    old_spans = [  # as 0.3 stored them
        {"gateway": 1, "span_id": GATEWAY},
        {"name": "corral.worker", "span_id": WORKER, "parent_span_id": GATEWAY, "start": now, "end": now + 0.1,
         "attributes": {"corral.instance": "tiny-0", "corral.model": "tiny", "corral.worker": "w1"}},
        {"name": "corral.engine.generate", "span_id": "22f067aa0ba902b7", "parent_span_id": WORKER, "start": now,
         "end": now + 0.1, "attributes": {"corral.instance": "tiny-0", "corral.model": "tiny",
                                          "gen_ai.usage.output_tokens": 4, "corral.ttft_s": 0.02}},
    ]
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO corral_requests (request_id, time, model, instance_id, route, params, outcome, http_status,"
            " latency_s, prompt_tokens, completion_tokens, retries, trace_id, spans) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            ("old", now, "tiny", "tiny-0", "chat", '{"max_tokens": 4}', "ok", 200, 0.2, 3, 4, 0, TRACE,
             json.dumps(old_spans)),
        )
    records = f"sqlite:///{db}"
    tree = show(records).splitlines()
    assert tree[0] == f"trace {TRACE}"
    assert tree[1].split()[:2] == ["chat", "tiny"] and "instance=tiny-0" in tree[1]  # rebuilt: the new name
    assert "instance=tiny-0" in tree[2] and "model=tiny" in tree[2]  # corral.instance, corral.model of then
    assert "output_tokens=4" in tree[3] and tree[3].count("output_tokens") == 1
    spans = {s["name"]: s for s in json.loads(show(records, "--json"))}
    gw = spans["chat tiny"]["attributes"]
    assert gw["corral.instance_id"] == "tiny-0" and gw["gen_ai.request.max_tokens"] == 4
    assert gw["gen_ai.operation.name"] == "chat" and "corral.instance" not in gw

    store = RecordStore(records)
    row = await store.get("new")
    await store.close()
    assert row is not None
    a = row["spans"][0]["attributes"]
    assert (a["gen_ai.response.finish_reasons"], a["corral.queue_wait_s"], a["corral.routing.policy"]) == (
        ["length"], 0.25, "round_robin")
