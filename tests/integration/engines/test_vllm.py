"""The vllm engine through the real HTTP API: ``corral start --config`` (and a cluster of
controller, worker and gateway) serving a model with ``engine = "vllm"``, driven with the
official openai SDK. vLLM has no CPU build, so the processes import the fake vLLM of
``tests/fakes`` (vLLM's documented API, no model) through ``PYTHONPATH``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai import BadRequestError, OpenAI

from tests.integration.cluster.harness import Cluster, wait_for_instances, worker_config
from tests.integration.servers import Server, free_port, launch, wait_until

FAKES = Path(__file__).resolve().parents[2] / "fakes"
MODEL = "fake-vllm"
SOURCE = "fake-org/tiny-chat"
MAX_MODEL_LEN = 256
HELLO = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}]


def pythonpath_with_fakes() -> str:
    current = os.environ.get("PYTHONPATH")
    return os.pathsep.join([str(FAKES), current] if current else [str(FAKES)])


@pytest.fixture(scope="module")
def vllm_server(corral_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    config = tmp_path_factory.mktemp("vllm-cfg") / "corral.toml"
    config.write_text(
        '[server]\nlog_level = "warning"\n\n'
        f'[[models]]\nname = "{MODEL}"\nkind = "llm"\nengine = "vllm"\nsource = "{SOURCE}"\n'
        f"[models.options]\nmax_model_len = {MAX_MODEL_LEN}\n"
        "[models.options.engine_args]\nenable_prefix_caching = true\n"
    )
    port = free_port()
    server = launch(
        ["start", "--config", str(config), "--port", str(port)],
        corral_home,
        tmp_path_factory.mktemp("logs"),
        port,
        env={"PYTHONPATH": pythonpath_with_fakes()},
    )
    wait_until(server, lambda: httpx.get(f"{server.url}/health/ready", timeout=2).status_code == 200, 60)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(vllm_server: Server) -> Iterator[OpenAI]:
    with OpenAI(base_url=f"{vllm_server.url}/v1", api_key="unused", max_retries=0, timeout=30) as c:
        yield c


def stream_chat(client: OpenAI, **params: object) -> tuple[str, str | None, object, int]:
    """Text, finish reason, usage and number of content deltas of a streamed chat."""
    pieces, finish, usage = [], None, None
    stream = client.chat.completions.create(**params, stream=True, stream_options={"include_usage": True})  # type: ignore[call-overload]
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.content:
                pieces.append(c.delta.content)
            finish = c.finish_reason or finish
    return "".join(pieces), finish, usage, len(pieces)


def test_serves_the_model(client: OpenAI) -> None:
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_chat_stream_equals_non_stream(client: OpenAI) -> None:
    params = dict(model=MODEL, messages=HELLO, max_tokens=8, temperature=0, extra_body={"ignore_eos": True})
    full = client.chat.completions.create(**params)  # type: ignore[call-overload]
    choice = full.choices[0]
    assert choice.message.role == "assistant" and len(choice.message.content.split()) == 8
    assert choice.finish_reason == "length"
    assert full.usage is not None and full.usage.completion_tokens == 8
    assert full.usage.prompt_tokens > 4  # the four words of the messages, and the chat template's markers

    text, finish, usage, deltas = stream_chat(client, **params)
    assert text == choice.message.content and finish == "length"
    assert deltas == 8  # one delta per token, as vLLM streams them
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (full.usage.prompt_tokens, 8)


def test_completions_with_n_seed_and_stop(client: OpenAI) -> None:
    params = dict(model=MODEL, prompt="once upon a time", max_tokens=6, temperature=1.0, seed=7, n=2,
                  extra_body={"ignore_eos": True})
    many = client.completions.create(**params)  # type: ignore[call-overload]
    texts = {c.index: c.text for c in many.choices}
    assert sorted(texts) == [0, 1] and texts[0] != texts[1]
    assert many.usage is not None and many.usage.completion_tokens == 12

    streamed = {0: "", 1: ""}
    for chunk in client.completions.create(**params, stream=True):  # type: ignore[call-overload]
        for c in chunk.choices:
            streamed[c.index] += c.text
    assert streamed == texts

    stop = texts[0].split()[2]
    cut = client.completions.create(**{**params, "n": 1, "stop": [stop]})  # type: ignore[call-overload]
    assert cut.choices[0].text == texts[0][: texts[0].index(stop)] and cut.choices[0].finish_reason == "stop"


def test_bad_requests_are_openai_400s(client: OpenAI, vllm_server: Server) -> None:
    with pytest.raises(BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=MAX_MODEL_LEN)  # type: ignore[arg-type]
    assert err.value.code == "context_length_exceeded"

    resp = httpx.post(f"{vllm_server.url}/v1/completions", json={"model": MODEL, "prompt": "x " * 300, "max_tokens": 4})
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", "prompt", "context_length_exceeded")
    assert str(MAX_MODEL_LEN) in error["message"]

    tool = {"type": "function", "function": {"name": "clock", "parameters": {"type": "object", "properties": {}}}}
    with pytest.raises(BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=HELLO, tools=[tool])  # type: ignore[arg-type,list-item]
    assert err.value.code == "unsupported_parameter"


def test_through_a_cluster(corral_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Controller, worker and gateway processes; the worker hosts the vllm model."""
    monkeypatch.setenv("PYTHONPATH", pythonpath_with_fakes())  # read by the processes launched below
    cluster = Cluster(corral_home, tmp_path)
    try:
        controller = cluster.controller()
        join = ["--controller", controller.url]
        cluster.worker(join, worker_config(tmp_path, "worker", [{"name": MODEL, "engine": "vllm", "source": SOURCE}]))
        gateway = cluster.gateway(join)
        wait_for_instances(gateway, MODEL, 1)
        with OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0, timeout=30) as c:
            params = dict(model=MODEL, messages=HELLO, max_tokens=6, temperature=0, extra_body={"ignore_eos": True})
            full = c.chat.completions.create(**params)  # type: ignore[call-overload]
            text, finish, usage, _ = stream_chat(c, **params)
            assert text == full.choices[0].message.content and finish == full.choices[0].finish_reason == "length"
            assert full.usage is not None and full.usage.completion_tokens == 6
            assert usage is not None and usage.prompt_tokens == full.usage.prompt_tokens
            with pytest.raises(BadRequestError) as err:
                c.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=10_000)  # type: ignore[arg-type]
            assert err.value.code == "context_length_exceeded"
    finally:
        cluster.stop()
