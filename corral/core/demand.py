"""What gateways see of demand, for the autoscaler: the seam between the gateway that
holds requests and the controller that adds instances.

A gateway's router reports, per model, the requests it holds waiting for an instance
and its recent time to first token; the autoscaler (``corral.controller.autoscaling``)
adds them to the engines' own in-flight and queued counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class GatewayDemand:
    waiting: int = 0  # requests queued in the gateway for the model
    cold_waiting: int = 0  # of those, waiting because the model has no ready instance
    ttft_p90_s: float | None = None  # time to first token p90 over the last look-back


class DemandSource(Protocol):
    def gateway_demand(self) -> dict[str, GatewayDemand]:
        """What gateways see per model right now."""
        ...


@runtime_checkable
class DemandSink(Protocol):
    """Optional capability of a registry served by a controller: gateways report what
    they hold, so the controller's autoscaler counts it (and wakes a model at zero)."""

    async def report_demand(self, gateway_id: str, demand: dict[str, GatewayDemand]) -> None: ...


def demand_to_json(demand: dict[str, GatewayDemand]) -> dict[str, dict[str, float | int | None]]:
    return {m: {"waiting": d.waiting, "cold_waiting": d.cold_waiting, "ttft_p90_s": d.ttft_p90_s} for m, d in demand.items()}


def demand_from_json(data: object) -> dict[str, GatewayDemand]:
    """Raises ValueError/TypeError/AttributeError on a malformed report."""
    if not isinstance(data, dict):
        raise TypeError("a demand report is an object of models")
    out = {}
    for model, d in data.items():
        ttft = d.get("ttft_p90_s")
        out[str(model)[:256]] = GatewayDemand(
            max(0, int(d.get("waiting", 0))), max(0, int(d.get("cold_waiting", 0))), float(ttft) if ttft is not None else None
        )
    return out
