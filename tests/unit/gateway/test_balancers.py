"""Load-balancing policies."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import pytest

from corral.core.errors import ConfigError
from corral.core.spec import ROUTING_POLICIES
from corral.core.types import ChatMessage, GenerationRequest, SamplingParams
from corral.gateway.balancers import (
    POLICIES,
    Latency,
    LeastRequests,
    PowerOfTwo,
    Prefix,
    RoundRobin,
    Session,
    Weighted,
    make_balancer,
)


@dataclass(eq=False)
class T:
    """A Candidate: what a balancer may look at."""

    instance_id: str
    in_flight: int = 0
    weight: float = 1.0
    latency: float | None = None


def targets(*loads: int) -> list[T]:
    return [T(f"t{i}", load) for i, load in enumerate(loads)]


def req(
    prompt: str | None = "hello", *, session: str | None = None, user: str | None = None,
    messages: tuple[ChatMessage, ...] | None = None,
) -> GenerationRequest:
    return GenerationRequest(
        "r1", "m", SamplingParams(), messages=messages, prompt=None if messages else prompt, session=session, user=user
    )


def ids(picked: list[T]) -> list[str]:
    return [t.instance_id for t in picked]


# -- registry of policies ----------------------------------------------------------------


def test_policies_match_the_spec_routing_policies() -> None:
    assert set(POLICIES) == set(ROUTING_POLICIES)
    assert len(ROUTING_POLICIES) == len(set(ROUTING_POLICIES))


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_make_balancer_known_policies(name: str) -> None:
    balancer = make_balancer(name)
    assert isinstance(balancer, POLICIES[name])
    ts = targets(0, 0, 0)
    assert balancer.pick(ts, req()) in ts
    assert balancer.pick(ts, None) in ts  # embeddings have no request


@pytest.mark.parametrize("name, cls", [
    ("round_robin", RoundRobin), ("power_of_two", PowerOfTwo), ("least_requests", LeastRequests),
    ("weighted", Weighted), ("latency", Latency), ("session", Session), ("prefix", Prefix),
])
def test_make_balancer_classes(name: str, cls: type) -> None:
    assert isinstance(make_balancer(name), cls)


def test_make_balancer_returns_fresh_instances() -> None:
    a, b = make_balancer("round_robin"), make_balancer("round_robin")
    ts = targets(0, 0)
    assert a.pick(ts, None) is ts[0]
    assert b.pick(ts, None) is ts[0]


def test_make_balancer_unknown_policy() -> None:
    with pytest.raises(ConfigError) as info:
        make_balancer("nope")
    err = info.value
    assert "'nope'" in err.message
    for name in POLICIES:
        assert name in err.message
    assert err.param == "routing"
    assert err.code == "invalid_config"


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_single_target(name: str) -> None:
    ts = targets(5)
    balancer = make_balancer(name)
    for request in (None, req(), req(session="s"), req(user="u")):
        for _ in range(3):
            assert balancer.pick(ts, request) is ts[0]


# -- round robin ---------------------------------------------------------------------------


def test_round_robin_cycles_in_order() -> None:
    ts = targets(0, 0, 0)
    rr = RoundRobin()
    assert ids([rr.pick(ts) for _ in range(7)]) == ["t0", "t1", "t2", "t0", "t1", "t2", "t0"]


def test_round_robin_ignores_load() -> None:
    ts = targets(100, 0)
    rr = RoundRobin()
    assert ids([rr.pick(ts) for _ in range(4)]) == ["t0", "t1", "t0", "t1"]


def test_round_robin_copes_with_changing_target_lists() -> None:
    rr = RoundRobin()
    ts = targets(0, 0, 0)
    rr.pick(ts)
    assert rr.pick(ts[:1]) is ts[0]
    assert rr.pick(ts[:2]).instance_id in {"t0", "t1"}


# -- power of two --------------------------------------------------------------------------


def test_power_of_two_never_picks_the_more_loaded_of_two() -> None:
    for seed in range(50):
        p2 = PowerOfTwo(random.Random(seed))
        ts = targets(3, 1)
        for _ in range(20):
            assert p2.pick(ts).instance_id == "t1"


def test_power_of_two_never_picks_the_most_loaded_of_many() -> None:
    ts = targets(5, 1, 4, 2, 9)
    p2 = PowerOfTwo(random.Random(1))
    picks = Counter(p2.pick(ts).instance_id for _ in range(2000))
    assert "t4" not in picks  # the most loaded loses every comparison
    # the least loaded wins every comparison it is part of: 2 of 5 choices ≈ 40 %
    assert picks["t1"] > picks["t3"] > picks["t2"] > picks["t0"]
    assert 0.3 < picks["t1"] / 2000 < 0.5


def test_power_of_two_spreads_over_equally_loaded_targets() -> None:
    ts = targets(0, 0, 0, 0)
    p2 = PowerOfTwo(random.Random(42))
    picks = Counter(p2.pick(ts).instance_id for _ in range(4000))
    assert set(picks) == {"t0", "t1", "t2", "t3"}
    assert all(700 < n < 1300 for n in picks.values()), picks


def test_power_of_two_is_deterministic_with_a_seeded_rng() -> None:
    ts = targets(0, 0, 0, 0, 0)
    p, q = PowerOfTwo(random.Random(3)), PowerOfTwo(random.Random(3))
    assert ids([p.pick(ts) for _ in range(20)]) == ids([q.pick(ts) for _ in range(20)])


def test_power_of_two_sees_load_changes() -> None:
    ts = targets(0, 0)
    p2 = PowerOfTwo(random.Random(0))
    ts[0].in_flight = 2
    assert all(p2.pick(ts) is ts[1] for _ in range(10))
    ts[1].in_flight = 3
    assert all(p2.pick(ts) is ts[0] for _ in range(10))


# -- least requests ------------------------------------------------------------------------


def test_least_requests_picks_minimum() -> None:
    ts = targets(4, 2, 7, 3)
    assert all(LeastRequests().pick(ts) is ts[1] for _ in range(10))


def test_least_requests_ties_are_broken_randomly_among_the_least_loaded() -> None:
    ts = targets(1, 0, 0, 2, 0)
    lr = LeastRequests(random.Random(7))
    picks = Counter(lr.pick(ts).instance_id for _ in range(900))
    assert set(picks) == {"t1", "t2", "t4"}  # never a more loaded one
    assert all(200 < n < 400 for n in picks.values()), picks


def test_least_requests_is_deterministic_with_a_seeded_rng() -> None:
    ts = targets(0, 0, 0)
    a, b = LeastRequests(random.Random(5)), LeastRequests(random.Random(5))
    assert ids([a.pick(ts) for _ in range(20)]) == ids([b.pick(ts) for _ in range(20)])


def test_least_requests_follows_load() -> None:
    ts = targets(0, 0, 0)
    lr = LeastRequests(random.Random(0))
    for _ in range(9):
        t = lr.pick(ts)
        t.in_flight += 1
    assert [t.in_flight for t in ts] == [3, 3, 3]


# -- weighted ------------------------------------------------------------------------------


def test_weighted_picks_proportionally_to_weight() -> None:
    ts = [T("heavy", weight=3.0), T("light", weight=1.0)]
    w = Weighted(random.Random(1234))
    picks = Counter(w.pick(ts).instance_id for _ in range(4000))
    assert abs(picks["heavy"] / 4000 - 0.75) < 0.05, picks
    assert abs(picks["light"] / 4000 - 0.25) < 0.05, picks


def test_weighted_ignores_load() -> None:
    ts = [T("a", in_flight=50), T("b", in_flight=0)]
    w = Weighted(random.Random(0))
    picks = Counter(w.pick(ts).instance_id for _ in range(2000))
    assert abs(picks["a"] / 2000 - 0.5) < 0.05, picks


def test_weighted_zero_or_negative_weight_is_almost_never_picked() -> None:
    ts = [T("zero", weight=0.0), T("neg", weight=-2.0), T("one", weight=1.0)]
    w = Weighted(random.Random(0))
    assert {w.pick(ts).instance_id for _ in range(500)} == {"one"}


def test_weighted_all_zero_weights_still_picks() -> None:
    ts = [T("a", weight=0.0), T("b", weight=0.0)]
    w = Weighted(random.Random(0))
    assert {w.pick(ts).instance_id for _ in range(200)} == {"a", "b"}


# -- latency -------------------------------------------------------------------------------


def test_latency_prefers_unmeasured_instances() -> None:
    ts = [T("fast", latency=0.001), T("new", in_flight=5), T("slow", latency=2.0)]
    assert Latency().pick(ts) is ts[1]


def test_latency_among_unmeasured_prefers_the_least_loaded() -> None:
    ts = [T("m", latency=0.001), T("new3", in_flight=3), T("new1", in_flight=1), T("new2", in_flight=2)]
    assert Latency().pick(ts).instance_id == "new1"


def test_latency_picks_the_lowest_expected_wait() -> None:
    lat = Latency()
    # scores: latency * (in_flight + 1)
    ts = [T("a", in_flight=0, latency=0.10), T("b", in_flight=4, latency=0.04)]  # 0.10 vs 0.20
    assert lat.pick(ts).instance_id == "a"
    ts[1].in_flight = 1  # 0.10 vs 0.08
    assert lat.pick(ts).instance_id == "b"
    ts[0].latency = 0.03  # 0.03 vs 0.08
    assert lat.pick(ts).instance_id == "a"


def test_latency_lowest_latency_wins_at_equal_load() -> None:
    ts = [T("a", in_flight=2, latency=0.5), T("b", in_flight=2, latency=0.2), T("c", in_flight=2, latency=0.9)]
    assert all(Latency().pick(ts).instance_id == "b" for _ in range(5))


# -- session affinity ----------------------------------------------------------------------


def test_session_same_key_same_instance() -> None:
    ts = targets(0, 0, 0, 0, 0)
    s = Session()
    first = s.pick(ts, req(session="abc"))
    for i in range(100):
        ts[i % 5].in_flight += 1  # load does not move a session
        assert s.pick(ts, req(session="abc")) is first
    # another balancer (another gateway) agrees
    assert Session().pick(ts, req(session="abc")) is first


def test_session_uses_user_when_there_is_no_session() -> None:
    ts = targets(0, 0, 0, 0)
    s = Session()
    by_user = s.pick(ts, req(user="alice"))
    assert all(s.pick(ts, req(user="alice")) is by_user for _ in range(100))
    # ``user`` and ``x-session-id`` with the same value are the same key
    assert s.pick(ts, req(session="alice")) is by_user


def test_session_header_takes_precedence_over_user() -> None:
    ts = targets(*[0] * 8)
    s = Session()
    keys = [f"k{i}" for i in range(40)]
    for key in keys:
        assert s.pick(ts, req(session=key, user="someone-else")) is s.pick(ts, req(session=key))


def test_session_different_keys_spread_over_instances() -> None:
    ts = targets(0, 0, 0, 0)
    s = Session()
    picks = Counter(s.pick(ts, req(session=f"session-{i}")).instance_id for i in range(400))
    assert set(picks) == {"t0", "t1", "t2", "t3"}
    assert all(n > 50 for n in picks.values()), picks


def test_session_removing_another_instance_does_not_move_a_key() -> None:
    ts = targets(0, 0, 0, 0, 0)
    s = Session()
    for i in range(100):
        key = f"user-{i}"
        chosen = s.pick(ts, req(session=key))
        for gone in ts:
            if gone is chosen:
                continue
            rest = [t for t in ts if t is not gone]
            assert s.pick(rest, req(session=key)) is chosen, (key, gone.instance_id)
        # removing the chosen one moves the key to some other instance
        rest = [t for t in ts if t is not chosen]
        assert s.pick(rest, req(session=key)) in rest


def test_session_adding_an_instance_moves_only_keys_to_it() -> None:
    ts = targets(0, 0, 0, 0)
    more = [*ts, T("t-new")]
    s = Session()
    for i in range(100):
        key = f"s{i}"
        before, after = s.pick(ts, req(session=key)), s.pick(more, req(session=key))
        assert after is before or after is more[-1]


def test_session_order_of_targets_does_not_matter() -> None:
    ts = targets(0, 0, 0, 0)
    s = Session()
    for i in range(30):
        assert s.pick(ts, req(session=f"x{i}")) is s.pick(list(reversed(ts)), req(session=f"x{i}"))


def test_session_without_key_falls_back_to_power_of_two() -> None:
    ts = targets(0, 0, 0, 0)
    s = Session()
    picks = Counter(s.pick(ts, req()).instance_id for _ in range(400))
    assert len(picks) > 1  # not pinned to one instance
    assert set(picks) <= {"t0", "t1", "t2", "t3"}
    assert all(s.pick(ts, None) in ts for _ in range(20))  # embeddings: no request
    assert all(s.pick(ts, req(session="", user="")) in ts for _ in range(20))
    loaded = targets(9, 0)
    assert all(s.pick(loaded, req()) is loaded[1] for _ in range(20))  # power of two: less loaded wins


# -- prefix affinity -----------------------------------------------------------------------


def test_prefix_same_prefix_same_instance_at_equal_load() -> None:
    for load in (0, 3):
        ts = targets(*[load] * 5)
        p = Prefix()
        first = p.pick(ts, req("You are a helpful assistant. " * 3))
        assert all(p.pick(ts, req("You are a helpful assistant. " * 3)) is first for _ in range(100))


def test_prefix_only_the_leading_characters_count() -> None:
    ts = targets(0, 0, 0, 0, 0, 0)
    p = Prefix()
    shared = "s" * 256
    first = p.pick(ts, req(shared + "question one"))
    for i in range(30):
        assert p.pick(ts, req(shared + f"another question {i}")) is first
    short = Prefix(prefix_chars=4)
    assert short.pick(ts, req("abcdXXX")) is short.pick(ts, req("abcdYYY"))


def test_prefix_chat_messages_are_used() -> None:
    ts = targets(0, 0, 0, 0)
    p = Prefix()
    system = (ChatMessage("system", "long shared system prompt " * 20),)
    a = p.pick(ts, req(messages=(*system, ChatMessage("user", "one"))))
    b = p.pick(ts, req(messages=(*system, ChatMessage("user", "two"))))
    assert a is b


def test_prefix_different_prefixes_spread() -> None:
    ts = targets(0, 0, 0, 0)
    p = Prefix()
    picks = Counter(p.pick(ts, req(f"{i} distinct prompt")).instance_id for i in range(400))
    assert set(picks) == {"t0", "t1", "t2", "t3"}


def test_prefix_spills_when_the_preferred_instance_is_far_above_the_mean() -> None:
    ts = targets(0, 0, 0, 0)
    p = Prefix()
    prompt = "hot system prompt " * 10
    home = p.pick(ts, req(prompt))
    home.in_flight = 1  # a little busier: stays (bound = 1.5 * 0.25 + 1)
    assert p.pick(ts, req(prompt)) is home
    home.in_flight = 20  # mean 5, bound 8.5: spill
    spill = p.pick(ts, req(prompt))
    assert spill is not home
    assert all(p.pick(ts, req(prompt)) is spill for _ in range(10))  # spills to a stable second choice
    home.in_flight = 0
    assert p.pick(ts, req(prompt)) is home  # and comes back when the load evens out


def test_prefix_spill_respects_the_bound_on_every_candidate() -> None:
    ts = targets(0, 0, 0)
    p = Prefix()
    prompt = "another hot prompt"
    order = []
    rest = list(ts)
    for _ in range(3):  # the rendezvous order for this prompt
        chosen = p.pick(rest, req(prompt))
        order.append(chosen)
        rest.remove(chosen)
    order[0].in_flight = order[1].in_flight = 30  # mean 20, bound 31: both still within
    assert p.pick(ts, req(prompt)) is order[0]
    order[2].in_flight = 0
    order[0].in_flight = order[1].in_flight = 100  # mean 66.7, bound 101: still within
    assert p.pick(ts, req(prompt)) is order[0]
    order[0].in_flight = 200  # mean 100, bound 151: first spills, second fits
    assert p.pick(ts, req(prompt)) is order[1]


def test_prefix_without_request_falls_back() -> None:
    ts = targets(9, 0)
    p = Prefix()
    assert all(p.pick(ts, None) is ts[1] for _ in range(20))
