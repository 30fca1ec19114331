"""Fixtures of the fuzz tests: the shared session server's models by kind, an HTTP
client, a throwaway model for the admin fuzzer (deployed first, removed after), and the
counts of every fuzz run, printed at the end of the session."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.integration.conftest import API_KEY
from tests.integration.fuzz.admin_strategies import Admin
from tests.integration.fuzz.harness import DEADLINE_S, Stats
from tests.integration.servers import Server

AUTH = (("authorization", f"Bearer {API_KEY}"),)
THROWAWAY = "fuzz-throwaway"  # the only model the admin fuzzer changes for real


@dataclass(frozen=True)
class Models:
    llm: tuple[str, ...]
    embedding: tuple[str, ...]
    rerank: tuple[str, ...]


@pytest.fixture(scope="session")
def fuzz_http(demo_server: Server) -> Iterator[httpx.Client]:
    # the read timeout is the hang deadline; connections are reused as a client would
    with httpx.Client(base_url=demo_server.url, timeout=httpx.Timeout(DEADLINE_S, connect=5.0)) as c:
        yield c


@pytest.fixture(scope="session")
def fuzz_models(fuzz_http: httpx.Client) -> Models:
    """Every model ``/v1/models`` lists, by kind (from the admin API's view)."""
    listed = [m["id"] for m in fuzz_http.get("/v1/models", headers=dict(AUTH)).json()["data"] if m["id"] != THROWAWAY]
    kinds = {m["name"]: m["kind"] for m in fuzz_http.get("/admin/v1/models").json()["models"]}
    llm = tuple(m for m in listed if kinds.get(m) == "llm")
    embedding = tuple(m for m in listed if kinds.get(m) == "embedding")
    rerank = tuple(m for m in listed if kinds.get(m) == "rerank")
    assert llm and embedding, f"the shared server should serve both kinds: {kinds}"
    return Models(llm, embedding, rerank)


REPORT = pytest.StashKey[dict[str, Stats]]()


@pytest.fixture(scope="session")
def fuzz_report(request: pytest.FixtureRequest) -> dict[str, Stats]:
    """Each fuzz campaign's counts, by name, shown in pytest's terminal summary."""
    return request.config.stash.setdefault(REPORT, {})


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """The numbers for the closing note (requests, statuses, 5xx, hangs, time), printed
    whatever the capture mode and outcome, and written to ``fuzz-summary.txt`` in the
    session's temporary folder."""
    runs = config.stash.get(REPORT, {})
    if not runs:
        return
    lines = [stats.summary(name) for name, stats in sorted(runs.items())]
    total = Stats()
    for stats in runs.values():
        total.tried += stats.tried
        total.statuses.update(stats.statuses)
        total.hangs += stats.hangs
        total.server_errors += stats.server_errors
        total.slowest_s = max(total.slowest_s, stats.slowest_s)
        total.elapsed_s += stats.elapsed_s
        total.violations += stats.violations
    lines.append(total.summary("total"))
    terminalreporter.section("fuzz campaigns")
    for line in lines:
        terminalreporter.write_line(line)
    factory = getattr(config, "_tmp_path_factory", None)
    if factory is not None:
        (factory.getbasetemp() / "fuzz-summary.txt").write_text("\n".join(lines) + "\n")


def poll(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def fuzz_admin(fuzz_http: httpx.Client, fuzz_models: Models) -> Iterator[Admin]:
    """Deploys the throwaway model (the random tiny Llama), yields what the admin fuzzer may
    touch, then (after the module) removes it and waits until no listing shows it, so
    later tests see the shared server as it was."""
    body = {"name": THROWAWAY, "kind": "llm", "engine": "transformers", "source": "demo:tiny-llama"}
    resp = fuzz_http.post("/admin/v1/models", json=body, timeout=30)
    assert resp.status_code == 201, resp.text

    def view() -> dict:  # type: ignore[type-arg]
        return fuzz_http.get(f"/admin/v1/models/{THROWAWAY}", timeout=10).json()["model"]

    poll(lambda: view()["ready"] >= 1, 180, f"{THROWAWAY} to be ready")
    instances = tuple(i["id"] for i in view()["instances"])
    request_ids = []
    for model in fuzz_models.llm[:1] + fuzz_models.embedding[:1]:
        if model in fuzz_models.llm:
            r = fuzz_http.post("/v1/completions", json={"model": model, "prompt": "hi", "max_tokens": 2}, headers=dict(AUTH))
        else:
            r = fuzz_http.post("/v1/embeddings", json={"model": model, "input": "hi"}, headers=dict(AUTH))
        assert r.status_code == 200, r.text
        request_ids.append(r.headers["x-request-id"])
    protected = fuzz_models.llm + fuzz_models.embedding + fuzz_models.rerank
    yield Admin(THROWAWAY, instances, protected, tuple(request_ids))
    resp = fuzz_http.delete(f"/admin/v1/models/{THROWAWAY}", timeout=30)
    assert resp.status_code == 200, resp.text

    def gone() -> bool:
        listed = fuzz_http.get("/v1/models", headers=dict(AUTH), timeout=10).json()["data"]
        admin = fuzz_http.get("/admin/v1/models", timeout=10).json()["models"]
        return all(m["id"] != THROWAWAY for m in listed) and all(m["name"] != THROWAWAY for m in admin)

    poll(gone, 60, f"{THROWAWAY} to be removed")
