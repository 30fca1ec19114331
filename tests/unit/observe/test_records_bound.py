"""The size bound of the request records on a real SQLite file: the writer keeps the
store under it by deleting the oldest rows (newest kept), warns once near it, and the
bound's settings load from ``[server]``."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from pathlib import Path

import pytest

from corral.config.loader import load_settings as load_config
from corral.core.errors import ConfigError
from corral.core.observe import RequestEvent
from corral.observe.records import RecordStore
from corral.observe.records_bound import MB, RecordsLimits, SizeBound, StoreSize
from corral.observe.tracing import new_id

BOUND = 256 * 1024


def event(i: int, t0: float) -> RequestEvent:
    e = RequestEvent(request_id=f"r-{i:05d}", route="chat", started_at=t0 + i * 0.001, model="tiny",
                     instance_id="tiny-0", engine="transformers", worker_id="standalone", latency_s=0.1,
                     prompt_tokens=3, completion_tokens=4, trace_id=new_id(16), span_id=new_id(8))
    e.params = {"max_tokens": 4, "temperature": 0.7}
    return e


def used_bytes(db: Path) -> tuple[int, int]:
    """(bytes of used pages, bytes of the file's pages) as SQLite counts them."""
    with sqlite3.connect(db) as conn:
        pages, free, size = (conn.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_count", "freelist_count",
                                                                                   "page_size"))
    return (pages - free) * size, pages * size


async def test_the_writer_keeps_sqlite_under_its_byte_bound_oldest_first(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="corral.observe.records")
    db = tmp_path / "records.db"
    store = RecordStore(f"sqlite:///{db}", limits=RecordsLimits(max_bytes=BOUND))
    store.bound.check_every_s = 0.0  # after every batch
    await store.open()
    t0 = time.time() - 100
    n = 4000  # ~1.5 MB of rows: six times the bound
    try:
        for i in range(n):
            store.request_finished(event(i, t0))
            if i % 200 == 199:
                await store.flush()
                await store.enforce_bound()
                used, _ = used_bytes(db)
                assert used <= BOUND, f"{used} bytes used after {i + 1} rows"
        await store.flush()
        await store.enforce_bound()
        ids = [r["request_id"] for r in await store.query(0)]
    finally:
        await store.close()
    assert store.dropped_total == 0 and store.bound.pruned_total > 0
    assert len(ids) + store.bound.pruned_total == n
    assert ids == [f"r-{i:05d}" for i in range(n - len(ids), n)]  # the newest, contiguous: the oldest went
    assert 150 < len(ids) < 900
    used, file = used_bytes(db)
    assert used <= BOUND and file <= 1.5 * BOUND  # freed pages are reused: the file stops growing
    assert store.bound.size is not None and store.bound.size.bytes == used
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "of its bound" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    assert "records.db" in warnings[0].getMessage()
    assert any("oldest rows to stay under the bound" in r.getMessage() for r in caplog.records)


async def test_a_rows_bound(tmp_path: Path) -> None:
    store = RecordStore(f"sqlite:///{tmp_path / 'records.db'}", limits=RecordsLimits(max_bytes=0, max_rows=100))
    await store.open()
    try:
        t0 = time.time() - 100
        for i in range(500):
            store.request_finished(event(i, t0))
            if i % 50 == 49:
                await store.flush()
                await store.enforce_bound()
        rows = await store.query(0)
    finally:
        await store.close()
    assert 80 <= len(rows) <= 100 and rows[-1]["request_id"] == "r-00499"
    assert store.bound.size == StoreSize(store.bound.size.bytes if store.bound.size else None, len(rows))


async def test_a_store_over_a_lowered_bound_is_pruned_at_start(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'records.db'}"
    store = RecordStore(url, limits=RecordsLimits(max_bytes=0))
    await store.open()
    t0 = time.time() - 100
    for i in range(2000):
        store.request_finished(event(i, t0))
    await store.close()
    store = RecordStore(url, limits=RecordsLimits(max_bytes=BOUND))
    await store.open()  # the retention task checks the bound first thing
    try:
        deadline = time.monotonic() + 30
        while store.bound.pruned_total == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert store.bound.pruned_total > 0
        assert used_bytes(tmp_path / "records.db")[0] <= BOUND
    finally:
        await store.close()


def test_no_bound_means_no_check() -> None:
    bound = SizeBound(RecordsLimits(max_bytes=0, max_rows=0))
    assert not bound.active and not bound.due()
    assert SizeBound(RecordsLimits()).limits.max_bytes == 1024 * MB  # the default bound
    assert bound.fraction(StoreSize(10**12, 10**9)) == 0.0


def test_bound_settings_load_from_the_server_table(tmp_path: Path) -> None:
    config = tmp_path / "corral.toml"
    config.write_text("[server]\nrecords_max_mb = 64\nrecords_max_rows = 100000\nrecords_sample = 0.1\n")
    server = load_config(config).server
    assert (server.records_max_mb, server.records_max_rows, server.records_sample) == (64, 100000, 0.1)
    default = tmp_path / "default.toml"
    default.write_text("")
    assert load_config(default).server.records_max_mb == 1024


@pytest.mark.parametrize("line", ["records_max_mb = -1", "records_sample = 0", "records_sample = 1.5",
                                  "records_max_rows = -5"])
def test_bad_bound_settings_name_the_key(tmp_path: Path, line: str) -> None:
    config = tmp_path / "corral.toml"
    config.write_text(f"[server]\n{line}\n")
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert line.split()[0] in info.value.message and "corral.toml:2" in info.value.message


async def test_the_writer_alone_measures_often_enough_and_once_idle(tmp_path: Path) -> None:
    """No explicit check: the writer measures after about 5% of the bound was written (not
    only once a second, which a small bound would overshoot) and once it is idle."""
    db = tmp_path / "records.db"
    store = RecordStore(f"sqlite:///{db}", limits=RecordsLimits(max_bytes=BOUND))
    store.bound.check_every_s = 3600.0  # only the step and the idle check can trigger it
    await store.open()
    try:
        t0 = time.time() - 100
        for i in range(3000):
            store.request_finished(event(i, t0))
            if i % 100 == 99:
                await store.flush()
        await store.flush()
        assert store.bound.pruned_total > 0
        assert used_bytes(db)[0] <= 1.15 * BOUND  # at most one step (and a batch) over
    finally:
        await store.close()
    store = RecordStore(f"sqlite:///{db}", limits=RecordsLimits(max_bytes=BOUND // 2))
    store.bound.check_every_s = 0.2
    await store.open()
    try:
        deadline = time.monotonic() + 30
        while used_bytes(db)[0] > BOUND // 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # the retention task's check at start
        before = store.bound.pruned_total
        for i in range(3000, 3050):
            store.request_finished(event(i, t0))
        await store.flush()
        while store.bound.pending and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # the idle check after the last write
        assert not store.bound.pending and store.bound.pruned_total >= before
        assert used_bytes(db)[0] <= BOUND // 2
    finally:
        await store.close()
