"""``corral start`` as a user runs it: config files, --model, and clear failures."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from tests.integration.servers import Server, run_corral, start_corral


def test_help_is_fast_and_imports_no_engine(tmp_path: Path) -> None:
    code = (
        "import sys, time; t = time.perf_counter(); import corral.cli.main as m; "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules; print(time.perf_counter() - t)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(out.stdout) < 1.0
    result = run_corral(["start", "--help"], tmp_path)
    assert result.returncode == 0 and "--config" in result.stdout and "--model" in result.stdout


def test_bad_config_names_key_and_line_without_traceback(tmp_path: Path) -> None:
    config = tmp_path / "corral.toml"
    config.write_text(
        '[server]\nport = 8000\n\n[[models]]\nname = "m"\nkind = "llm"\nengine = "transformers"\n'
        'source = "demo:tiny-llama"\n[models.options]\nmax_batch_sise = 4\n'
    )
    result = run_corral(["start", "--config", str(config)], tmp_path)
    assert result.returncode == 2
    assert f"{config}:10:" in result.stderr
    assert "max_batch_sise" in result.stderr and "max_batch_size" in result.stderr  # with a suggestion
    assert "Traceback" not in result.stderr


def test_bad_value_and_missing_file(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[[models]]\nname = "m"\nkind = "chat"\nengine = "transformers"\nsource = "x"\n')
    result = run_corral(["start", "--config", str(config)], tmp_path)
    assert result.returncode == 2 and f"{config}:3:" in result.stderr and "kind" in result.stderr
    missing = run_corral(["start", "--config", str(tmp_path / "nope.toml")], tmp_path)
    assert missing.returncode == 2 and "not found" in missing.stderr and "Traceback" not in missing.stderr


def test_unreachable_hub_model_fails_fast_with_advice(tmp_path: Path) -> None:
    result = run_corral(["start", "--model", "some-org/some-model", "--port", "0"], tmp_path, timeout=120)
    assert result.returncode == 1
    assert "could not download model 'some-org/some-model'" in result.stderr
    assert "local folder" in result.stderr


@pytest.fixture(scope="module")
def config_server(corral_home: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    config = tmp_path_factory.mktemp("cfg") / "corral.toml"
    config.write_text(
        '[server]\nmax_body_bytes = 2048\nlog_level = "warning"\n\n'
        '[[models]]\nname = "tiny"\nkind = "llm"\nengine = "transformers"\nsource = "demo:tiny-llama"\n'
        "replicas = 2\n[models.options]\nmax_batch_size = 4\nmax_context = 256\n"
    )
    server = start_corral(["--config", str(config)], corral_home, tmp_path_factory.mktemp("logs"))
    yield server
    server.stop()


def test_config_file_declares_models_limits_and_replicas(config_server: Server) -> None:
    client = OpenAI(base_url=f"{config_server.url}/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list().data] == ["tiny"]
    ready = httpx.get(f"{config_server.url}/health/ready").json()
    assert len(ready["models"]["tiny"]["instances"]) == 2
    out = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert out.usage is not None and out.usage.completion_tokens <= 4
    # max_context = 256 from the options table
    too_long = httpx.post(
        f"{config_server.url}/v1/chat/completions",
        json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 300},
    )
    assert too_long.status_code == 400 and too_long.json()["error"]["param"] == "max_tokens"
    # max_body_bytes = 2048 from the [server] table
    big = httpx.post(f"{config_server.url}/v1/completions", json={"model": "tiny", "prompt": "x" * 3000})
    assert big.status_code == 413


def test_model_flag_serves_a_local_folder(corral_home: Path, tmp_path: Path, config_server: Server) -> None:
    folder = corral_home / "demo-llm-v1"  # built by the servers above
    assert (folder / "config.json").exists()
    server = start_corral(["--model", str(folder), "--name", "local-llama"], corral_home, tmp_path)
    try:
        client = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["local-llama"]
        text = client.completions.create(model="local-llama", prompt="import", max_tokens=3).choices[0].text
        assert isinstance(text, str)
    finally:
        assert server.stop() == 0


def test_sigterm_exits_cleanly_during_a_stream(config_server: Server, corral_home: Path, tmp_path: Path) -> None:
    server = start_corral(["--model", str(corral_home / "demo-llm-v1")], corral_home, tmp_path)
    body = {"model": "demo-llm-v1", "prompt": "x", "max_tokens": 2000, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=30) as resp:
        next(resp.iter_lines())
        start = time.monotonic()
        code = server.stop()
    assert code == 0
    assert time.monotonic() - start < 15
