"""``corral start --config`` serving a GGUF file with the llama.cpp engine, driven with the
official openai SDK."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import llama_cpp  # noqa: E402,F401  (the llamacpp extra; pinned in requirements.lock)
import gguf  # noqa: E402,F401

from openai import BadRequestError, OpenAI  # noqa: E402

from tests.integration.servers import Server, start_corral  # noqa: E402

MODEL = "gguf-chat"
N_CTX = 512
HELLO = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}]


@pytest.fixture(scope="module")
def gguf_server(corral_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    from corral.engines.llamacpp.gguf_export import ensure_demo_gguf

    gguf = ensure_demo_gguf(corral_home)
    config = tmp_path_factory.mktemp("llamacpp-cfg") / "corral.toml"
    config.write_text(
        '[server]\nlog_level = "warning"\n\n'
        f'[[models]]\nname = "{MODEL}"\nkind = "llm"\nengine = "llamacpp"\nsource = "{gguf}"\n'
        f"[models.options]\nn_ctx = {N_CTX}\nn_threads = 1\nmax_queue = 8\n"
    )
    server = start_corral(["--config", str(config)], corral_home, tmp_path_factory.mktemp("logs"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(gguf_server: Server) -> Iterator[OpenAI]:
    with OpenAI(base_url=f"{gguf_server.url}/v1", api_key="unused", max_retries=0, timeout=60) as c:
        yield c


def test_serves_the_gguf_model(client: OpenAI) -> None:
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_chat_stream_equals_non_stream_and_usage_adds_up(client: OpenAI) -> None:
    params = dict(model=MODEL, messages=HELLO, max_tokens=40, temperature=0)
    full = client.chat.completions.create(**params)
    choice = full.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert full.usage is not None
    assert full.usage.prompt_tokens > 10  # the ChatML rendering of two messages
    assert 1 <= full.usage.completion_tokens <= 40
    assert full.usage.total_tokens == full.usage.prompt_tokens + full.usage.completion_tokens

    stream = client.chat.completions.create(**params, stream=True, stream_options={"include_usage": True})
    pieces, finish, usage, deltas = [], None, None, 0
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.content:
                deltas += 1
                pieces.append(c.delta.content)
            finish = c.finish_reason or finish
    assert "".join(pieces) == choice.message.content
    assert finish == choice.finish_reason
    assert deltas > 1
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (full.usage.prompt_tokens, full.usage.completion_tokens)


def test_completion_max_tokens_stop_and_n(client: OpenAI) -> None:
    prompt = "def main(argv):\n"
    resp = client.completions.create(model=MODEL, prompt=prompt, max_tokens=16, temperature=0, extra_body={"ignore_eos": True})
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage is not None and resp.usage.completion_tokens == 16
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + 16
    text = resp.choices[0].text

    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(model=MODEL, prompt=prompt, max_tokens=16, temperature=0, stream=True,
                                            extra_body={"ignore_eos": True})
        if c.choices
    )
    assert streamed == text

    stop = text[6:9]
    cut = client.completions.create(model=MODEL, prompt=prompt, max_tokens=16, temperature=0, stop=[stop],
                                    extra_body={"ignore_eos": True})
    assert cut.choices[0].text == text[: text.index(stop)] and cut.choices[0].finish_reason == "stop"

    many = client.completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=1.0, seed=7, n=3,
                                     extra_body={"ignore_eos": True})
    assert sorted(c.index for c in many.choices) == [0, 1, 2]
    assert many.usage is not None and many.usage.completion_tokens == 36
    again = client.completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=1.0, seed=7, n=3,
                                      extra_body={"ignore_eos": True})
    assert [c.text for c in again.choices] == [c.text for c in many.choices]


def test_context_overflow_is_a_400(client: OpenAI, gguf_server: Server) -> None:
    with pytest.raises(BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=N_CTX)
    assert err.value.code == "context_length_exceeded"
    resp = httpx.post(f"{gguf_server.url}/v1/completions", json={"model": MODEL, "prompt": "x = 1\n" * 400})
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "context_length_exceeded" and resp.json()["error"]["param"] == "prompt"


def test_llamacpp_and_openai_compatible_through_a_cluster(corral_home: Path, tmp_path: Path) -> None:
    """Both engines behind a cluster gateway: a worker hosts the GGUF model and a proxy of
    another Corral's OpenAI API (an OpenAI-speaking upstream like any other)."""
    from corral.engines.llamacpp.gguf_export import ensure_demo_gguf
    from tests.integration.cluster.harness import Cluster, wait_for_instances

    gguf_file = ensure_demo_gguf(corral_home)
    cluster = Cluster(corral_home, tmp_path)
    upstream = start_corral(["--config", str(_upstream_config(tmp_path))], corral_home, tmp_path)
    try:
        controller = cluster.controller()
        join = ["--controller", controller.url]
        config = tmp_path / "worker.toml"
        config.write_text(
            f'[[models]]\nname = "{MODEL}"\nkind = "llm"\nengine = "llamacpp"\nsource = "{gguf_file}"\n'
            f"[models.options]\nn_ctx = {N_CTX}\nn_threads = 1\n\n"
            f'[[models]]\nname = "proxied"\nkind = "llm"\nengine = "openai-compatible"\nsource = "{upstream.url}/v1"\n'
            '[models.options]\nupstream_model = "base"\n'
        )
        cluster.worker(join, config)
        gateway = cluster.gateway(join)
        wait_for_instances(gateway, MODEL, 1)
        wait_for_instances(gateway, "proxied", 1)
        with OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0, timeout=60) as c:
            for model in (MODEL, "proxied"):
                full = c.chat.completions.create(model=model, messages=HELLO, max_tokens=12, temperature=0)
                streamed = "".join(
                    chunk.choices[0].delta.content or ""
                    for chunk in c.chat.completions.create(
                        model=model, messages=HELLO, max_tokens=12, temperature=0, stream=True
                    )
                    if chunk.choices
                )
                assert streamed == full.choices[0].message.content, model
                assert full.usage is not None and 1 <= full.usage.completion_tokens <= 12
    finally:
        cluster.stop()
        upstream.stop()


def _upstream_config(folder: Path) -> Path:
    path = folder / "upstream.toml"
    path.write_text('[[models]]\nname = "base"\nkind = "llm"\nengine = "transformers"\nsource = "demo:tiny-llama"\n')
    return path
