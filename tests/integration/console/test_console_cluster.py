"""The console served by ``corral controller --ui-gateway URL`` against a real cluster
(controller, one worker joined through it, one gateway): the overview shows the worker
and its model ready, the playground streams through the controller's gateway proxy, and
the charts read the gateway's /metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.cluster.harness import ADMIN_TOKEN, CLUSTER_TOKEN, Cluster, wait_for_instances, worker_config
from tests.integration.servers import Server, free_port, launch, wait_until

MODEL = "cluster-chat"


@pytest.fixture(scope="module")
def cluster(corral_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    logs = tmp_path_factory.mktemp("console-cluster")
    c = Cluster(corral_home, logs)
    gateway_port = free_port()
    try:
        controller = c.controller(extra=["--ui-gateway", f"http://127.0.0.1:{gateway_port}"])
        c.worker(["--controller", controller.url], worker_config(logs, "w", [{"name": MODEL}]))
        gateway = launch(["gateway", "--controller", controller.url, "--port", str(gateway_port),
                          "--cluster-token", CLUSTER_TOKEN], corral_home, logs, gateway_port)
        c.processes.append(gateway)
        wait_until(gateway, lambda: httpx.get(f"{gateway.url}/health", timeout=2).status_code == 200)
        wait_for_instances(gateway, MODEL, 1)
        yield controller, gateway
    finally:
        c.stop()


def test_the_controllers_console_works_against_the_cluster(cluster: tuple[Server, Server],
                                                           open_console: Callable[..., Any]) -> None:
    controller, gateway = cluster
    assert httpx.get(f"{controller.url}/ui/config.json").json()["gateway"] == "/ui/gateway"
    page = open_console(controller.url, ADMIN_TOKEN)
    row = page.locator(f"#models tr[data-model='{MODEL}']")
    row.wait_for(timeout=30_000)
    assert "ready" in row.inner_text() and "cluster" in page.locator("#panel-overview").inner_text()
    assert page.locator("#panel-overview section", has_text="Workers").locator("tr", has_text="alive").count() == 1

    page.click("a[data-panel='playground']")
    page.locator(f"#chat-model option[value='{MODEL}']").wait_for(state="attached")
    page.fill("#chat-max-tokens", "8")
    page.fill("#chat-message", "hello")
    page.click("#chat-send")
    page.locator("#chat-instance").wait_for(timeout=60_000)
    assert page.locator("#chat-instance").inner_text().startswith(f"instance {MODEL}-")
    assert page.locator("#chat-log .answer").last.inner_text().strip()

    page.click("a[data-panel='overview']")
    page.wait_for_function(
        f"() => Number(document.querySelector(\"#charts .model-charts[data-model='{MODEL}'] [data-chart='reqs']\")"
        "?.dataset.points || 0) > 0", timeout=20_000)
    page.click("a[data-panel='requests']")
    page.locator("#panel-requests", has_text="kept by each gateway").wait_for()
