"""Deterministic boundary sweeps beside the random campaigns: every out-of-range value
the strategies know, for every bounded field of every route, sent once on a minimal
valid body (the random campaign may never draw a given one)."""

from __future__ import annotations

from typing import Any

from tests.integration.fuzz.admin_strategies import (
    AUTOSCALE_RANGES, DEPLOY_RANGES, FEEDBACK_RANGES, NO_ENGINE, SCALE_RANGES, UPDATE_RANGES, Admin, A, _path,
)
from tests.integration.fuzz.conftest import Models
from tests.integration.fuzz.harness import Probe, encode, refused
from tests.integration.fuzz.strategies import CHAT, COMPLETION, EMBEDDING, RERANK, Route

HI = [{"role": "user", "content": "hi"}]


def _sweep(method: str, path: str, base: dict[str, Any], ranges: dict[str, list[Any]],
           auth: tuple[tuple[str, str], ...] = ()) -> list[Probe]:
    return [
        Probe(method, path, encode({**base, field: value}), refused(field), auth, what=f"sweep {field}={str(value)[:20]}")
        for field, values in sorted(ranges.items()) for value in values
    ]


def boundary_sweep(route: Route, base: dict[str, Any], auth: tuple[tuple[str, str], ...]) -> list[Probe]:
    """Every out-of-range value ``route`` knows, each once on ``base``."""
    return _sweep("POST", route.path, base, route.out_of_range, auth)


def openai_sweep(models: Models, auth: tuple[tuple[str, str], ...]) -> list[Probe]:
    bases: list[tuple[Route, dict[str, Any]]] = []
    for model in models.llm:
        bases += [(CHAT, {"model": model, "messages": HI, "max_tokens": 2}),
                  (COMPLETION, {"model": model, "prompt": "hi", "max_tokens": 2})]
    bases += [(EMBEDDING, {"model": m, "input": "hi"}) for m in models.embedding]
    bases += [(RERANK, {"model": m, "query": "q", "documents": ["d"]}) for m in models.rerank or models.embedding[:1]]
    return [p for route, base in bases for p in _sweep("POST", route.path, base, route.out_of_range, auth)]


def admin_sweep(admin: Admin, auth: tuple[tuple[str, str], ...]) -> list[Probe]:
    name = _path(admin.throwaway)
    deploy = {"name": "fuzz-never-deployed", "engine": NO_ENGINE, "source": "demo:tiny-llama"}
    probes = _sweep("POST", f"{A}/models", deploy, DEPLOY_RANGES)
    probes += _sweep("PATCH", f"{A}/models/{name}", {"weight": 1.0}, UPDATE_RANGES)
    probes += _sweep("POST", f"{A}/models/{name}/scale", {"replicas": 1}, SCALE_RANGES)
    probes += _sweep("PUT", f"{A}/models/{name}/autoscale", {"max_replicas": 2}, AUTOSCALE_RANGES)
    for protected in admin.protected:  # the shared models: the same refused writes
        probes += _sweep("POST", f"{A}/models/{_path(protected)}/scale", {"replicas": 1}, SCALE_RANGES)
    feedback = {"request_id": admin.request_ids[0], "rating": 5}
    probes += _sweep("POST", "/v1/feedback", feedback, FEEDBACK_RANGES, auth)
    return probes
