"""The autoscaling policy on a simulated clock: delays, one-step scale-up, one-at-a-time
scale-down, wake from zero, idle to zero, TTFT, bounds."""

from __future__ import annotations

from corral.controller.autoscaler import TTFT_SETTLE_S, ModelScaler, Signal
from corral.core.spec import AutoscalePolicy

POLICY = AutoscalePolicy(
    min_replicas=0, max_replicas=4, target_in_flight=2, upscale_delay_s=5,
    downscale_delay_s=20, downscale_to_zero_delay_s=60,
)


def run(scaler: ModelScaler, current: int, demand: float, start: float, seconds: int, **extra: float) -> tuple[int, list[tuple[float, str, int]]]:
    """Tick once a second; apply every decision; return the final count and the decisions."""
    decisions = []
    for t in range(seconds):
        now = start + t
        decision = scaler.decide(now, current, Signal(demand=demand, ready=current, **extra))  # type: ignore[arg-type]
        if decision is not None:
            assert decision.old == current
            current = decision.new
            decisions.append((now, decision.reason, current))
    return current, decisions


def test_wakes_at_once_from_zero_to_what_demand_needs() -> None:
    scaler = ModelScaler(POLICY)
    decision = scaler.decide(0.0, 0, Signal(demand=5, ready=0))
    assert decision is not None and (decision.reason, decision.new) == ("wake", 3)
    assert scaler.decide(0.0, 0, Signal(demand=0, ready=0, cold_waiting=1)) is not None


def test_stays_at_zero_without_demand() -> None:
    assert run(ModelScaler(POLICY), 0, 0, 0, 600)[1] == []


def test_scales_up_in_one_step_after_the_delay_only_if_sustained() -> None:
    scaler = ModelScaler(POLICY)
    current, decisions = run(scaler, 1, 7, 0, 5)  # 4 s of overload: not yet
    assert decisions == [] and current == 1
    current, decisions = run(scaler, 1, 7, 5, 2)
    assert decisions == [(5, "up", 4)]  # ceil(7 / 2) = 4, in one step
    scaler = ModelScaler(POLICY)
    run(scaler, 1, 7, 0, 3)
    current, decisions = run(scaler, 1, 1, 3, 1)  # a dip resets nothing but counts in the window
    current, decisions = run(scaler, 1, 7, 4, 5)
    # the dip sampled at t=3 held until the next sample at t=4: overload has lasted the
    # full 5 s only at t=9 (a window starting at the dip would fire a tick early)
    assert decisions == []
    assert run(scaler, 1, 7, 9, 1)[1] == [(9, "up", 4)]


def test_never_above_max() -> None:
    current, decisions = run(ModelScaler(POLICY), 1, 1000, 0, 30)
    assert current == 4 and [d[1] for d in decisions] == ["up"]


def test_scales_down_one_at_a_time_each_after_the_full_delay() -> None:
    current, decisions = run(ModelScaler(POLICY), 4, 1, 0, 61)
    assert [(t, r, n) for t, r, n in decisions] == [(20, "down", 3), (40, "down", 2), (60, "down", 1)]


def test_goes_to_zero_only_after_the_idle_delay_and_only_when_min_is_zero() -> None:
    current, decisions = run(ModelScaler(POLICY), 1, 0, 0, 61)
    assert decisions == [(60, "idle", 0)]
    current, decisions = run(ModelScaler(AutoscalePolicy(min_replicas=1, downscale_to_zero_delay_s=1)), 1, 0, 0, 100)
    assert decisions == []


def test_some_demand_keeps_one_instance() -> None:
    assert run(ModelScaler(POLICY), 1, 0.5, 0, 300)[1] == []


def test_ttft_adds_one_and_then_waits_for_the_new_count_to_show() -> None:
    policy = AutoscalePolicy(min_replicas=1, max_replicas=4, target_in_flight=100, upscale_delay_s=5, target_ttft_p90_s=1.0)
    scaler = ModelScaler(policy)
    current, decisions = run(scaler, 1, 3, 0, 45, ttft_p90_s=2.5)
    assert [d[1:] for d in decisions][:1] == [("ttft", 2)]
    assert decisions[1][0] - decisions[0][0] >= TTFT_SETTLE_S
    # fast enough: no TTFT step
    assert run(ModelScaler(policy), 1, 3, 0, 40, ttft_p90_s=0.5)[1] == []


def test_a_policy_change_moves_the_count_within_bounds() -> None:
    scaler = ModelScaler(POLICY)
    scaler.set_policy(AutoscalePolicy(min_replicas=2, max_replicas=3))
    decision = scaler.decide(0, 0, Signal(demand=0, ready=0))
    assert decision is not None and (decision.reason, decision.new) == ("bounds", 2)
    decision = scaler.decide(1, 5, Signal(demand=0, ready=5))
    assert decision is not None and (decision.reason, decision.new) == ("bounds", 3)
