"""Corral errors and request-validation errors as OpenAI wire errors."""

from __future__ import annotations

import orjson
import pytest
from pydantic import ValidationError

from corral.core.errors import (
    CorralError,
    EngineError,
    ErrorKind,
    InvalidRequest,
    ModelNotFound,
    Overloaded,
    Unavailable,
)
from corral.web.errors import error_event, error_response, from_validation
from corral.protocol.openai.requests import ChatCompletionRequest, CompletionRequest, EmbeddingsRequest

MSGS = '"messages":[{"role":"user","content":"hi"}]'


def chat_error(body: bytes | str) -> InvalidRequest:
    if isinstance(body, str):
        body = body.encode()
    with pytest.raises(ValidationError) as info:
        ChatCompletionRequest.model_validate_json(body)
    err = from_validation(info.value)
    assert isinstance(err, InvalidRequest)
    assert err.status == 400
    assert err.kind is ErrorKind.INVALID_REQUEST
    return err


def test_valid_body_is_accepted() -> None:
    req = ChatCompletionRequest.model_validate_json(f'{{"model":"m",{MSGS},"max_tokens":5,"stop":["x"]}}'.encode())
    assert req.max_tokens == 5
    assert req.stop == ["x"]


@pytest.mark.parametrize("body", [b"{", b"", b"not json", b'{"model": "m",}'])
def test_invalid_json(body: bytes) -> None:
    err = chat_error(body)
    assert err.code == "invalid_json"
    assert err.param is None
    assert "not valid JSON" in err.message


@pytest.mark.parametrize("body", [b"[]", b"5", b'"x"', b"null"])
def test_json_that_is_not_an_object(body: bytes) -> None:
    err = chat_error(body)
    assert err.code == "invalid_json"
    assert err.param is None
    assert "JSON object" in err.message


@pytest.mark.parametrize(
    "body, param",
    [
        ('{"model":"m"}', "messages"),
        ('{"model":"m","messages":[]}', "messages"),
        ('{"model":"m","messages":[{"role":"user","content":5}]}', "messages[0].content"),
        ('{"model":"m","messages":[{"role":"user","content":"a"},{"role":"bot","content":"b"}]}', "messages[1].role"),
        (f'{{{MSGS}}}', "model"),
        (f'{{"model":5,{MSGS}}}', "model"),
        (f'{{"model":"m",{MSGS},"max_tokens":"5"}}', "max_tokens"),
        (f'{{"model":"m",{MSGS},"max_tokens":0}}', "max_tokens"),
        (f'{{"model":"m",{MSGS},"stop":7}}', "stop"),
        (f'{{"model":"m",{MSGS},"stop":[7]}}', "stop"),
        (f'{{"model":"m",{MSGS},"temperature":"hot"}}', "temperature"),
        (f'{{"model":"m",{MSGS},"temperature":3}}', "temperature"),
        (f'{{"model":"m",{MSGS},"n":0}}', "n"),
        (f'{{"model":"m",{MSGS},"stream_options":{{"include_usage":"yes"}}}}', "stream_options.include_usage"),
    ],
)
def test_param_names_the_field(body: str, param: str) -> None:
    err = chat_error(body)
    assert err.param == param
    assert err.code == "invalid_value"
    assert err.message.startswith(f"{param}: ")


def test_first_error_wins() -> None:
    err = chat_error(f'{{"model":"m",{MSGS},"max_tokens":"5","stop":7}}')
    assert err.param == "max_tokens"


def test_unknown_fields_are_ignored() -> None:
    ChatCompletionRequest.model_validate_json(f'{{"model":"m",{MSGS},"brand_new_option":1}}'.encode())


def test_other_request_models() -> None:
    with pytest.raises(ValidationError) as info:
        CompletionRequest.model_validate_json(b'{"model":"m","prompt":5}')
    assert from_validation(info.value).param == "prompt"
    with pytest.raises(ValidationError) as info:
        EmbeddingsRequest.model_validate_json(b'{"model":"m","input":"x","encoding_format":"hex"}')
    assert from_validation(info.value).param == "encoding_format"
    with pytest.raises(ValidationError) as info:
        EmbeddingsRequest.model_validate_json(b'{"model":"m"}')
    assert from_validation(info.value).param == "input"


def body_of(response) -> dict:
    return orjson.loads(response.body)


def test_overloaded_response() -> None:
    resp = error_response(Overloaded("too busy", retry_after=2.2))
    assert resp.status_code == 429
    assert resp.headers["retry-after"] == "3"
    assert resp.headers["content-type"] == "application/json"
    assert body_of(resp) == {
        "error": {"message": "too busy", "type": "rate_limit_error", "param": None, "code": "overloaded"}
    }


def test_overloaded_retry_after_is_at_least_one_second() -> None:
    assert error_response(Overloaded("busy", retry_after=0.01)).headers["retry-after"] == "1"
    assert error_response(Overloaded("busy")).headers["retry-after"] == "1"


def test_unavailable_response_has_retry_after() -> None:
    resp = error_response(Unavailable("loading"))
    assert resp.status_code == 503
    assert resp.headers["retry-after"] == "1"
    assert body_of(resp)["error"]["code"] == "model_unavailable"


def test_model_not_found_response() -> None:
    resp = error_response(ModelNotFound("the model 'x' does not exist", param="model"))
    assert resp.status_code == 404
    assert "retry-after" not in resp.headers
    assert body_of(resp) == {
        "error": {
            "message": "the model 'x' does not exist",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
    }


@pytest.mark.parametrize(
    "exc, status, type_, code",
    [
        (InvalidRequest("bad", param="n"), 400, "invalid_request_error", None),
        (InvalidRequest("bad", code="invalid_value"), 400, "invalid_request_error", "invalid_value"),
        (EngineError("boom"), 500, "server_error", "engine_error"),
        (CorralError("?"), 500, "server_error", None),
    ],
)
def test_error_response_shape(exc: CorralError, status: int, type_: str, code: str | None) -> None:
    resp = error_response(exc)
    assert resp.status_code == status
    body = body_of(resp)
    assert set(body) == {"error"}
    assert body["error"] == {"message": exc.message, "type": type_, "param": exc.param, "code": code}


def test_error_event_matches_error_response_body() -> None:
    exc = Overloaded("busy")
    assert error_event(exc) == body_of(error_response(exc))


def test_from_validation_result_renders_as_400() -> None:
    err = chat_error(f'{{"model":"m",{MSGS},"stop":7}}')
    resp = error_response(err)
    assert resp.status_code == 400
    body = body_of(resp)["error"]
    assert body["param"] == "stop"
    assert body["code"] == "invalid_value"
    assert body["type"] == "invalid_request_error"
