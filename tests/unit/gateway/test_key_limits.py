"""Per-key limits (token buckets, concurrency, budgets) and grants, on a controlled clock."""

from __future__ import annotations

import pytest

from corral.core.errors import RateLimited
from corral.core.keys import Grant, Limits, VirtualKey, grant_of, key_from_json, key_hash, key_to_json, new_secret
from corral.gateway import limits as limits_module
from corral.gateway.keys import KeyChain, KeyExpired, KeyRevoked, VirtualKeys
from corral.gateway.limits import Limiter, period_of
from corral.web.middleware import KeySet


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(limits_module.time, "monotonic", c)
    return c


def test_rpm_bucket_bursts_then_refills_one_request_per_60_over_rpm(clock: Clock) -> None:
    limiter, grant = Limiter(), Grant("k", limits=Limits(rpm=6))
    for _ in range(6):
        limiter.settle("k", limiter.admit(grant, 0), 0)
    with pytest.raises(RateLimited) as refused:
        limiter.admit(grant, 0)
    assert refused.value.retry_after == pytest.approx(10.0)
    assert refused.value.headers == {"x-ratelimit-limit-requests": "6", "x-ratelimit-remaining-requests": "0",
                                     "x-ratelimit-reset-requests": "60s"}
    clock.now += 9.9
    with pytest.raises(RateLimited):
        limiter.admit(grant, 0)
    clock.now += 0.2
    limiter.admit(grant, 0)


def test_tpm_reserves_max_tokens_then_charges_real_usage(clock: Clock) -> None:
    limiter, grant = Limiter(), Grant("k", limits=Limits(tpm=100))
    reserved = limiter.admit(grant, 80)
    with pytest.raises(RateLimited) as refused:  # 20 left, this one may use 30
        limiter.admit(grant, 30)
    assert refused.value.headers["x-ratelimit-remaining-tokens"] == "20"
    limiter.settle("k", reserved, 10)  # it used only 10: 90 back
    limiter.settle("k", limiter.admit(grant, 30), 150)  # ran long: the key is now in debt
    with pytest.raises(RateLimited) as debt:
        limiter.admit(grant, 0)
    assert debt.value.retry_after == pytest.approx(60 * 61 / 100)  # from -60 back to 1 token
    clock.now += 37
    limiter.admit(grant, 0)


def test_a_reservation_larger_than_the_bucket_is_capped_not_refused_forever(clock: Clock) -> None:
    limiter, grant = Limiter(), Grant("k", limits=Limits(tpm=50))
    assert limiter.admit(grant, 4096) == 50


def test_concurrency_slots_are_given_back(clock: Clock) -> None:
    limiter, grant = Limiter(), Grant("k", limits=Limits(max_concurrency=2))
    a, b = limiter.admit(grant, 0), limiter.admit(grant, 0)
    with pytest.raises(RateLimited) as refused:
        limiter.admit(grant, 0)
    assert refused.value.headers["x-ratelimit-limit-concurrency"] == "2"
    limiter.settle("k", a, 0)
    limiter.admit(grant, 0)
    limiter.settle("k", b, 0)


def test_budgets_per_period_reset_with_the_period(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    wall = Clock()
    wall.now = 1_765_151_999.0  # 2025-12-07 23:59:59 UTC
    monkeypatch.setattr(limits_module.time, "time", wall)
    limiter, grant = Limiter(), Grant("k", limits=Limits(budget_tokens=100, budget_period="day"))
    limiter.settle("k", limiter.admit(grant, 0), 100)
    with pytest.raises(RateLimited) as spent:
        limiter.admit(grant, 0)
    assert spent.value.retry_after == pytest.approx(1.0) and "budget" in spent.value.message
    wall.now += 1.5  # the next UTC day
    limiter.admit(grant, 0)
    assert period_of("month", 1_765_151_999.0) == ("2025-12", pytest.approx(24 * 86400 + 1))
    assert period_of("month", 1_767_225_599.0)[0] == "2025-12"  # Dec 31 23:59:59: the year turns next


def test_changed_limits_keep_in_flight_and_budget_counts(clock: Clock) -> None:
    limiter = Limiter()
    held = limiter.admit(Grant("k", limits=Limits(rpm=10, max_concurrency=1, budget_requests=5)), 0)
    changed = Grant("k", limits=Limits(rpm=20, max_concurrency=1, budget_requests=5))
    with pytest.raises(RateLimited):
        limiter.admit(changed, 0)  # the slot taken before the change is still taken
    limiter.settle("k", held, 0)
    limiter.admit(changed, 0)


def test_grants_match_names_and_globs() -> None:
    grant = Grant("k", models=("chat", "embed-*"))
    assert grant.allows("chat") and grant.allows("embed-small") and not grant.allows("chat2")
    assert not grant.allows("embed") and Grant("k").allows("anything")


def test_key_json_round_trip_and_default_limits() -> None:
    key = VirtualKey("key_1", "n", key_hash("s"), 1.0, models=("a",), limits=Limits(rpm=3, budget_period="month"))
    assert key_from_json(key_to_json(key)) == key
    assert "s" != key.secret_hash and key_to_json(key).count(key_hash("s")) == 1
    grant = grant_of(key, Limits(rpm=100, tpm=500))
    assert grant.limits.rpm == 3 and grant.limits.tpm == 500  # the key's own limits win, defaults fill in
    secret = new_secret()
    assert secret.startswith("sk-corral-") and len(secret) == len("sk-corral-") + 43


class Source:
    def __init__(self, keys: list[VirtualKey]) -> None:
        self.keys = keys

    async def open(self) -> None: ...

    async def list_keys(self) -> list[VirtualKey]:
        return list(self.keys)

    async def keys_version(self) -> str | None:
        return None

    async def close(self) -> None: ...


async def test_resolver_chain_static_virtual_revoked_expired(monkeypatch: pytest.MonkeyPatch) -> None:
    live, gone, old = new_secret(), new_secret(), new_secret()
    source = Source([
        VirtualKey("key_live", "l", key_hash(live), 1.0),
        VirtualKey("key_gone", "g", key_hash(gone), 1.0, revoked_at=2.0),
        VirtualKey("key_old", "o", key_hash(old), 1.0, expires_at=10.0),
    ])
    virtual = VirtualKeys(source)
    assert virtual  # closed until it has read the keys once
    await virtual.refresh()
    virtual.loaded.set()
    chain = KeyChain([KeySet(("static-1",)), virtual])
    assert chain.resolve(b"static-1").key_id != "static-1"  # a short hash, never the key
    assert chain.resolve(live.encode()).key_id == "key_live"  # type: ignore[union-attr]
    assert chain.resolve(b"sk-corral-nope") is None
    with pytest.raises(KeyRevoked):
        chain.resolve(gone.encode())
    with pytest.raises(KeyExpired):
        chain.resolve(old.encode())
    source.keys = []
    await virtual.refresh()
    assert not virtual and chain  # no virtual key left: only the static one is required
    assert not KeyChain([KeySet(()), virtual])
