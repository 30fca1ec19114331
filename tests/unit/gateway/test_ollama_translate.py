"""Ollama requests -> internal requests (corral.gateway.ollama.translate): the options
table (mapped, accepted and ignored, refused unless off), ``format``, tool histories
without ids, and /api/generate's templated and raw prompts. The HTTP behaviour is in
tests/integration/test_ollama_api.py."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from corral.core.errors import InvalidRequest
from corral.core.types import SamplingParams
from corral.gateway.ollama import translate
from corral.protocol.ollama.requests import ChatRequest, GenerateRequest, Options


def options(**values: Any) -> SamplingParams:
    return translate.sampling(Options.model_validate(values))


def test_sampling_options_map_to_sampling_params() -> None:
    s = options(temperature=0.3, top_p=0.8, top_k=40, seed=7, num_predict=12, stop=["\n"], repeat_penalty=1.2,
                presence_penalty=0.5, frequency_penalty=0.25)
    assert (s.temperature, s.top_p, s.top_k, s.seed, s.max_tokens, s.stop) == (0.3, 0.8, 40, 7, 12, ("\n",))
    assert (s.repetition_penalty, s.presence_penalty, s.frequency_penalty) == (1.2, 0.5, 0.25)
    assert s.unset == frozenset()


def test_left_out_options_are_corrals_defaults_and_the_models_may_fill_them() -> None:
    s = translate.sampling(None)
    assert (s.temperature, s.top_p, s.top_k, s.repetition_penalty, s.max_tokens) == (1.0, 1.0, 0, 1.0, None)
    assert s.unset == {"temperature", "top_p"}
    assert s.with_defaults((("temperature", 0.2),)).temperature == 0.2
    assert options(num_predict=-1).max_tokens is None and options(num_predict=-2).max_tokens is None


def test_runner_hints_are_accepted_and_ignored() -> None:
    hinted = options(num_ctx=8192, num_thread=4, num_gpu=99, num_batch=512, use_mmap=True, low_vram=False,
                     num_keep=5, mirostat_tau=5.0, mirostat_eta=0.1, mirostat=0, min_p=0.0, tfs_z=1.0,
                     penalize_newline=False)
    assert hinted == translate.sampling(None)


@pytest.mark.parametrize(
    ("values", "param"),
    [({"mirostat": 2}, "options.mirostat"), ({"min_p": 0.05}, "options.min_p"), ({"typical_p": 0.7}, "options.typical_p"),
     ({"tfs_z": 0.9}, "options.tfs_z"), ({"penalize_newline": True}, "options.penalize_newline"),
     ({"repeat_last_n": 64}, "options.repeat_last_n"), ({"num_predict": 0}, "options.num_predict"),
     ({"vocab_only": True}, "options.vocab_only")],
)
def test_options_that_would_change_the_answer_are_refused_by_name(values: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        options(**values)
    assert err.value.param == param and err.value.message.startswith(param) and err.value.status == 400


def test_repeat_last_n_zero_turns_the_penalty_off_and_minus_one_is_the_whole_context() -> None:
    assert options(repeat_penalty=1.3, repeat_last_n=0).repetition_penalty == 1.0
    assert options(repeat_penalty=1.3, repeat_last_n=-1).repetition_penalty == 1.3


@pytest.mark.parametrize("values", [{"made_up": 1}, {"top_k": -1}, {"temperature": "0.5"}, {"stop": [""]},
                                    {"repeat_penalty": 0}, {"num_predict": -3}])
def test_unknown_or_malformed_options_fail_validation(values: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Options.model_validate(values)


def test_format_json_and_schema() -> None:
    assert translate.response_format("json") == {"type": "json_object"}
    assert translate.response_format("") is None and translate.response_format(None) is None
    schema = {"type": "object"}
    assert translate.response_format(schema) == {"type": "json_schema", "json_schema": {"name": "response", "schema": schema, "strict": True}}


def test_tool_turns_get_ids_and_answer_calls_by_name() -> None:
    req = ChatRequest.model_validate({"model": "m", "messages": [
        {"role": "user", "content": "weather and time?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "weather", "arguments": {"city": "Paris"}}},
            {"function": {"name": "time", "arguments": {}}}]},
        {"role": "tool", "content": "12:00", "tool_name": "time"},
        {"role": "tool", "content": "18C"},  # no name: the first unanswered call
    ], "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]})
    gen = translate.chat(req, "m", "r", None, None)
    assistant = gen.messages[1]  # type: ignore[index]
    assert [(c.id, c.name, c.arguments) for c in assistant.tool_calls] == [
        ("call_1_0", "weather", '{"city":"Paris"}'), ("call_1_1", "time", "{}")]
    assert [(m.role, m.tool_call_id) for m in gen.messages[2:]] == [("tool", "call_1_1"), ("tool", "call_1_0")]  # type: ignore[index]
    assert gen.tools[0].name == "weather" and gen.features() == {"tools"}


def test_a_tool_turn_without_a_call_to_answer_is_refused() -> None:
    req = ChatRequest.model_validate({"model": "m", "messages": [{"role": "tool", "content": "x", "tool_name": "f"}]})
    with pytest.raises(InvalidRequest) as err:
        translate.chat(req, "m", "r", None, None)
    assert err.value.param == "messages[0]"


def test_generate_templated_raw_and_refusals() -> None:
    templated = translate.generate(GenerateRequest(model="m", prompt="hi", system="be brief"), "m", "r", None, None)
    assert templated.prompt is None and [(m.role, m.content) for m in templated.messages or ()] == [
        ("system", "be brief"), ("user", "hi")]
    raw = translate.generate(GenerateRequest(model="m", prompt="Once", raw=True), "m", "r", None, None)
    assert raw.prompt == "Once" and raw.messages is None
    for body, param in [({"raw": True, "system": "x"}, "system"), ({"context": [1]}, "context"),
                        ({"template": "{{ .Prompt }}"}, "template"), ({"suffix": "end"}, "suffix"),
                        ({"think": True}, "think"), ({"logprobs": True}, "logprobs")]:
        with pytest.raises(InvalidRequest) as err:
            translate.generate(GenerateRequest.model_validate({"model": "m", "prompt": "x", **body}), "m", "r", None, None)
        assert err.value.param == param


def test_model_or_name_is_required() -> None:
    assert translate.model_name("", "legacy") == "legacy" and translate.model_name("m", "legacy") == "m"
    with pytest.raises(InvalidRequest) as err:
        translate.model_name("", None)
    assert err.value.param == "model"
