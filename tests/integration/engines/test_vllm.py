"""The vllm engine through the real HTTP API: ``corral start --config`` (and a cluster of
controller, worker and gateway) serving a model with ``engine = "vllm"``, driven with the
official openai SDK. vLLM has no CPU build, so the processes import the fake vLLM of
``tests/fakes`` (vLLM's documented API, no model) through ``PYTHONPATH``."""

from __future__ import annotations

import json
import os
import signal
import time
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
MISTRAL = "fake-mistral"  # vLLM's MistralTokenizer: apply_chat_template, no chat_template attribute
QUEUE = 4  # vLLM's max_num_queued_reqs on MODEL
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
        f"[models.options.engine_args]\nenable_prefix_caching = true\nmax_num_queued_reqs = {QUEUE}\n\n"
        f'[[models]]\nname = "{MISTRAL}"\nkind = "llm"\nengine = "vllm"\nsource = "mistralai/fake-mistral-7b"\n'
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
    assert sorted(m.id for m in client.models.list().data) == [MISTRAL, MODEL]


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


def error_of(resp: httpx.Response) -> tuple[int, str, str | None, str | None]:
    error = resp.json()["error"]
    return resp.status_code, error["type"], error["param"], error["code"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"stop": [""]}, "stop"),
        ({"n": 0}, "n"),
        ({"presence_penalty": 3}, "presence_penalty"),
        ({"frequency_penalty": -2.5}, "frequency_penalty"),
        ({"max_tokens": 0}, "max_tokens"),
    ],
)
def test_values_vllm_refuses_are_400s_naming_the_field(
    vllm_server: Server, body: dict[str, object], param: str
) -> None:
    """What vLLM 0.33's SamplingParams refuses is refused by Corral's own validation first,
    as for every engine: a 400 naming the field, not vLLM's exception as a 500."""
    for path, request in (("chat/completions", {"messages": HELLO}), ("completions", {"prompt": "hi"})):
        resp = httpx.post(f"{vllm_server.url}/v1/{path}", json={"model": MODEL, **request, **body}, timeout=30)
        status, kind, named, _ = error_of(resp)
        assert (status, kind, named) == (400, "invalid_request_error", param), resp.text


def test_greedy_with_n_choices_answers_n_choices(client: OpenAI) -> None:
    """vLLM refuses temperature 0 with n > 1; OpenAI answers it, and so does Corral."""
    params = dict(model=MODEL, messages=HELLO, max_tokens=5, temperature=0, n=3, extra_body={"ignore_eos": True})
    full = client.chat.completions.create(**params)  # type: ignore[call-overload]
    assert sorted(c.index for c in full.choices) == [0, 1, 2]
    texts = {c.message.content for c in full.choices}
    assert len(texts) == 1 and len(texts.pop().split()) == 5  # greedy: the same answer three times
    assert all(c.finish_reason == "length" for c in full.choices)
    assert full.usage is not None and full.usage.completion_tokens == 15

    streamed: dict[int, str] = {}
    stream = client.chat.completions.create(**params, stream=True)  # type: ignore[call-overload]
    for chunk in stream:
        for c in chunk.choices:
            streamed[c.index] = streamed.get(c.index, "") + (c.delta.content or "")
    assert streamed == {c.index: c.message.content for c in full.choices}


def test_a_full_vllm_queue_is_a_429(vllm_server: Server) -> None:
    """n choices take n of vLLM's max_num_queued_reqs slots: more than it has is refused
    by vLLM (QueueOverflowError), an Overloaded error for the client."""
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 2, "temperature": 1, "n": QUEUE + 1}
    resp = httpx.post(f"{vllm_server.url}/v1/completions", json=body, timeout=30)
    status, kind, _, code = error_of(resp)
    assert (status, kind, code) == (429, "rate_limit_error", "overloaded"), resp.text
    assert "request limit" in resp.json()["error"]["message"]
    assert "retry-after" in resp.headers
    ok = httpx.post(f"{vllm_server.url}/v1/completions", json={**body, "n": QUEUE}, timeout=30)
    assert ok.status_code == 200 and len(ok.json()["choices"]) == QUEUE


def test_chat_on_a_mistral_tokenizer(client: OpenAI, vllm_server: Server) -> None:
    params = dict(model=MISTRAL, messages=HELLO, max_tokens=4, temperature=0, extra_body={"ignore_eos": True})
    full = client.chat.completions.create(**params)  # type: ignore[call-overload]
    assert full.choices[0].finish_reason == "length" and len(full.choices[0].message.content.split()) == 4
    assert full.usage is not None and full.usage.prompt_tokens > 4
    # the tokenizer's own refusal: a generation prompt after an assistant message
    messages = [*HELLO, {"role": "assistant", "content": "Hello"}]
    body = {"model": MISTRAL, "messages": messages}
    resp = httpx.post(f"{vllm_server.url}/v1/chat/completions", json=body, timeout=30)
    assert error_of(resp)[:3] == (400, "invalid_request_error", "messages"), resp.text


def sse_events(response: httpx.Response) -> Iterator[str]:
    for line in response.iter_lines():
        if line.startswith("data: "):
            yield line[len("data: "):]


def test_through_a_cluster(corral_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Controller, worker and gateway processes; the worker hosts the vllm model."""
    monkeypatch.setenv("PYTHONPATH", pythonpath_with_fakes())  # read by the processes launched below
    cluster = Cluster(corral_home, tmp_path)
    try:
        controller = cluster.controller()
        join = ["--controller", controller.url]
        # "-slow": the fake generates a token per 50 ms, so a stream is still running when the worker stops
        models = [{"name": MODEL, "engine": "vllm", "source": f"{SOURCE}-slow"}]
        worker = cluster.worker(join, worker_config(tmp_path, "worker", models), extra=["--drain-timeout", "1"])
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

        # stopping the worker with a stream in flight: after the drain bound, the stream
        # ends with an error event and [DONE] (vLLM's shutdown alone would leave it hanging)
        body = {"model": MODEL, "messages": HELLO, "max_tokens": 1000, "temperature": 0, "ignore_eos": True,
                "stream": True}
        with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", json=body, timeout=60) as response:
            assert response.status_code == 200
            events = sse_events(response)
            assert "choices" in json.loads(next(events))
            stopped_at = time.monotonic()
            worker.process.send_signal(signal.SIGTERM)
            rest = list(events)
            took = time.monotonic() - stopped_at
        assert rest[-1] == "[DONE]"
        errors = [json.loads(e)["error"] for e in rest[:-1] if "error" in json.loads(e)]
        assert len(errors) == 1, rest[-3:]
        assert "stopped while generating" in errors[0]["message"], errors
        assert took < 15, took  # drain grace 1 s + drain timeout 1 s + the abort; never the 50 s of the answer
        assert worker.process.wait(30) == 0
    finally:
        cluster.stop()
