"""The Anthropic Messages front-end through the official ``anthropic`` SDK and LangChain's
``ChatAnthropic``, unchanged, against the shared ``corral start`` (real SmolLM2 on
llama.cpp, the random-weight ``demo-chat`` on transformers).

The SDK 2.x has no ``temperature`` keyword; the API still takes it, so greedy requests
send it in ``extra_body``, as SDK users do.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from tests.integration.cluster.recorded import record
from tests.integration.conftest import API_KEY, DEMO_CHAT, REAL_CHAT
from tests.integration.servers import Server

pytestmark = pytest.mark.integration

GREEDY = {"temperature": 0}
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
SYSTEM = "Answer in one word."


@pytest.fixture(scope="module")
def claude(demo_server: Server) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=demo_server.url, api_key=API_KEY, max_retries=0, timeout=60) as c:
        yield c


def test_create_answers_with_a_message(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(model=REAL_CHAT, max_tokens=30, system=SYSTEM, messages=QUESTION,
                                     extra_body=GREEDY)  # type: ignore[arg-type]
    assert message.type == "message" and message.role == "assistant" and message.model == REAL_CHAT
    assert message.id.startswith("msg_")
    [block] = message.content
    assert block.type == "text" and "Paris" in block.text
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert message.usage.input_tokens > 10 and 0 < message.usage.output_tokens <= 30


def test_stream_equals_the_whole_answer(claude: anthropic.Anthropic) -> None:
    kwargs: dict[str, Any] = dict(model=REAL_CHAT, max_tokens=40, messages=[{"role": "user", "content": "Write a haiku about the sea."}],
                                  extra_body=GREEDY)
    whole = claude.messages.create(**kwargs)
    with claude.messages.stream(**kwargs) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == whole.content[0].text  # type: ignore[union-attr]
    assert streamed and final.content[0].text == streamed  # type: ignore[union-attr]
    assert (final.stop_reason, final.usage.input_tokens, final.usage.output_tokens) == (
        whole.stop_reason, whole.usage.input_tokens, whole.usage.output_tokens)


def test_stream_has_anthropics_event_sequence(demo_server: Server) -> None:
    body = {"model": REAL_CHAT, "max_tokens": 5, "stream": True, "messages": QUESTION, **GREEDY}
    headers = {"x-api-key": API_KEY, "anthropic-version": "2023-06-01"}
    with httpx.stream("POST", f"{demo_server.url}/v1/messages", json=body, headers=headers, timeout=60) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        raw = resp.read().decode()
    events = [block.split("\n") for block in raw.strip().split("\n\n")]
    names = [lines[0].removeprefix("event: ") for lines in events]
    datas = [json.loads(lines[1].removeprefix("data: ")) for lines in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert set(names[3:-3]) == {"content_block_delta"} and len(names) > 6
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert all(d["type"] == n for n, d in zip(names, datas))
    assert datas[1]["content_block"] == {"type": "text", "text": ""}
    assert all(d["delta"]["type"] == "text_delta" and d["index"] == 0 for d in datas[3:-3])
    end = datas[-2]
    assert end["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}
    assert end["usage"]["output_tokens"] == 5 and end["usage"]["input_tokens"] > 0


def test_stop_reasons(claude: anthropic.Anthropic) -> None:
    stopped = claude.messages.create(model=REAL_CHAT, max_tokens=30, system=SYSTEM, messages=QUESTION,
                                     stop_sequences=["Paris"], extra_body=GREEDY)  # type: ignore[arg-type]
    assert (stopped.stop_reason, stopped.stop_sequence) == ("stop_sequence", "Paris")
    assert "Paris" not in stopped.content[0].text  # type: ignore[union-attr]
    with claude.messages.stream(model=REAL_CHAT, max_tokens=30, system=SYSTEM, messages=QUESTION,  # type: ignore[arg-type]
                                stop_sequences=["Paris"], extra_body=GREEDY) as stream:
        final = stream.get_final_message()
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", "Paris")
    short = claude.messages.create(model=REAL_CHAT, max_tokens=2, messages=QUESTION, extra_body=GREEDY)  # type: ignore[arg-type]
    assert short.stop_reason == "max_tokens" and short.usage.output_tokens == 2


def test_multi_turn_with_system_blocks_and_sampling(claude: anthropic.Anthropic) -> None:
    turns = [*QUESTION, {"role": "assistant", "content": [{"type": "text", "text": "Paris."}]},
             {"role": "user", "content": [{"type": "text", "text": "And the capital "}, {"type": "text", "text": "of Italy?"}]}]
    message = claude.messages.create(model=REAL_CHAT, max_tokens=20, messages=turns,  # type: ignore[arg-type]
                                     system=[{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}],
                                     metadata={"user_id": "user-7"}, extra_body={"temperature": 0, "top_k": 1})
    assert "Rome" in message.content[0].text  # type: ignore[union-attr]
    counted = claude.messages.count_tokens(model=REAL_CHAT, messages=turns, system=SYSTEM)  # type: ignore[arg-type]
    assert counted.input_tokens == message.usage.input_tokens


def test_count_tokens_is_the_prompt_generate_sees(claude: anthropic.Anthropic) -> None:
    counted = claude.messages.count_tokens(model=REAL_CHAT, system=SYSTEM, messages=QUESTION)  # type: ignore[arg-type]
    message = claude.messages.create(model=REAL_CHAT, max_tokens=1, system=SYSTEM, messages=QUESTION)  # type: ignore[arg-type]
    assert counted.input_tokens == message.usage.input_tokens > 10
    demo = claude.messages.count_tokens(model=DEMO_CHAT, messages=QUESTION)  # type: ignore[arg-type]
    assert demo.input_tokens == claude.messages.create(model=DEMO_CHAT, max_tokens=1, messages=QUESTION).usage.input_tokens  # type: ignore[arg-type]


def test_errors_raise_the_sdks_typed_exceptions(claude: anthropic.Anthropic, demo_server: Server) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        claude.messages.create(model="no-such-model", max_tokens=5, messages=QUESTION)  # type: ignore[arg-type]
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    assert "no-such-model" in missing.value.message
    with pytest.raises(anthropic.BadRequestError) as bad:
        claude.messages.create(model=REAL_CHAT, max_tokens=5, messages=QUESTION, extra_body={"temperature": 1.5})  # type: ignore[arg-type]
    assert bad.value.body["error"]["type"] == "invalid_request_error" and "temperature" in bad.value.message  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError) as image:
        claude.messages.create(model=REAL_CHAT, max_tokens=5, messages=[{"role": "user", "content": [  # type: ignore[list-item]
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]}])
    assert "messages[0].content[0]" in image.value.message and "'image'" in image.value.message
    # llama.cpp does not honour tools: the router refuses them, in Anthropic's format
    with pytest.raises(anthropic.BadRequestError) as tools:
        claude.messages.create(model=REAL_CHAT, max_tokens=5, messages=QUESTION,  # type: ignore[arg-type]
                               tools=[{"name": "get_weather", "input_schema": {"type": "object"}}])
    assert "tools" in tools.value.message and "llamacpp" in tools.value.message
    with pytest.raises(anthropic.BadRequestError) as required:  # max_tokens is required, as Anthropic has it
        claude.post("/v1/messages", body={"model": REAL_CHAT, "messages": QUESTION}, cast_to=httpx.Response)
    assert "max_tokens" in required.value.message
    with anthropic.Anthropic(base_url=demo_server.url, api_key="wrong-key", max_retries=0) as stranger:
        with pytest.raises(anthropic.AuthenticationError) as refused:
            stranger.messages.create(model=REAL_CHAT, max_tokens=5, messages=QUESTION)  # type: ignore[arg-type]
    assert refused.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    with anthropic.Anthropic(base_url=demo_server.url, api_key=None, auth_token=API_KEY, max_retries=0) as bearer:
        assert bearer.messages.count_tokens(model=REAL_CHAT, messages=QUESTION).input_tokens > 0  # type: ignore[arg-type]
    no_route = httpx.post(f"{demo_server.url}/v1/messages/batches", headers={"x-api-key": API_KEY}, json={})
    assert no_route.status_code == 404 and no_route.json()["error"]["type"] == "not_found_error"


def test_the_record_says_protocol_and_route(claude: anthropic.Anthropic, corral_home: Path) -> None:
    raw = claude.messages.with_raw_response.create(model=DEMO_CHAT, max_tokens=3, messages=QUESTION)  # type: ignore[arg-type]
    request_id = raw.headers["x-request-id"]
    row = record(corral_home / "records.db", request_id)
    assert (row["protocol"], row["route"], row["model"], row["outcome"]) == ("anthropic", "messages", DEMO_CHAT, "ok")
    assert row["completion_tokens"] == raw.parse().usage.output_tokens
    counted = claude.messages.with_raw_response.count_tokens(model=DEMO_CHAT, messages=QUESTION)  # type: ignore[arg-type]
    row = record(corral_home / "records.db", counted.headers["x-request-id"])
    assert (row["protocol"], row["route"], row["prompt_tokens"]) == ("anthropic", "count_tokens", counted.parse().input_tokens)


def test_langchain_chat_anthropic_invoke_and_stream(demo_server: Server) -> None:
    from langchain_anthropic import ChatAnthropic

    chat = ChatAnthropic(model=REAL_CHAT, base_url=demo_server.url, api_key=API_KEY, temperature=0,  # type: ignore[call-arg]
                         max_tokens=30, max_retries=0)
    prompt = [("system", SYSTEM), ("human", "What is the capital of France?")]
    answer = chat.invoke(prompt)
    assert "Paris" in answer.text
    assert answer.usage_metadata and answer.usage_metadata["output_tokens"] > 0
    streamed = "".join(chunk.text for chunk in chat.stream(prompt))
    assert streamed == answer.text
