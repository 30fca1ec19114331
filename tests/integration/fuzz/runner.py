"""Running a seeded, bounded hypothesis campaign against the server, then checking that
the server is still whole: ready, every model answering a plain request, and nothing
unexpected in its log while the campaign ran."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import httpx
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.integration.fuzz.conftest import AUTH, Models
from tests.integration.fuzz.harness import Fuzzer, Probe, Stats
from tests.integration.servers import Server

# Generate only (no shrinking): every request goes to a real server, and a violation is
# recorded with its exact input rather than raised, so there is nothing to shrink.
SETTINGS = settings(
    derandomize=True, deadline=None, database=None, phases=[Phase.explicit, Phase.generate], print_blob=False,
    suppress_health_check=list(HealthCheck),
)


def campaign(name: str, probes: st.SearchStrategy[Probe], fuzzer: Fuzzer, examples: int) -> Stats:
    started = time.monotonic()

    @settings(SETTINGS, max_examples=examples)
    @given(probes)
    def send(probe: Probe) -> None:
        fuzzer.send(probe)

    send()
    fuzzer.stats.elapsed_s += time.monotonic() - started
    return fuzzer.stats


def sweep(probes: list[Probe], fuzzer: Fuzzer) -> Stats:
    """Send fixed probes (a boundary sweep), counted with the campaign's."""
    started = time.monotonic()
    for probe in probes:
        fuzzer.send(probe)
    fuzzer.stats.elapsed_s += time.monotonic() - started
    return fuzzer.stats


def plain_requests_problems(http: httpx.Client, models: Models) -> list[str]:
    """Every model still serves a plain request, and the server says it is ready."""
    problems = []
    headers = dict(AUTH)
    ready = http.get("/health/ready", timeout=10)
    if ready.status_code != 200:
        problems.append(f"/health/ready is {ready.status_code}: {ready.text[:500]}")
    for model in models.llm:
        body = {"model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
        resp = http.post("/v1/chat/completions", json=body, headers=headers, timeout=30)
        if resp.status_code != 200:
            problems.append(f"{model} no longer answers a chat request: {resp.status_code} {resp.text[:300]}")
        resp = http.post("/v1/completions", json={"model": model, "prompt": "hello", "max_tokens": 4}, headers=headers, timeout=30)
        if resp.status_code != 200:
            problems.append(f"{model} no longer answers a completion request: {resp.status_code} {resp.text[:300]}")
    for model in models.rerank:
        resp = http.post("/v1/rerank", json={"model": model, "query": "hi", "documents": ["hello"]}, headers=headers, timeout=30)
        if resp.status_code != 200:
            problems.append(f"{model} no longer answers a rerank request: {resp.status_code} {resp.text[:300]}")
    for model in models.embedding:
        resp = http.post("/v1/embeddings", json={"model": model, "input": ["hello"]}, headers=headers, timeout=30)
        if resp.status_code != 200:
            problems.append(f"{model} no longer answers an embedding request: {resp.status_code} {resp.text[:300]}")
    return problems


def log_problems(server: Server, offset: int) -> list[str]:
    """Tracebacks the server logged during the campaign (an engine crash, an unexpected
    error), with some context for the report."""
    text = server.log()[offset:]
    out = []
    at = text.find("Traceback")
    while at != -1 and len(out) < 5:
        start = text.rfind("\n", 0, max(0, at - 400)) + 1
        out.append("server log:\n" + text[start : at + 3000])
        at = text.find("Traceback", at + 3000)
    return out


def verdict(stats: Stats, after: list[str]) -> str:
    shown = stats.violations[:40]
    more = len(stats.violations) - len(shown)
    return "\n".join([stats.summary("run"), *shown, *([f"... and {more} more"] if more > 0 else []), *after])


def documented_routes(http: httpx.Client) -> list[tuple[str, str]]:
    """(METHOD, path template) of every operation in the server's ``/openapi.json``."""
    resp = http.get("/openapi.json", timeout=10)
    assert resp.status_code == 200, resp.text
    return [(m.upper(), p) for p, item in resp.json()["paths"].items() for m in item]


def unfuzzed(routes: list[tuple[str, str]], stats: Stats, scope: Callable[[str], bool]) -> list[str]:
    """The documented routes in ``scope`` (by path template) that no probe reached."""
    out = []
    for method, template in routes:
        if not scope(template):
            continue
        pattern = re.compile("^" + "[^?]+".join(map(re.escape, re.split(r"\{[^}]+\}", template))) + "$")
        if not any(m == method and pattern.match(path) for m, path in stats.hits):
            out.append(f"{method} {template} was not fuzzed")
    return out


# which campaign fuzzes which documented route (by path template): every route in one
SCOPES: dict[str, Callable[[str], bool]] = {
    "openai": lambda p: (p.startswith("/v1/") and p != "/v1/feedback"
                         and not p.startswith(("/v1/responses", "/v1/messages")))
    or p in ("/health", "/health/ready"),
    "responses": lambda p: p.startswith("/v1/responses"),
    "anthropic": lambda p: p.startswith("/v1/messages"),
    "admin": lambda p: p.startswith("/admin/") or p in ("/openapi.json", "/metrics"),
    "feedback": lambda p: p == "/v1/feedback",
    "ollama": lambda p: p.startswith("/api/") or p == "/",
}


def unscoped(routes: list[tuple[str, str]]) -> list[str]:
    """Documented routes no campaign claims (a new route needs a fuzzer)."""
    return [f"{m} {p} belongs to no fuzz campaign" for m, p in routes if not any(s(p) for s in SCOPES.values())]
