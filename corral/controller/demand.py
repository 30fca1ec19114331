"""The controller's table of what gateways hold, per model: the gateway side of the
autoscaler's signal in a cluster (``corral.core.demand``). Gateways that follow this
controller report every second, and at once when a request waits for a model with no
ready instance; a report older than ``STALE_S`` (its gateway gone) no longer counts."""

from __future__ import annotations

import time
from collections.abc import Callable

from corral.core.demand import GatewayDemand

STALE_S = 3.0
MAX_GATEWAYS = 1024  # reports kept; the oldest go first (a bound on what clients can make us hold)


class DemandTable:
    def __init__(self, on_cold: Callable[[str], None] = lambda model: None) -> None:
        self._reports: dict[str, tuple[float, dict[str, GatewayDemand]]] = {}
        self.on_cold = on_cold

    def report(self, gateway_id: str, demand: dict[str, GatewayDemand]) -> None:
        self._reports.pop(gateway_id, None)
        self._reports[gateway_id] = (time.monotonic(), demand)
        while len(self._reports) > MAX_GATEWAYS:
            self._reports.pop(next(iter(self._reports)))
        for model, d in demand.items():
            if d.cold_waiting:
                self.on_cold(model)

    def gateway_demand(self) -> dict[str, GatewayDemand]:
        """Summed over the gateways that reported lately (TTFT: the slowest gateway's p90)."""
        now = time.monotonic()
        out: dict[str, GatewayDemand] = {}
        for at, demand in self._reports.values():
            if now - at > STALE_S:
                continue
            for model, d in demand.items():
                seen = out.get(model, GatewayDemand())
                ttfts = [t for t in (seen.ttft_p90_s, d.ttft_p90_s) if t is not None]
                out[model] = GatewayDemand(seen.waiting + d.waiting, seen.cold_waiting + d.cold_waiting,
                                           max(ttfts) if ttfts else None)
        return out
