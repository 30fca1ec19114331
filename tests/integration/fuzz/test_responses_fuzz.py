"""Property-based fuzzing of the Responses API routes (``/v1/responses``,
``/v1/responses/{id}``) of the shared ``corral start``: create bodies for every LLM it
lists (mutated one field at a time, as the OpenAI campaign does), an embedding model
(refused, naming ``model``), continuations of a stored response and of unknown ids, and
reads and deletes by id. No 5xx, no hang, errors in OpenAI's shape naming the field,
streams well formed (named events in sequence, ending with ``response.completed``)."""

from __future__ import annotations

import httpx
from hypothesis import strategies as st

from tests.integration.fuzz.conftest import AUTH, Models
from tests.integration.fuzz.harness import Fuzzer, Probe, Stats, encode, refused
from tests.integration.fuzz.responses_strategies import PATH, RESPONSES, continuations, reads, unhonoured_tools
from tests.integration.fuzz.runner import (
    SCOPES, campaign, documented_routes, log_problems, plain_requests_problems, sweep, unfuzzed, verdict,
)
from tests.integration.fuzz.strategies import mutated
from tests.integration.servers import Server

EXAMPLES = 200


def _sweep(models: Models) -> list[Probe]:
    """Every out-of-range value of every bounded field, once, on a minimal valid body."""
    base = {"model": models.llm[0], "input": "hi", "max_output_tokens": 2}
    return [
        Probe("POST", PATH, encode({**base, field: value}), refused(field), AUTH, what=f"sweep {field}={str(value)[:20]}")
        for field, values in sorted(RESPONSES.out_of_range.items()) for value in values
    ]


def test_responses_routes_survive_fuzzing(
    demo_server: Server, fuzz_http: httpx.Client, fuzz_models: Models, fuzz_report: dict[str, Stats]
) -> None:
    offset = len(demo_server.log())
    created = fuzz_http.post(PATH, json={"model": fuzz_models.llm[0], "input": "hi", "max_output_tokens": 2},
                             headers=dict(AUTH), timeout=30)
    assert created.status_code == 200, created.text
    known = created.json()["id"]
    routes = [mutated(RESPONSES, m, AUTH) for m in fuzz_models.llm]
    routes += [mutated(RESPONSES, fuzz_models.embedding[0], AUTH, serves=False)]
    probes = st.one_of(*routes, continuations(known, fuzz_models.llm[0], AUTH), reads(known, AUTH),
                       *[unhonoured_tools(m, AUTH) for m in fuzz_models.llm])
    stats = fuzz_report.setdefault("responses", Stats())
    fuzzer = Fuzzer(fuzz_http, stats)
    sweep(_sweep(fuzz_models), fuzzer)
    campaign("responses", probes, fuzzer, EXAMPLES)
    after = plain_requests_problems(fuzz_http, fuzz_models) + log_problems(demo_server, offset)
    after += unfuzzed(documented_routes(fuzz_http), stats, SCOPES["responses"])
    assert fuzz_http.get(f"{PATH}/{known}", headers=dict(AUTH)).status_code == 200, "the stored response was lost"
    assert not stats.violations and not after, verdict(stats, after)
    assert stats.tried >= EXAMPLES and stats.statuses[200] >= 10
