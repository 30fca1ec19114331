"""Property-based fuzzing of the OpenAI routes of the shared ``corral start`` (real
engines: every model ``/v1/models`` lists; chat and completions for LLMs, embeddings and
rerank for embedding models), plus model lookups, authentication and unknown routes.

Seeded and bounded; the counts are printed at the end of the session. Every route of
``/openapi.json`` belongs to one campaign (this one, the admin one or feedback), and
each campaign checks that it reached all of its routes.
"""

from __future__ import annotations

from urllib.parse import quote

import httpx
from hypothesis import strategies as st

from tests.integration.fuzz.conftest import AUTH, Models
from tests.integration.fuzz.harness import Fuzzer, Probe, Stats, encode, refused
from tests.integration.fuzz.runner import (
    SCOPES, campaign, sweep, documented_routes, log_problems, plain_requests_problems, unfuzzed, unscoped, verdict,
)
from tests.integration.fuzz.sweeps import openai_sweep
from tests.integration.fuzz.strategies import CHAT, COMPLETION, EMBEDDING, RERANK, WEIRD_STRINGS, mutated
from tests.integration.servers import Server

EXAMPLES = 400


def _lookups(models: Models) -> st.SearchStrategy[Probe]:
    """GET /v1/models/{name} with names that do not exist (404 naming ``model``)."""
    known = set(models.llm + models.embedding + models.rerank)
    names = st.one_of(st.text(min_size=1, max_size=40), st.sampled_from([s for s in WEIRD_STRINGS if s]))
    return names.filter(lambda n: n not in known and n.strip("/") == n and "\ud800" not in n and "\udfff" not in n).map(
        lambda n: Probe("GET", "/v1/models/" + quote(n, safe=""), None, refused("model", 404), AUTH, what="unknown model")
    )


def _auth_and_routes(models: Models) -> st.SearchStrategy[Probe]:
    body = encode({"model": models.llm[0], "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    bad_auth = st.sampled_from([(), (("authorization", "Bearer wrong"),), (("authorization", "Basic eA=="),),
                                (("authorization", "Bearer"),)])
    return st.one_of(
        bad_auth.map(lambda h: Probe("POST", "/v1/chat/completions", body, refused(None, 401), h, what="bad auth")),
        st.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/rerank"]).map(
            lambda p: Probe("GET", p, None, refused(None, 405), AUTH, what="wrong method")
        ),
        st.text(min_size=1, max_size=20).map(
            lambda t: Probe("POST", "/v1/" + quote(t, safe=""), body, refused(None, 404, 405), AUTH, what="unknown route")
        ),
        st.sampled_from(["/health", "/health/ready", "/v1/models", "/openapi.json"]).map(
            lambda p: Probe("GET", p, None, refused(None, 200), AUTH, what="read")
        ),
    )


def test_openai_routes_survive_fuzzing(
    demo_server: Server, fuzz_http: httpx.Client, fuzz_models: Models, fuzz_report: dict[str, Stats]
) -> None:
    offset = len(demo_server.log())
    routes = [mutated(CHAT, m, AUTH) for m in fuzz_models.llm]
    routes += [mutated(COMPLETION, m, AUTH) for m in fuzz_models.llm]
    routes += [mutated(EMBEDDING, m, AUTH) for m in fuzz_models.embedding]
    # rerank: its models, and an embedding model (which must refuse it, naming the model)
    routes += [mutated(RERANK, m, AUTH) for m in fuzz_models.rerank]
    routes += [mutated(RERANK, fuzz_models.embedding[0], AUTH, serves=False)]
    probes = st.one_of(*routes, _lookups(fuzz_models), _auth_and_routes(fuzz_models))
    stats = fuzz_report.setdefault("openai", Stats())
    fuzzer = Fuzzer(fuzz_http, stats)
    sweep(openai_sweep(fuzz_models, AUTH), fuzzer)
    campaign("openai", probes, fuzzer, EXAMPLES)
    routes = documented_routes(fuzz_http)
    after = plain_requests_problems(fuzz_http, fuzz_models) + log_problems(demo_server, offset)
    after += unfuzzed(routes, stats, SCOPES["openai"]) + unscoped(routes)
    assert not stats.violations and not after, verdict(stats, after)
    assert stats.tried >= EXAMPLES
