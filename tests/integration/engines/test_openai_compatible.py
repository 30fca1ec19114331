"""The openai-compatible engine against a real third-party server: ``transformers serve``
(continuous batching, CPU) serving the demo model, attached to ``corral start`` through a
config file and driven with the official ``openai`` SDK."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI

from corral.engines.transformers.demo import ensure_demo_llm
from tests.integration.servers import Server, free_port, run_corral, start_corral

SERVING_MODULES = ("transformers", "fastapi", "accelerate")  # what ``transformers[serving]`` adds here


def _transformers_cli() -> str | None:
    """The ``transformers`` command, if its ``serving`` extra is installed too."""
    if any(importlib.util.find_spec(mod) is None for mod in SERVING_MODULES):
        return None
    exe = Path(sys.executable).with_name("transformers")
    return str(exe) if exe.exists() else shutil.which("transformers")


@pytest.fixture(scope="module")
def demo_model(corral_home: Path) -> Path:
    return ensure_demo_llm(corral_home / "openai-compatible")


@pytest.fixture(scope="module")
def upstream(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``transformers serve`` on a free port; its base URL. Stopped by its PID."""
    cli = _transformers_cli()
    if cli is None:
        pytest.fail("transformers serve is not installed: pip install -r requirements.lock (it pins transformers[serving])")
    port = free_port()
    log_path = tmp_path_factory.mktemp("upstream") / "transformers-serve.log"
    command = [
        cli, "serve", str(demo_model), "--continuous-batching", "--cb-num-blocks", "16", "--cb-block-size", "32",
        "--cb-max-batch-tokens", "256", "--device", "cpu", "--host", "127.0.0.1", "--port", str(port),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"transformers serve exited with {process.returncode}:\n{log_path.read_text()}")
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"transformers serve was not ready in 120s:\n{log_path.read_text()}")
            time.sleep(0.25)
        yield url
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(5)


def _config(path: Path, source: str, upstream_model: str) -> Path:
    path.write_text(
        '[server]\nlog_level = "info"\n\n'
        '[[models]]\nname = "proxied"\nkind = "llm"\nengine = "openai-compatible"\n'
        f'source = "{source}"\n'
        f"[models.options]\nupstream_model = '{upstream_model}'\ntimeout_s = 120\n"
    )
    return path


@pytest.fixture(scope="module")
def corral(upstream: str, demo_model: Path, corral_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    config = _config(tmp_path_factory.mktemp("cfg") / "corral.toml", upstream, str(demo_model))
    server = start_corral(["--config", str(config)], corral_home, tmp_path_factory.mktemp("logs"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(corral: Server) -> Iterator[OpenAI]:
    with OpenAI(base_url=f"{corral.url}/v1", api_key="unused", max_retries=0, timeout=120) as c:
        yield c


MESSAGES = [{"role": "user", "content": "Say something."}]


def test_listed(client: OpenAI) -> None:
    assert [m.id for m in client.models.list().data] == ["proxied"]


def test_chat_stream_matches_non_stream(client: OpenAI) -> None:
    whole = client.chat.completions.create(model="proxied", messages=MESSAGES, max_tokens=8, temperature=0)  # type: ignore[arg-type]
    choice = whole.choices[0]
    assert choice.finish_reason in ("stop", "length")
    assert whole.usage is not None and whole.usage.prompt_tokens > 0 and 0 < whole.usage.completion_tokens <= 8
    assert whole.model == "proxied"

    deltas: list[str] = []
    finish = None
    usage = None
    stream = client.chat.completions.create(
        model="proxied", messages=MESSAGES, max_tokens=8, temperature=0, stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.content:
                deltas.append(c.delta.content)
            finish = c.finish_reason or finish
    assert deltas and finish == choice.finish_reason
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens
    # greedy decoding upstream is deterministic: the stream says what the whole answer said
    assert "".join(deltas) == choice.message.content


def test_text_completion(client: OpenAI) -> None:
    out = client.completions.create(model="proxied", prompt="def main(", max_tokens=6, temperature=0)
    assert out.choices[0].finish_reason in ("stop", "length") and out.choices[0].text
    assert out.usage is not None and out.usage.completion_tokens > 0
    echoed = client.completions.create(model="proxied", prompt="def main(", max_tokens=6, temperature=0, echo=True)
    assert echoed.choices[0].text == "def main(" + out.choices[0].text  # echo is done by Corral


def test_upstream_refusal_is_passed_on(client: OpenAI) -> None:
    """transformers serve refuses fields it does not know (422): the client gets a 400 naming it."""
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="proxied", messages=MESSAGES, max_tokens=4, extra_body={"ignore_eos": True},  # type: ignore[arg-type]
        )
    assert "ignore_eos" in str(info.value)


def test_n_unsupported_upstream_is_a_clear_error(client: OpenAI) -> None:
    """transformers serve answers one choice whatever ``n`` asks."""
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="proxied", messages=MESSAGES, max_tokens=4, n=2)  # type: ignore[arg-type]
    assert "1 of 2 choices" in str(info.value)


def test_closing_a_stream_frees_the_instance(client: OpenAI, corral: Server) -> None:
    stream = client.chat.completions.create(model="proxied", messages=MESSAGES, max_tokens=200, stream=True)  # type: ignore[arg-type]
    next(iter(stream))
    stream.close()
    deadline = time.monotonic() + 10
    while True:
        (instance,) = httpx.get(f"{corral.url}/health/ready").json()["models"]["proxied"]["instances"]
        if instance["in_flight"] == 0:
            break
        assert time.monotonic() < deadline, instance
        time.sleep(0.1)
    # and the upstream still serves afterwards
    out = client.chat.completions.create(model="proxied", messages=MESSAGES, max_tokens=2)  # type: ignore[arg-type]
    assert out.choices[0].finish_reason in ("stop", "length")


def test_unreachable_upstream_fails_the_start(demo_model: Path, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    config = _config(tmp_path / "corral.toml", url, str(demo_model))
    result = run_corral(["start", "--config", str(config), "--port", "0"], tmp_path, timeout=60)
    assert result.returncode == 1, result.stderr
    assert url in result.stderr and "unreachable" in result.stderr
    assert "Traceback" not in result.stderr


def _sse_objects(body: str) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: {")]


def test_a_stream_is_passed_through_with_only_its_id_and_model_rewritten(
    client: OpenAI, corral: Server, upstream: str, demo_model: Path
) -> None:
    """An OpenAI client streaming from an openai-compatible upstream gets the upstream's
    own events (its fields, its layout), with Corral's response id and model name; the
    usage chunk Corral asked for to count tokens reaches the client only when it asked
    too, and the request's record still has its tokens and finish reason."""
    body = {"messages": MESSAGES, "max_tokens": 6, "temperature": 0, "stream": True}
    direct = httpx.post(f"{upstream}/chat/completions", json={**body, "model": str(demo_model)}, timeout=120)
    proxied = httpx.post(f"{corral.url}/v1/chat/completions", json={**body, "model": "proxied"}, timeout=120)
    assert proxied.status_code == 200, proxied.text
    rid = proxied.headers["x-request-id"]
    theirs, ours = _sse_objects(direct.text), _sse_objects(proxied.text)
    assert ours and all(o["id"] == f"chatcmpl-{rid}" and o["model"] == "proxied" for o in ours)
    strip = lambda o: {k: v for k, v in o.items() if k not in ("id", "model", "created")}  # noqa: E731
    assert [strip(o) for o in ours] == [strip(t) for t in theirs if t.get("choices")]  # the upstream's own chunks
    assert proxied.text.rstrip().endswith("data: [DONE]")

    with_usage = httpx.post(f"{corral.url}/v1/chat/completions", timeout=120, json={
        **body, "model": "proxied", "stream_options": {"include_usage": True}})
    usage = [o["usage"] for o in _sse_objects(with_usage.text) if o.get("usage")]
    assert len(usage) == 1 and usage[0]["completion_tokens"] > 0

    deadline = time.monotonic() + 10
    while (found := httpx.get(f"{corral.url}/admin/v1/requests/{rid}")).status_code == 404:
        assert time.monotonic() < deadline, "the request was not recorded"
        time.sleep(0.2)
    record, spans = found.json()["request"], found.json()["spans"]
    assert record["completion_tokens"] == sum(1 for o in ours for c in o["choices"] if c["delta"].get("content"))
    assert record["prompt_tokens"] > 0 and record["ttft_s"] is not None and record["outcome"] == "ok"
    finish = [s["attributes"].get("gen_ai.response.finish_reasons") for s in spans if "gen_ai.response.finish_reasons" in s["attributes"]]
    assert finish == [[ours[-1]["choices"][0]["finish_reason"]]]
