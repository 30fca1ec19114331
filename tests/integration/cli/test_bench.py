"""``corral bench`` as a user runs it, against the fake OpenAI server on loopback."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.servers import free_port, run_corral

API_KEY = "bench-test-key"


@pytest.fixture(scope="module")
def fake_url() -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "corral.bench.fake_openai", "--port", str(port), "--model", "fake-model",
         "--api-key", API_KEY],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()  # "ready ..." once listening
    assert line.startswith("ready"), line
    yield f"http://127.0.0.1:{port}/v1"
    process.terminate()
    process.wait(10)


@pytest.mark.integration
def test_fixed_request_count_as_json(fake_url: str, tmp_path: Path) -> None:
    result = run_corral(["bench", "--url", fake_url, "--api-key", API_KEY, "--requests", "200",
                         "--concurrency", "8", "--max-tokens", "4", "--json"], tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["requests"] == 200 and out["ok"] == 200 and out["failed"] == 0 and out["errors"] == {}
    assert out["config"]["model"] == "fake-model"  # the first of GET /models
    assert out["config"]["api_key"] == "***"  # never echoed
    assert out["output_tokens"] == 800 and out["latency_ms"]["count"] == 200
    assert out["requests_per_s"] > 0


@pytest.mark.integration
def test_streaming_duration_run_with_table(fake_url: str, tmp_path: Path) -> None:
    result = run_corral(["bench", "--url", fake_url, "--api-key", API_KEY, "--model", "fake-model", "--stream",
                         "--duration", "1s", "--concurrency", "4", "--max-tokens", "8"], tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "time to first token (ms)" in result.stdout and "inter-token latency (ms)" in result.stdout
    assert "errors        none" in result.stdout
    assert "Traceback" not in result.stderr


@pytest.mark.integration
def test_open_loop_rate_as_json(fake_url: str, tmp_path: Path) -> None:
    result = run_corral(["bench", "--url", fake_url, "--api-key", API_KEY, "--rate", "100", "--requests", "50",
                         "--stream", "--json"], tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["ok"] == 50 and out["ttft_ms"]["count"] == 50 and out["config"]["rate"] == 100.0


@pytest.mark.integration
def test_unreachable_url_is_a_clear_error(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    result = run_corral(["bench", "--url", url, "--model", "m", "--requests", "5"], tmp_path, timeout=60)
    assert result.returncode == 1
    assert f"corral bench: error: cannot reach {url}: connection refused" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


@pytest.mark.integration
def test_every_request_failing_exits_1(fake_url: str, tmp_path: Path) -> None:
    result = run_corral(["bench", "--url", fake_url, "--api-key", API_KEY, "--model", "error-503", "--requests", "10",
                         "--json"], tmp_path, timeout=60)
    assert result.returncode == 1
    assert json.loads(result.stdout)["errors"] == {"503": 10}
    assert "every request failed (503: 10)" in result.stderr


@pytest.mark.integration
def test_missing_api_key_is_explained(fake_url: str, tmp_path: Path) -> None:
    result = run_corral(["bench", "--url", fake_url, "--requests", "5"], tmp_path, timeout=60)
    assert result.returncode == 1 and "HTTP 401: pass --api-key" in result.stderr
