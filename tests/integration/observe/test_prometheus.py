"""A real Prometheus scrapes a standalone server: the exposition is accepted and the
values it stores equal the traffic sent. Needs the ``prometheus`` binary
(``scripts/install-system-deps.sh`` installs it)."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from tests.integration.conftest import DEMO_CONFIG, write_config
from tests.integration.observe.test_metrics_http import CHAT, EMBED, send_traffic
from tests.integration.servers import Server, free_port, start_corral

T = TypeVar("T")


@pytest.fixture(scope="module")
def server(corral_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    config = write_config(tmp_path_factory.mktemp("prometheus-config"), DEMO_CONFIG)
    server = start_corral(["--config", str(config)], corral_home, tmp_path_factory.mktemp("prometheus-corral-logs"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def prometheus(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Prometheus scraping ``server`` every second; yields its base URL."""
    binary = shutil.which("prometheus")
    assert binary, "the prometheus binary is missing: run scripts/install-system-deps.sh"
    folder = tmp_path_factory.mktemp("prometheus")
    config = folder / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        "  - job_name: corral\n    scrape_interval: 1s\n    scrape_timeout: 1s\n    metrics_path: /metrics\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{server.port}']\n"
    )
    port = free_port()
    log_path = folder / "prometheus.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={folder / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        eventually(lambda: httpx.get(f"{url}/-/ready", timeout=2).status_code == 200 or None, 60, log_path)
        yield url
    finally:
        process.terminate()  # this process only, by its PID
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def eventually(probe: Callable[[], T | None], timeout: float, log_path: Path | None = None) -> T:
    """Call ``probe`` until it returns something other than None (transport errors retry)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            result = probe()
            if result is not None:
                return result
        except (httpx.TransportError, AssertionError) as exc:
            last = exc
        time.sleep(0.25)
    log = log_path.read_text(errors="replace")[-4000:] if log_path else ""
    raise AssertionError(f"not within {timeout}s (last: {last!r})\n{log}")


def query(url: str, promql: str) -> list[dict[str, Any]]:
    resp = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=5)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["status"] == "success", body
    return body["data"]["result"]  # type: ignore[no-any-return]


def total(results: list[dict[str, Any]], **labels: str) -> float | None:
    """The sum of the matching instant-vector samples, or None when there are none. Prometheus
    stores no empty labels: ``model=""`` matches a sample without ``model``."""
    values = [float(r["value"][1]) for r in results if all(r["metric"].get(k, "") == v for k, v in labels.items())]
    return sum(values) if values else None


def test_prometheus_scrapes_the_values_sent(server: Server, prometheus: str) -> None:
    sent = send_traffic(server.url)
    chats = sent.chat + sent.chat_stream

    def requests_match() -> list[dict[str, Any]] | None:
        results = query(prometheus, "corral_requests_total")
        ok = (
            total(results, model=CHAT, route="chat", outcome="ok") == chats
            and total(results, model=EMBED, route="embedding", outcome="ok") == sent.embeddings
            and total(results, model="", route="chat", outcome="error") == sent.unknown
        )
        return results if ok else None

    try:
        results = eventually(requests_match, 60)
    except AssertionError as exc:
        targets = httpx.get(f"{prometheus}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
        raise AssertionError(f"{exc}\nstored: {query(prometheus, 'corral_requests_total')}\ntargets: {targets}")
    assert {r["metric"]["job"] for r in results} == {"corral"}
    # the metrics' own "instance" label clashes with the target's: Prometheus keeps it as instance_id
    chat_instances = {r["metric"].get("instance_id") for r in results if r["metric"].get("model") == CHAT}
    assert chat_instances == sent.instances[CHAT]
    assert not [r for r in results if r["metric"].get("model") == "no-such-model"]

    (target,) = httpx.get(f"{prometheus}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
    assert target["health"] == "up" and target["lastError"] == ""
    assert total(query(prometheus, 'up{job="corral"}')) == 1

    durations = query(prometheus, "corral_request_duration_seconds_count")
    assert total(durations, model=CHAT, route="chat") == chats
    assert total(durations, model=EMBED, route="embedding") == sent.embeddings
    assert (total(query(prometheus, "corral_request_duration_seconds_sum"), model=CHAT) or 0) > 0
    assert total(query(prometheus, "corral_time_to_first_token_seconds_count"), model=CHAT) == chats
    assert total(query(prometheus, "corral_prompt_tokens_total"), model=CHAT) == sent.chat_prompt_tokens
    assert total(query(prometheus, "corral_completion_tokens_total"), model=CHAT) == sent.chat_completion_tokens
    assert total(query(prometheus, "corral_prompt_tokens_total"), model=EMBED) == sent.embed_prompt_tokens

    # the buckets make sense to PromQL: a median between the fastest and slowest bucket
    median = query(
        prometheus,
        f'histogram_quantile(0.5, sum by (le) (corral_request_duration_seconds_bucket{{model="{CHAT}"}}))',
    )
    assert 0 < float(median[0]["value"][1]) <= 600
    assert total(query(prometheus, "corral_instance_up"), model=CHAT) == 1
    assert total(query(prometheus, 'corral_instance_state{state="ready"}'), model=EMBED) == 1
