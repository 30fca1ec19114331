"""Property-based fuzzing of the Ollama routes (``/api/...``) of the shared ``corral
start``: chat and generate for every LLM, embed and embeddings for every embedding
model, show, the reads, the management routes, wrong methods, unknown routes and models,
bad keys. No 5xx, no hang, errors as ``{"error": ...}`` naming the field, streams well
formed; then every model still answers on both protocols and the log has no traceback."""

from __future__ import annotations

import httpx
from hypothesis import strategies as st

from tests.integration.fuzz.conftest import AUTH, Models
from tests.integration.fuzz.harness import Fuzzer, Probe, Stats, encode, refused
from tests.integration.fuzz.ollama_strategies import (
    CHAT, EMBED, EMBEDDINGS, GENERATE, MANAGEMENT, OLLAMA, READS, SHOW, other_probes,
)
from tests.integration.fuzz.runner import (
    SCOPES, campaign, documented_routes, log_problems, plain_requests_problems, sweep, unfuzzed, verdict,
)
from tests.integration.fuzz.strategies import Route, mutated
from tests.integration.servers import Server

EXAMPLES = 300


def _sweep(models: Models) -> list[Probe]:
    """Every out-of-range value once, on a minimal valid body of each route; every route
    without a body once (the random campaign may miss one)."""
    bases: list[tuple[Route, dict[str, object]]] = []
    for model in models.llm[:1]:
        bases += [(CHAT, {"model": model, "messages": [{"role": "user", "content": "hi"}], "options": {"num_predict": 2}}),
                  (GENERATE, {"model": model, "prompt": "hi", "options": {"num_predict": 2}})]
    bases += [(EMBED, {"model": models.embedding[0], "input": "hi"}), (EMBEDDINGS, {"model": models.embedding[0], "prompt": "hi"})]
    probes = [
        Probe("POST", route.path, encode({**base, name: value}), refused(name), AUTH, what=f"sweep {name}={str(value)[:30]}")
        for route, base in bases for name, values in sorted(route.out_of_range.items()) for value in values
    ]
    probes += [Probe(m, p, encode({"model": models.llm[0]}), refused(None, 403), AUTH, what="management") for m, p in MANAGEMENT]
    probes += [Probe("GET", p, None, refused(None, 200), AUTH, what="read") for p in READS]
    return probes


def ollama_problems(http: httpx.Client, models: Models) -> list[str]:
    headers = dict(AUTH)
    problems = []
    for model in models.llm:
        body = {"model": model, "messages": [{"role": "user", "content": "hello"}], "stream": False, "options": {"num_predict": 4}}
        resp = http.post("/api/chat", json=body, headers=headers, timeout=30)
        if resp.status_code != 200 or not resp.json().get("done"):
            problems.append(f"{model} no longer answers /api/chat: {resp.status_code} {resp.text[:300]}")
    for model in models.embedding:
        resp = http.post("/api/embed", json={"model": model, "input": "hello"}, headers=headers, timeout=30)
        if resp.status_code != 200:
            problems.append(f"{model} no longer answers /api/embed: {resp.status_code} {resp.text[:300]}")
    return problems


def test_ollama_routes_survive_fuzzing(
    demo_server: Server, fuzz_http: httpx.Client, fuzz_models: Models, fuzz_report: dict[str, Stats]
) -> None:
    offset = len(demo_server.log())
    routes = [mutated(CHAT, m, AUTH) for m in fuzz_models.llm] + [mutated(GENERATE, m, AUTH) for m in fuzz_models.llm]
    routes += [mutated(EMBED, m, AUTH) for m in fuzz_models.embedding]
    routes += [mutated(EMBEDDINGS, m, AUTH) for m in fuzz_models.embedding]
    routes += [mutated(SHOW, m, AUTH) for m in fuzz_models.llm + fuzz_models.embedding]
    # the wrong kind of model: a chat model asked for embeddings and the other way round (400 naming the model)
    routes += [mutated(EMBED, fuzz_models.llm[0], AUTH, serves=False), mutated(CHAT, fuzz_models.embedding[0], AUTH, serves=False)]
    probes = st.one_of(*routes, other_probes(fuzz_models.llm[0], AUTH))
    stats = fuzz_report.setdefault("ollama", Stats())
    fuzzer = Fuzzer(fuzz_http, stats, OLLAMA)
    sweep(_sweep(fuzz_models), fuzzer)
    campaign("ollama", probes, fuzzer, EXAMPLES)
    after = plain_requests_problems(fuzz_http, fuzz_models) + ollama_problems(fuzz_http, fuzz_models)
    after += log_problems(demo_server, offset) + unfuzzed(documented_routes(fuzz_http), stats, SCOPES["ollama"])
    assert not stats.violations and not after, verdict(stats, after)
    assert stats.tried >= EXAMPLES
