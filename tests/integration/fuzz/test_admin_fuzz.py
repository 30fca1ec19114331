"""Property-based fuzzing of the admin API (``/admin/v1``), ``/v1/feedback``,
``/openapi.json`` and ``/metrics`` on the shared ``corral start``.

The shared models only get reads and writes that must be refused; the throwaway model
is scaled, updated, restarted and switched for real. Afterwards the shared models'
desired state is what it was and every model still serves a plain request.
"""

from __future__ import annotations

from typing import Any

import httpx
from hypothesis import strategies as st

from tests.integration.fuzz.admin_strategies import Admin, admin_probes, feedback_probes, key_probes
from tests.integration.fuzz.conftest import AUTH, Models
from tests.integration.fuzz.harness import Fuzzer, Stats
from tests.integration.fuzz.sweeps import admin_sweep
from tests.integration.fuzz.runner import (
    SCOPES, campaign, sweep, documented_routes, log_problems, plain_requests_problems, unfuzzed, verdict,
)
from tests.integration.servers import Server

EXAMPLES = 400
FEEDBACK_EXAMPLES = 150
KEY_EXAMPLES = 150
KEPT = ("kind", "engine", "source", "routing", "replicas", "offline", "managed")  # what no fuzz write may change


def _desired(http: httpx.Client, names: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    models = {m["name"]: m for m in http.get("/admin/v1/models", timeout=10).json()["models"]}
    return {n: {k: models[n].get(k) for k in KEPT} for n in names}


def test_admin_routes_survive_fuzzing(
    demo_server: Server, fuzz_http: httpx.Client, fuzz_models: Models, fuzz_admin: Admin,
    fuzz_report: dict[str, Stats],
) -> None:
    offset = len(demo_server.log())
    before = _desired(fuzz_http, fuzz_admin.protected)
    stats = fuzz_report.setdefault("admin", Stats())
    fuzzer = Fuzzer(fuzz_http, stats)
    sweep(admin_sweep(fuzz_admin, AUTH), fuzzer)
    campaign("admin", admin_probes(fuzz_admin), fuzzer, EXAMPLES)
    campaign("admin keys", key_probes(), fuzzer, KEY_EXAMPLES)
    after = plain_requests_problems(fuzz_http, fuzz_models) + log_problems(demo_server, offset)
    after += unfuzzed(documented_routes(fuzz_http), stats, SCOPES["admin"])
    changed = _desired(fuzz_http, fuzz_admin.protected)
    if changed != before:
        after.append(f"the shared models' desired state changed: {before} -> {changed}")
    assert not stats.violations and not after, verdict(stats, after)
    assert stats.tried >= EXAMPLES


def test_feedback_survives_fuzzing(
    demo_server: Server, fuzz_http: httpx.Client, fuzz_models: Models, fuzz_admin: Admin,
    fuzz_report: dict[str, Stats],
) -> None:
    offset = len(demo_server.log())
    stats = fuzz_report.setdefault("feedback", Stats())
    campaign("feedback", feedback_probes(fuzz_admin, AUTH), Fuzzer(fuzz_http, stats), FEEDBACK_EXAMPLES)
    after = plain_requests_problems(fuzz_http, fuzz_models) + log_problems(demo_server, offset)
    after += unfuzzed(documented_routes(fuzz_http), stats, SCOPES["feedback"])
    assert not stats.violations and not after, verdict(stats, after)
    assert stats.statuses[200] > 0, "no feedback was accepted: the known request ids did not reach the records"
