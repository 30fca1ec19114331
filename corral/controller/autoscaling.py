"""The autoscaler's loop: signals of every autoscaled model in, ``replicas`` out.

It runs next to the Manager (in the controller process; standalone: in ``corral start``)
and moves an autoscaled spec's ``replicas`` through ``Manager.scale`` with actor
``autoscaler``, so every decision is an audit event like a person's scale, and the
reconcile loop does the starting and the draining. Once a second (at once when a
gateway reports a request waiting for a model with no ready instance: ``wake``) it
reads, per model:

- requests in flight and queued at its engines, from the loads the manager polls off
  the workers;
- requests waiting in gateways, and gateways' time to first token, from a
  ``DemandSource`` (standalone: the in-process router and metrics);

and hands them to the model's ``ModelScaler`` (``autoscaler.py``), which owns the policy.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from corral.controller.autoscaler import Decision, ModelScaler, Signal
from corral.controller.manager import Manager
from corral.core.demand import DemandSource, GatewayDemand
from corral.core.errors import CorralError

log = logging.getLogger(__name__)

TICK_S = 1.0


class Autoscaling:
    def __init__(self, manager: Manager, demand: DemandSource, tick: float = TICK_S) -> None:
        self._manager = manager
        self._demand = demand
        self._tick = tick
        self._scalers: dict[str, ModelScaler] = {}
        self._kick = asyncio.Event()
        self.decisions_total: dict[tuple[str, str], int] = {}  # (model, up|down) -> count
        manager.decision_view = self.view

    def wake(self, model: str) -> None:
        """A gateway holds a request for ``model`` and nothing can serve it: look now."""
        self._kick.set()

    async def run(self) -> None:
        while True:
            try:
                await self.step(time.monotonic())
            except Exception:  # one bad pass must not end autoscaling
                log.exception("autoscaling pass failed")
            self._kick.clear()
            try:
                await asyncio.wait_for(self._kick.wait(), self._tick)
            except TimeoutError:
                pass

    async def step(self, now: float) -> None:
        specs = {s.name: s for s in self._manager.deployed() if s.autoscale is not None}
        for name in [n for n in self._scalers if n not in specs]:
            del self._scalers[name]
        if not specs:
            return
        gateways = self._demand.gateway_demand()
        engines = self._manager.engine_demand()
        for name, spec in specs.items():
            assert spec.autoscale is not None
            scaler = self._scalers.get(name)
            if scaler is None:
                scaler = self._scalers[name] = ModelScaler(spec.autoscale)
            scaler.set_policy(spec.autoscale)
            seen = gateways.get(name, GatewayDemand())
            in_engines, ready = engines.get(name, (0, 0))
            signal = Signal(in_engines + seen.waiting, ready, seen.ttft_p90_s, seen.cold_waiting)
            decision = scaler.decide(now, spec.replicas, signal)
            if decision is not None:
                await self._apply(name, decision)

    async def _apply(self, name: str, decision: Decision) -> None:
        direction = "up" if decision.new > decision.old else "down"
        log.info("autoscaler: %s %s", name, decision.describe())
        detail = {"from": decision.old, "to": decision.new, "reason": decision.reason, **decision.detail}
        try:
            await self._manager.scale(name, decision.new, "autoscaler", detail)
        except CorralError as exc:  # removed meanwhile, or the store is down: the next tick decides again
            log.warning("autoscaler could not scale %s: %s", name, exc.message)
            return
        key = (name, direction)
        self.decisions_total[key] = self.decisions_total.get(key, 0) + 1

    def replicas(self) -> dict[str, tuple[int, int]]:
        """Per autoscaled model: (desired, ready), for the metrics."""
        engines = self._manager.engine_demand()
        return {s.name: (s.replicas, engines.get(s.name, (0, 0))[1]) for s in self._manager.deployed() if s.autoscale}

    def view(self, name: str) -> dict[str, Any] | None:
        """The last decision for the admin API's model view."""
        scaler = self._scalers.get(name)
        if scaler is None or scaler.last is None:
            return None
        d = scaler.last
        return {"from": d.old, "to": d.new, "reason": d.reason, "detail": d.detail,
                "age_s": round(time.monotonic() - (scaler.last_at or 0), 1)}
