"""What a client sends cannot break or bloat the request records: huge and odd strings
are capped and made valid UTF-8, unknown models share one label, values orjson refuses
(ints beyond 64 bits) are still recorded, the spans stored compactly read back whole,
sampling keeps every error, and drops are counted by reason and logged once."""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

import pytest

from corral.core.observe import RequestEvent
from corral.observe.contain import MAX_ERROR, MAX_NAME, UNKNOWN_MODEL, clean, dumps
from corral.observe.records import RecordStore, event_values
from corral.observe.records_bound import RecordsLimits
from corral.observe.tracing import all_spans, new_id, span

HUGE = "m" * 100_000
EMOJI = "🦙🔥👩‍👩‍👧" * 50


def event(rid: str, **fields: object) -> RequestEvent:
    e = RequestEvent(request_id=rid, route="chat", started_at=float(fields.pop("started_at", time.time())))  # type: ignore[arg-type]
    for name, value in fields.items():
        setattr(e, name, value)
    return e


def not_found(rid: str, model: str) -> RequestEvent:
    return event(rid, model=model, outcome="error", http_status=404, error=f"the model {model!r} does not exist",
                 params={"max_tokens": 4, "stop": [], "seed": None})


@pytest.fixture
async def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = RecordStore(f"sqlite:///{tmp_path / 'records.db'}")
    await s.open()
    yield s
    await s.close()


def test_clean_caps_and_repairs() -> None:
    assert clean("abc", 10) == "abc"
    assert clean("x" * 20, 10) == "x" * 9 + "…" and len(clean(HUGE, 256)) == 256
    assert clean("bad \ud800 text", 100) == "bad ? text"  # a lone surrogate is not UTF-8
    clean(EMOJI, 7).encode()  # cut anywhere, still encodable


def test_dumps_never_raises_on_what_a_client_can_send() -> None:
    assert dumps({"seed": 2**64}, 1000) == '{"seed":"18446744073709551616"}'
    assert dumps({"seed": -(2**70)}, 1000) == '{"seed":"-1180591620717411303424"}'
    assert dumps({"stop": ["\udfff"]}, 1000) == '{"stop":["?"]}'
    capped = dumps({"stop": ["s" * 10_000] * 1000}, 4096)
    assert len(capped) < 64 * 300 and capped.startswith('{"stop":["sss')
    assert dumps({"a": 1, "b": [1, 2]}, 1000) == '{"a":1,"b":[1,2]}'  # the fast path, compact


async def test_unknown_models_share_one_label_and_keep_a_capped_name(store: RecordStore) -> None:
    for i, model in enumerate([HUGE, EMOJI, "nope"]):
        store.request_finished(not_found(f"u-{i}", model))
    store.request_finished(event("known", model="tiny", instance_id="tiny-0", params={"seed": 3}))
    await store.flush()
    rows = {r["request_id"]: r for r in await store.query(0)}
    assert {rows[f"u-{i}"]["model"] for i in range(3)} == {UNKNOWN_MODEL}
    assert rows["known"]["model"] == "tiny"
    huge = rows["u-0"]
    assert huge["params"]["requested_model"] == "m" * (256 - 1) + "…"
    assert huge["params"] == {"max_tokens": 4, "requested_model": huge["params"]["requested_model"]}  # unset left out
    assert len(huge["error"]) == MAX_ERROR and huge["error"].endswith("…")
    assert rows["u-1"]["params"]["requested_model"] == clean(EMOJI, 256)
    assert [r["request_id"] for r in await store.query(0, model=UNKNOWN_MODEL)] == ["u-0", "u-1", "u-2"]


async def test_a_model_that_exists_but_failed_keeps_its_name(store: RecordStore) -> None:
    store.request_finished(event("busy", model="tiny", outcome="error", http_status=503, error="no instance"))
    store.request_finished(event("long", model="x" * 1000, outcome="error", http_status=400, error="bad"))
    await store.flush()
    rows = {r["request_id"]: r for r in await store.query(0)}
    assert rows["busy"]["model"] == "tiny"
    assert rows["long"]["model"] == "x" * (MAX_NAME - 1) + "…"


async def test_huge_seed_and_lone_surrogates_are_recorded_not_dropped(store: RecordStore) -> None:
    """orjson refused ints beyond 64 bits: such a request's row was dropped (and logged
    once per request); sqlite3 refuses lone surrogates: the whole batch would be lost."""
    store.request_finished(event("seed", model="tiny", params={"seed": 2**64 + 5}, trace_id=new_id(16),
                                 span_id=new_id(8)))
    store.request_finished(event("sur", model="tiny", error="bad \ud800", prompt_text="p \udc00",
                                 params={"stop": ["\ud83d"]}))
    store.request_finished(event("fine", model="tiny"))  # in the same batch: not lost with it
    await store.flush()
    rows = {r["request_id"]: r for r in await store.query(0)}
    assert set(rows) == {"seed", "sur", "fine"} and store.dropped_total == 0
    assert rows["seed"]["params"]["seed"] == str(2**64 + 5)
    assert rows["seed"]["spans"][0]["attributes"]["gen_ai.request.seed"] == str(2**64 + 5)
    assert rows["sur"]["error"] == "bad ?" and rows["sur"]["params"]["stop"] == ["?"]


def test_a_row_is_bounded_whatever_the_event_holds() -> None:
    e = event(HUGE, model=HUGE, instance_id=HUGE, error=HUGE, params={f"k{i}": HUGE for i in range(1000)},
              trace_id="a" * 32, span_id="b" * 16,
              spans=[span("x", "a" * 32, new_id(8), "b" * 16, 0.0, 1.0, {"k": HUGE}) for _ in range(5000)])
    values = event_values(e)
    assert sum(len(v) for v in values if isinstance(v, str)) < 100_000


async def test_spans_are_stored_compactly_and_read_back_whole(store: RecordStore, tmp_path: Path) -> None:
    e = event("t-1", model="tiny", instance_id="tiny-0", engine="transformers", worker_id="standalone",
              latency_s=0.25, ttft_s=0.05, prompt_tokens=3, completion_tokens=4, retries=1,
              params={"max_tokens": 4, "temperature": 0.5, "n": 1, "stop": ["\n"], "seed": None, "stream": False},
              trace_id=new_id(16), span_id=new_id(8), parent_span_id=new_id(8))
    e.spans = [span("corral.engine.generate", e.trace_id, new_id(8), e.span_id, e.started_at, e.started_at + 0.2,
                    {"corral.instance": "tiny-0", "gen_ai.usage.output_tokens": 4})]
    expected = all_spans(e)
    store.request_finished(e)
    await store.flush()
    row = await store.get("t-1")
    assert row is not None and row["spans"] == expected
    stored = sqlite3.connect(tmp_path / "records.db").execute("SELECT spans FROM corral_requests").fetchone()[0]
    assert e.trace_id not in stored and "corral.request_id" not in stored  # both are columns of the row


async def test_sampling_keeps_every_error_and_a_share_of_successes(tmp_path: Path) -> None:
    store = RecordStore(f"sqlite:///{tmp_path / 'records.db'}", limits=RecordsLimits(sample=0.25))
    await store.open()
    try:
        for i in range(400):
            store.request_finished(event(f"ok-{i}", model="tiny"))
            if i % 10 == 0:
                store.request_finished(event(f"err-{i}", model="tiny", outcome="error", http_status=500))
                store.request_finished(event(f"cut-{i}", model="tiny", outcome="cancelled", http_status=499))
        await store.flush()
        ids = [r["request_id"] for r in await store.query(0)]
    finally:
        await store.close()
    oks = [i for i in ids if i.startswith("ok-")]
    assert 60 <= len(oks) <= 140  # about a quarter of 400
    assert sum(i.startswith("err-") for i in ids) == 40 and sum(i.startswith("cut-") for i in ids) == 40
    assert store.sampled_out_total == 400 - len(oks) and store.dropped_total == 0
    # the same ids are kept by every gateway sharing the store
    assert all(RecordsLimits(sample=0.25).keeps(i, "ok") for i in oks)


async def test_an_event_that_cannot_be_encoded_is_counted_and_logged_once(
    store: RecordStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="corral.observe.records")
    for i in range(5):
        store.request_finished(event(f"odd-{i}", started_at=0.0, prompt_tokens="many"))  # type: ignore[arg-type]
    assert store.dropped == {"queue_full": 0, "store_error": 0, "unencodable": 5}
    assert len([r for r in caplog.records if "cannot record request" in r.getMessage()]) == 1


async def test_queue_full_and_store_errors_are_counted_by_reason(tmp_path: Path) -> None:
    store = RecordStore(f"sqlite:///{tmp_path / 'records.db'}", queue_size=2)  # not opened: no writer
    for i in range(5):
        store.request_finished(event(f"q-{i}"))
    assert store.dropped["queue_full"] == 3
    await store.open()
    with sqlite3.connect(tmp_path / "records.db") as conn:
        conn.execute("DROP TABLE corral_requests")
    store.request_finished(event("lost"))
    await store.flush()
    await store.close()
    assert store.dropped["store_error"] >= 1 and store.dropped["unencodable"] == 0
