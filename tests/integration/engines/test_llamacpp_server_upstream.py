"""The openai-compatible engine in front of a real third-party OpenAI server:
``python -m llama_cpp.server`` (llama-cpp-python's own server) serving the demo GGUF,
started by the test on loopback, queried through ``corral start`` with the official
``openai`` SDK."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.integration

import llama_cpp.server.app  # noqa: E402,F401  (the llamacpp extra's server; pinned in requirements.lock)
from openai import OpenAI  # noqa: E402

from tests.integration.servers import Server, free_port, start_corral, wait_until  # noqa: E402

ALIAS = "tiny-gguf"
HELLO = [{"role": "user", "content": "Say hello"}]


@pytest.fixture(scope="module")
def llama_server(corral_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from corral.engines.llamacpp.gguf_export import ensure_demo_gguf

    gguf = ensure_demo_gguf(corral_home)
    port = free_port()
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", ALIAS,
             "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "512", "--n_threads", "1"],
            stdout=out, stderr=subprocess.STDOUT,
        )
    server = Server(process, port, log)
    try:
        wait_until(server, lambda: httpx.get(f"{server.url}/v1/models", timeout=2).status_code == 200, 120)
        yield f"{server.url}/v1"
    finally:
        server.stop()


@pytest.fixture(scope="module")
def client(llama_server: str, corral_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenAI]:
    logs = tmp_path_factory.mktemp("via-llama-server")
    config = logs / "models.toml"
    config.write_text(
        f'[[models]]\nname = "via-llama-server"\nkind = "llm"\nengine = "openai-compatible"\nsource = "{llama_server}"\n'
        f'[models.options]\nupstream_model = "{ALIAS}"\n'
    )
    corral: Server = start_corral(["--config", str(config)], corral_home, logs)
    try:
        with OpenAI(base_url=f"{corral.url}/v1", api_key="unused", max_retries=0, timeout=60) as c:
            yield c
    finally:
        corral.stop()


def _chat(client: OpenAI, model: str) -> tuple[str, str]:
    """(whole answer, streamed answer) at temperature 0."""
    whole = client.chat.completions.create(model=model, messages=HELLO, max_tokens=12, temperature=0)  # type: ignore[arg-type]
    streamed = "".join(
        chunk.choices[0].delta.content or ""
        for chunk in client.chat.completions.create(
            model=model, messages=HELLO, max_tokens=12, temperature=0, stream=True  # type: ignore[arg-type]
        )
        if chunk.choices
    )
    assert whole.usage is not None and whole.usage.prompt_tokens > 0 and 1 <= whole.usage.completion_tokens <= 12
    return whole.choices[0].message.content or "", streamed


def test_chat_through_corral_is_what_the_server_answers(client: OpenAI, llama_server: str) -> None:
    """Streamed and whole answers each equal the server's own. (They may differ from each
    other: llama-cpp-python's server drops characters split across tokens when it
    streams, which Corral passes on as it is.)"""
    with OpenAI(base_url=llama_server, api_key="unused", max_retries=0, timeout=60) as direct:
        expected = _chat(direct, ALIAS)
    assert expected[0]
    assert _chat(client, "via-llama-server") == expected


def test_text_completion_and_length_finish(client: OpenAI) -> None:
    out = client.completions.create(model="via-llama-server", prompt="def main(", max_tokens=5, temperature=0,
                                    extra_body={"ignore_eos": True})
    assert out.choices[0].finish_reason == "length"
    assert out.usage is not None and out.usage.completion_tokens == 5
