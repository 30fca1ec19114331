"""The controller's table of gateway demand: sums fresh reports, drops stale ones, wakes
on cold requests, bounds what it holds; the wire form round-trips and refuses junk."""

from __future__ import annotations

import time

import pytest

from corral.controller import demand as demand_module
from corral.controller.demand import DemandTable
from corral.core.demand import GatewayDemand, demand_from_json, demand_to_json


def test_sums_fresh_reports_and_wakes_on_cold_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    woken: list[str] = []
    table = DemandTable(on_cold=woken.append)
    table.report("g1", {"chat": GatewayDemand(3, 0, 0.5)})
    table.report("g2", {"chat": GatewayDemand(2, 2, 1.5), "embed": GatewayDemand(1)})
    assert table.gateway_demand() == {"chat": GatewayDemand(5, 2, 1.5), "embed": GatewayDemand(1, 0, None)}
    assert woken == ["chat"]
    now = time.monotonic()
    monkeypatch.setattr(demand_module.time, "monotonic", lambda: now + demand_module.STALE_S + 1)
    assert table.gateway_demand() == {}


def test_holds_a_bounded_number_of_gateways(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demand_module, "MAX_GATEWAYS", 3)
    table = DemandTable()
    for i in range(10):
        table.report(f"g{i}", {"chat": GatewayDemand(1)})
    assert table.gateway_demand() == {"chat": GatewayDemand(3)}


def test_wire_form() -> None:
    demand = {"chat": GatewayDemand(4, 1, 0.25)}
    assert demand_from_json(demand_to_json(demand)) == demand
    for junk in ([], {"chat": 3}, {"chat": {"waiting": "many"}}):
        with pytest.raises((TypeError, ValueError, AttributeError)):
            demand_from_json(junk)
