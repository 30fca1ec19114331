"""Load-balancing policies."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import pytest

from corral.core.errors import ConfigError
from corral.gateway.balancers import POLICIES, LeastRequests, PowerOfTwo, RoundRobin, make_balancer


@dataclass(eq=False)
class T:
    name: str
    in_flight: int = 0


def targets(*loads: int) -> list[T]:
    return [T(f"t{i}", load) for i, load in enumerate(loads)]


def test_round_robin_cycles_in_order() -> None:
    ts = targets(0, 0, 0)
    rr = RoundRobin()
    assert [rr.pick(ts).name for _ in range(7)] == ["t0", "t1", "t2", "t0", "t1", "t2", "t0"]


def test_round_robin_ignores_load() -> None:
    ts = targets(100, 0)
    rr = RoundRobin()
    assert [rr.pick(ts).name for _ in range(4)] == ["t0", "t1", "t0", "t1"]


def test_round_robin_copes_with_changing_target_lists() -> None:
    rr = RoundRobin()
    ts = targets(0, 0, 0)
    rr.pick(ts)
    assert rr.pick(ts[:1]) is ts[0]
    assert rr.pick(ts[:2]).name in {"t0", "t1"}


@pytest.mark.parametrize("policy", [RoundRobin, lambda: PowerOfTwo(random.Random(0)), LeastRequests])
def test_single_target(policy) -> None:
    ts = targets(5)
    balancer = policy()
    for _ in range(5):
        assert balancer.pick(ts) is ts[0]


def test_power_of_two_never_picks_the_more_loaded_of_two() -> None:
    for seed in range(50):
        p2 = PowerOfTwo(random.Random(seed))
        ts = targets(3, 1)
        for _ in range(20):
            assert p2.pick(ts).name == "t1"


def test_power_of_two_never_picks_the_most_loaded_of_many() -> None:
    ts = targets(5, 1, 4, 2, 9)
    p2 = PowerOfTwo(random.Random(1))
    picks = Counter(p2.pick(ts).name for _ in range(2000))
    assert "t4" not in picks  # the most loaded loses every comparison
    # the least loaded wins every comparison it is part of: 2 of 5 choices ≈ 40 %
    assert picks["t1"] > picks["t3"] > picks["t2"] > picks["t0"]
    assert 0.3 < picks["t1"] / 2000 < 0.5


def test_power_of_two_spreads_over_equally_loaded_targets() -> None:
    ts = targets(0, 0, 0, 0)
    p2 = PowerOfTwo(random.Random(42))
    picks = Counter(p2.pick(ts).name for _ in range(4000))
    assert set(picks) == {"t0", "t1", "t2", "t3"}
    assert all(700 < n < 1300 for n in picks.values()), picks


def test_power_of_two_is_deterministic_with_a_seeded_rng() -> None:
    ts = targets(0, 0, 0, 0, 0)
    p, q = PowerOfTwo(random.Random(3)), PowerOfTwo(random.Random(3))
    assert [p.pick(ts).name for _ in range(20)] == [q.pick(ts).name for _ in range(20)]


def test_power_of_two_sees_load_changes() -> None:
    ts = targets(0, 0)
    p2 = PowerOfTwo(random.Random(0))
    ts[0].in_flight = 2
    assert all(p2.pick(ts) is ts[1] for _ in range(10))
    ts[1].in_flight = 3
    assert all(p2.pick(ts) is ts[0] for _ in range(10))


def test_least_requests_picks_minimum() -> None:
    ts = targets(4, 2, 7, 3)
    assert LeastRequests().pick(ts) is ts[1]


def test_least_requests_tie_goes_to_first() -> None:
    ts = targets(1, 0, 0)
    assert LeastRequests().pick(ts) is ts[1]


def test_least_requests_follows_load() -> None:
    ts = targets(0, 0)
    lr = LeastRequests()
    for _ in range(6):
        t = lr.pick(ts)
        t.in_flight += 1
    assert [t.in_flight for t in ts] == [3, 3]


@pytest.mark.parametrize("name, cls", [("round_robin", RoundRobin), ("power_of_two", PowerOfTwo),
                                       ("least_requests", LeastRequests)])
def test_make_balancer_known_policies(name: str, cls: type) -> None:
    assert isinstance(make_balancer(name), cls)


def test_make_balancer_returns_fresh_instances() -> None:
    a, b = make_balancer("round_robin"), make_balancer("round_robin")
    ts = targets(0, 0)
    assert a.pick(ts) is ts[0]
    assert b.pick(ts) is ts[0]


def test_make_balancer_unknown_policy() -> None:
    with pytest.raises(ConfigError) as info:
        make_balancer("nope")
    err = info.value
    assert "'nope'" in err.message
    for name in POLICIES:
        assert name in err.message
    assert {"round_robin", "power_of_two", "least_requests"} <= set(POLICIES)
    assert err.param == "routing"
    assert err.code == "invalid_config"
