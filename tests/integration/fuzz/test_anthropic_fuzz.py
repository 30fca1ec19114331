"""Property-based fuzzing of the Anthropic Messages routes of the shared ``corral start``
(``/v1/messages`` and ``/v1/messages/count_tokens`` on every chat model, and an embedding
model that must refuse them), with Anthropic's key header, its error shape and its
stream checked on every answer (``anthropic_strategies.ANTHROPIC``). Seeded and bounded,
as the OpenAI campaign."""

from __future__ import annotations

import httpx
from hypothesis import strategies as st

from tests.integration.conftest import API_KEY
from tests.integration.fuzz.anthropic_strategies import ANTHROPIC, COUNT_TOKENS, MESSAGES, auth_and_routes
from tests.integration.fuzz.conftest import Models
from tests.integration.fuzz.harness import Fuzzer, Stats
from tests.integration.fuzz.runner import SCOPES, campaign, documented_routes, log_problems, sweep, unfuzzed, verdict
from tests.integration.fuzz.sweeps import boundary_sweep
from tests.integration.fuzz.strategies import mutated
from tests.integration.servers import Server

EXAMPLES = 300
KEY = (("x-api-key", API_KEY),)
HI = [{"role": "user", "content": "hi"}]


def test_anthropic_routes_survive_fuzzing(
    demo_server: Server, fuzz_http: httpx.Client, fuzz_models: Models, fuzz_report: dict[str, Stats]
) -> None:
    offset = len(demo_server.log())
    routes = [mutated(route, m, KEY) for m in fuzz_models.llm for route in (MESSAGES, MESSAGES, COUNT_TOKENS)]
    routes += [mutated(route, fuzz_models.embedding[0], KEY, serves=False) for route in (MESSAGES, COUNT_TOKENS)]
    probes = st.one_of(*routes, auth_and_routes(fuzz_models.llm[0], KEY))
    stats = fuzz_report.setdefault("anthropic", Stats())
    fuzzer = Fuzzer(fuzz_http, stats, ANTHROPIC)
    for model in fuzz_models.llm:
        sweep(boundary_sweep(MESSAGES, {"model": model, "messages": HI, "max_tokens": 2}, KEY), fuzzer)
        sweep(boundary_sweep(COUNT_TOKENS, {"model": model, "messages": HI}, KEY), fuzzer)
    campaign("anthropic", probes, fuzzer, EXAMPLES)
    after = log_problems(demo_server, offset)
    for model in fuzz_models.llm:  # every chat model still answers, in both routes
        for path, body in (("/v1/messages", {"model": model, "messages": HI, "max_tokens": 4}),
                           ("/v1/messages/count_tokens", {"model": model, "messages": HI})):
            resp = fuzz_http.post(path, json=body, headers=dict(KEY), timeout=30)
            if resp.status_code != 200:
                after.append(f"{model} no longer answers {path}: {resp.status_code} {resp.text[:300]}")
    after += unfuzzed(documented_routes(fuzz_http), stats, SCOPES["anthropic"])
    assert not stats.violations and not after, verdict(stats, after)
    assert stats.tried >= EXAMPLES
