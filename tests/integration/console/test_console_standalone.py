"""The web console against a real ``corral start`` (its default models: SmolLM2 on
llama.cpp and the MiniLM embedding model), driven in headless Chromium: what an operator
sees and does, checked through the page and, where it matters, through the API."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.console.conftest import NARROW
from tests.integration.servers import Server, start_corral

ADMIN = "console-admin-7f3a"
KEY = "console-key-2b9e"
DEMO = "console-demo"
WAIT_MS = 120_000


@pytest.fixture(scope="module")
def server(corral_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    started = start_corral(["--admin-token", ADMIN, "--api-key", KEY], corral_home, tmp_path_factory.mktemp("console-logs"))
    yield started
    started.stop()


def admin_get(server: Server, path: str) -> Any:
    answer = httpx.get(f"{server.url}/admin/v1{path}", headers={"authorization": f"Bearer {ADMIN}"}, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()


def chat(server: Server, model: str = "smollm2", request_id: str | None = None, stream: bool = True) -> None:
    headers = {"authorization": f"Bearer {KEY}", **({"x-request-id": request_id} if request_id else {})}
    body = {"model": model, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8, "stream": stream}
    answer = httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=headers, timeout=60)
    assert answer.status_code == 200, answer.text


def model_row(page: Any, name: str) -> Any:
    return page.locator(f"#models tr[data-model='{name}']")


def test_overview_lists_the_default_models_ready(server: Server, open_console: Callable[..., Any]) -> None:
    page = open_console(server.url, ADMIN)
    for name in ("smollm2", "all-minilm-l6-v2"):
        row = model_row(page, name)
        row.wait_for()
        assert row.locator("td.ready").inner_text() == "1" and "ready" in row.inner_text()
    assert page.locator("#instances tr[data-state='ready']").count() == 2
    assert "standalone" in page.locator("#panel-overview").inner_text()


def test_a_wrong_value_shows_the_api_message_next_to_the_field(server: Server, open_console: Callable[..., Any]) -> None:
    page = open_console(server.url, ADMIN, panel="actions")
    page.fill("#deploy-name", "bad-one")
    page.fill("#deploy-engine", "transformers")
    page.fill("#deploy-source", "demo:tiny-llama")
    page.fill("#deploy-replicas", "5000")
    page.click("#deploy-submit")
    error = page.locator("#deploy-replicas-error")
    error.wait_for()
    assert "replicas" in error.inner_text() and "1024" in error.inner_text()
    assert "invalid" in (page.get_attribute("#deploy-replicas", "class") or "")
    page.fill("#deploy-replicas", "1")
    page.fill("#deploy-engine", "no-such-engine")
    page.click("#deploy-submit")
    page.locator("#deploy-engine-error").filter(has_text="no-such-engine").wait_for()
    assert page.locator("#deploy-replicas-error").inner_text() == ""
    assert all(m["name"] != "bad-one" for m in admin_get(server, "/models")["models"])


def test_deploy_scale_offline_and_online_from_the_console(server: Server, open_console: Callable[..., Any]) -> None:
    page = open_console(server.url, ADMIN, actor="alice", panel="actions")
    page.fill("#deploy-name", DEMO)
    page.fill("#deploy-engine", "transformers")
    page.fill("#deploy-source", "demo:tiny-llama")
    page.click("#deploy-submit")
    page.locator("#progress li", has_text=f"deploy {DEMO}: done").wait_for(timeout=WAIT_MS)

    row = page.locator(f"#model-actions tr[data-model='{DEMO}']")
    row.locator("input.replicas").fill("2")
    row.locator("button.scale").click()
    page.locator("#progress li", has_text=f"scale {DEMO} to 2: done").wait_for(timeout=WAIT_MS)
    assert admin_get(server, f"/models/{DEMO}")["model"]["ready"] == 2

    page.click("a[data-panel='overview']")
    ready = page.locator(f"#instances tr[data-model='{DEMO}'][data-state='ready']")
    ready.nth(1).wait_for()
    assert ready.count() == 2
    target = ready.first.get_attribute("data-instance")
    page.click(f"#instances button[data-instance='{target}'][data-action='offline']")  # confirmed by the fixture
    page.locator(f"#instances tr[data-instance='{target}'][data-state='offline']").wait_for(timeout=WAIT_MS)
    states = {i["id"]: i["state"] for i in admin_get(server, f"/models/{DEMO}")["model"]["instances"]}
    assert states[target] == "offline" and sorted(states.values()) == ["offline", "ready"]
    page.click(f"#instances button[data-instance='{target}'][data-action='online']")
    page.locator(f"#instances tr[data-instance='{target}'][data-state='ready']").wait_for(timeout=WAIT_MS)

    page.click("a[data-panel='actions']")
    audit = page.locator("#audit")
    audit.locator("tr", has_text="online").first.wait_for()
    events = admin_get(server, "/audit?limit=20")["events"]
    mine = [(e["action"], e["target"]) for e in events if e["actor"] == "alice@127.0.0.1"]
    assert {("deploy", DEMO), ("scale", DEMO), ("offline", target), ("online", target)} <= set(mine)
    assert "alice@127.0.0.1" in audit.inner_text()


def test_chat_in_the_playground_streams_the_real_model(server: Server, open_console: Callable[..., Any]) -> None:
    page = open_console(server.url, ADMIN, api_key=KEY, panel="playground")
    page.locator("#chat-model option[value='smollm2']").wait_for(state="attached")
    page.select_option("#chat-model", "smollm2")
    page.fill("#chat-system", "You are a helpful assistant.")
    page.fill("#chat-temperature", "0")
    page.fill("#chat-max-tokens", "24")
    page.fill("#chat-message", "What is the capital of France?")
    page.evaluate("""() => { window.__mutations = 0; new MutationObserver(m => { window.__mutations += m.length; })
                      .observe(document.getElementById('chat-log'), {subtree: true, childList: true, characterData: true}); }""")
    page.click("#chat-send")
    page.locator("#chat-instance").wait_for(timeout=WAIT_MS)
    answer = page.locator("#chat-log .answer").last.inner_text()
    assert answer.strip() and "[" not in answer[:1]
    assert page.evaluate("window.__mutations") >= 3  # the answer grew delta by delta
    assert page.locator("#chat-instance").inner_text().startswith("instance smollm2-")
    tokens = int(page.locator("#chat-tokens").inner_text().split()[0])
    assert 0 < tokens <= 24
    stats = page.locator("#chat-stats").inner_text()
    assert "latency" in stats and "TTFT" in stats

    page.fill("#embedding-input", "hello world")
    page.click("#embedding-send")
    page.locator("#embedding-out", has_text="384 dimensions").wait_for()


def test_thumbs_up_lands_in_the_records(server: Server, open_console: Callable[..., Any]) -> None:
    rid = f"console-fb-{time.time_ns()}"
    chat(server, request_id=rid)
    page = open_console(server.url, ADMIN, api_key=KEY, panel="requests")
    row = page.locator(f"#request-list tr[data-request='{rid}']")
    deadline = time.monotonic() + 20
    while not row.count() and time.monotonic() < deadline:  # records are written in batches
        page.click("#requests-refresh")
        page.wait_for_timeout(500)
    row.locator("button.thumb-up").click()
    row.locator(".feedback-state", has_text="rated good").wait_for()
    record = admin_get(server, f"/requests/{rid}")["request"]
    assert record["feedback_rating"] == 1
    row.locator("button.show-trace").click()
    page.locator("#trace tr.span").first.wait_for()
    assert "chat smollm2" in page.locator("#trace").inner_text()
    page.select_option("#filter-status", "error")
    row.wait_for(state="detached")  # an answered request is not an error
    shown = page.locator("#request-list tr[data-request] td:nth-child(5)").all_inner_texts()
    assert not [s for s in shown if s.endswith(" ok")], shown  # other tests' errors may be listed, no success


def test_charts_draw_non_empty_series_after_traffic(server: Server, open_console: Callable[..., Any]) -> None:
    page = open_console(server.url, ADMIN, api_key=KEY)
    page.wait_for_timeout(2500)  # a first scrape before the traffic
    for _ in range(3):
        chat(server)
    chart = page.locator("#charts .model-charts[data-model='smollm2']")
    chart.wait_for(timeout=20_000)
    for kind in ("reqs", "tokens", "ttft"):
        page.wait_for_function(
            f"() => Number(document.querySelector(\"#charts .model-charts[data-model='smollm2'] [data-chart='{kind}']\")"
            "?.dataset.nonzero || 0) > 0", timeout=20_000)
    assert chart.locator("canvas").count() == 4  # uPlot drew each of the four


@pytest.mark.parametrize("panel", ["overview", "actions", "playground", "requests"])
def test_usable_at_400_px(server: Server, open_console: Callable[..., Any], panel: str) -> None:
    page = open_console(server.url, ADMIN, api_key=KEY, viewport=NARROW, panel=panel, shot=f"narrow-{panel}")
    page.locator(f"#panel-{panel} section").first.wait_for()
    page.wait_for_timeout(2000)  # a status poll or two drew the panel
    assert page.evaluate("document.documentElement.scrollWidth") <= 400  # wide tables scroll inside their box
    for tab in page.locator("#tabs a").all():
        box = tab.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 400
