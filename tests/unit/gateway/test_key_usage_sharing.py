"""Keys' limits shared across gateways: two (or three) ``Limiter``s exchanging usage
reports through a real in-memory store, on controlled clocks."""

from __future__ import annotations

import asyncio

import pytest

from corral.core import usage as usage_module
from corral.core.errors import RateLimited
from corral.core.keys import Grant, Limits
from corral.core.usage import KeyUsage, StoreExchange, UsageReport, report_from_json, report_to_json
from corral.gateway import limits as limits_module
from corral.gateway.limits import Limiter
from corral.gateway.usage import UsageSync
from corral.state.memory import MemoryStateStore


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clocks(monkeypatch: pytest.MonkeyPatch) -> tuple[Clock, Clock]:
    mono, wall = Clock(1000.0), Clock(1_765_000_000.0)  # 2025-12-06 05:46:40 UTC
    monkeypatch.setattr(limits_module.time, "monotonic", mono)
    monkeypatch.setattr(limits_module.time, "time", wall)
    monkeypatch.setattr(usage_module.time, "time", wall)
    return mono, wall


class Gateways:
    """Gateways sharing one store; ``sync()`` runs one exchange on each, in order."""

    def __init__(self) -> None:
        self.store = MemoryStateStore()
        self.syncs: dict[str, UsageSync] = {}

    def add(self, name: str) -> Limiter:
        limiter = Limiter()
        self.syncs[name] = UsageSync(limiter, StoreExchange(self.store), name)
        return limiter

    def sync(self, *names: str) -> None:
        for name in names or list(self.syncs):
            asyncio.run(self.syncs[name].sync_once())


def test_rpm_holds_across_gateways_even_on_one_that_never_saw_the_key(clocks: tuple[Clock, Clock]) -> None:
    mono, _ = clocks
    gws = Gateways()
    a, b = gws.add("a"), gws.add("b")
    grant = Grant("k", limits=Limits(rpm=6))
    gws.sync()
    for _ in range(6):
        a.settle("k", a.admit(grant, 0), 0)
    mono.now += 0.5
    gws.sync()  # b learns a's six before it ever admits the key
    with pytest.raises(RateLimited) as refused:
        b.admit(grant, 0)
    assert refused.value.headers["x-ratelimit-remaining-requests"] == "0"
    mono.now += 10.0  # one request's worth refilled (6 per minute), on both
    b.settle("k", b.admit(grant, 0), 0)
    gws.sync("b", "a")  # b publishes, then a reads it
    with pytest.raises(RateLimited):
        a.admit(grant, 0)


def test_a_gateway_charges_only_what_is_new_in_each_report(clocks: tuple[Clock, Clock]) -> None:
    gws = Gateways()
    a, b = gws.add("a"), gws.add("b")
    grant = Grant("k", limits=Limits(rpm=10))
    b.settle("k", b.admit(grant, 0), 0)  # b knows the key
    a.settle("k", a.admit(grant, 0), 0)
    for _ in range(3):  # the same cumulative count, read three times: charged once
        gws.sync()
    assert dict(b.headers(grant))[b"x-ratelimit-remaining-requests"] == b"8"


def test_tokens_reserved_then_given_back_elsewhere(clocks: tuple[Clock, Clock]) -> None:
    gws = Gateways()
    a, b = gws.add("a"), gws.add("b")
    grant = Grant("k", limits=Limits(tpm=100))
    b.settle("k", b.admit(grant, 0), 0)
    reserved = a.admit(grant, 80)
    gws.sync()
    with pytest.raises(RateLimited):  # 20 left everywhere
        b.admit(grant, 30)
    a.settle("k", reserved, 10)  # used 10: 70 back
    gws.sync()
    b.settle("k", b.admit(grant, 80), 80)
    assert dict(b.headers(grant))[b"x-ratelimit-remaining-tokens"] == b"10"


def test_concurrency_counts_the_other_gateways_in_flight_until_their_report_is_stale(clocks: tuple[Clock, Clock]) -> None:
    _, wall = clocks
    gws = Gateways()
    a, b = gws.add("a"), gws.add("b")
    grant = Grant("k", limits=Limits(max_concurrency=3))
    held = [a.admit(grant, 0), a.admit(grant, 0)]
    gws.sync()
    b.admit(grant, 0)
    with pytest.raises(RateLimited) as refused:
        b.admit(grant, 0)
    assert refused.value.headers["x-ratelimit-limit-concurrency"] == "3"
    wall.now += usage_module.STALE_S + 1  # a is gone without a last report: its requests with it
    gws.sync("b")
    b.admit(grant, 0)
    assert len(held) == 2


def test_budgets_add_up_across_gateways_and_outlive_a_restarted_one(clocks: tuple[Clock, Clock]) -> None:
    _, wall = clocks
    gws = Gateways()
    a, b = gws.add("a"), gws.add("b")
    grant = Grant("k", limits=Limits(budget_requests=3, budget_period="day"))
    a.settle("k", a.admit(grant, 0), 0)
    a.settle("k", a.admit(grant, 0), 0)
    gws.sync()
    b.settle("k", b.admit(grant, 0), 0)
    with pytest.raises(RateLimited) as spent:
        b.admit(grant, 0)
    assert "budget is spent" in spent.value.message
    gws.sync()
    del gws.syncs["a"]  # a stops; a new gateway starts later: a's counts are still in the store
    wall.now += 60
    c = gws.add("c")
    gws.sync("c")
    with pytest.raises(RateLimited):
        c.admit(grant, 0)
    assert sorted(r.gateway_id for r in asyncio.run(gws.store.list_usage())) == ["a", "b", "c"]  # stale, kept
    wall.now += 86400  # the next day: the old reports count for nothing and are deleted
    gws.sync("c")
    c.settle("k", c.admit(grant, 0), 0)
    assert [r.gateway_id for r in asyncio.run(gws.store.list_usage())] == ["c"]


def test_success_headers_say_what_is_left_and_when_it_is_full() -> None:
    limiter, grant = Limiter(), Grant("k", limits=Limits(rpm=60, tpm=1000))
    assert limiter.headers(grant) == []  # nothing admitted yet
    limiter.settle("k", limiter.admit(grant, 100), 40)
    headers = {k.decode(): v.decode() for k, v in limiter.headers(grant)}
    assert headers["x-ratelimit-limit-requests"] == "60"
    assert headers["x-ratelimit-remaining-requests"] == "59"
    assert headers["x-ratelimit-limit-tokens"] == "1000"
    assert headers["x-ratelimit-remaining-tokens"] == "960"
    assert headers["x-ratelimit-reset-requests"].endswith("s")
    assert 0.9 <= float(headers["x-ratelimit-reset-requests"][:-1]) <= 1.0


def test_reports_round_trip_and_malformed_ones_raise() -> None:
    report = UsageReport("gw-1", 1.0, 2.0, {"key_a": KeyUsage(3, 40, 1, "2026-12-08", 2, 30)})
    assert report_from_json(report_to_json(report)) == report
    for bad in (b"{}", b'{"gateway_id":"g","started_at":1,"at":2,"keys":{"k":[1,2]}}', b"[]", b"nope"):
        with pytest.raises((ValueError, KeyError, TypeError)):
            report_from_json(bad)
