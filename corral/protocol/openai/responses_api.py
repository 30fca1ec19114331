"""The OpenAI Responses API (``POST /v1/responses``) on the wire: the request body as
Corral accepts it, and builders of the response object, its output items and its
stream events.

The request is strict about what it reads (``"5"`` is not a number; bounded ids,
counts and numbers) and, like the chat models, ignores unknown fields. Parameters Corral
cannot honour are declared, so the front-end can refuse them naming the field instead of
silently ignoring them (built-in tools, ``background``, ``reasoning``...).

The builders return plain dicts encoded once with orjson (as ``responses.py``): the item
shapes follow OpenAI's reference exactly, since the SDK's ``output_text`` and its stream
accumulator read them by type and position.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidatorFunctionWrapHandler, field_validator, model_validator

from corral.protocol.openai.requests import (
    MAX_ID_CHARS,
    MAX_TOKENS,
    FunctionDef,
    Id,
    JsonSchemaFormat,
    _encodable,
    _Passthrough,
)

_CONFIG = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)

MAX_ITEMS = 4096  # input items of one request
MAX_TOOLS = 128
MAX_METADATA = 16  # keys, as OpenAI
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512


TEXT_PARTS = ("input_text", "output_text", "text")


class Part(_Passthrough):
    """A content part. Text parts (``input_text``, ``output_text``) need ``text``; any
    other type (input_image, input_file, refusal...) is parsed, then refused by the
    front-end naming its place. One model rather than a union, so that an error names
    the field (``content[0].text``), not a union branch."""

    type: Id
    text: StrictStr | None = None

    @model_validator(mode="after")
    def _text_given(self) -> Part:
        if self.type in TEXT_PARTS and self.text is None:
            raise ValueError(f"a part of type {self.type!r} needs a string 'text'")
        return self


Content = StrictStr | Annotated[list[Part], Field(max_length=MAX_ITEMS)]


class MessageItem(BaseModel):
    """A message: ``{"role", "content"}`` (``type`` "message" optional), as the SDK's
    easy input message and as a previous response's output message sent back."""

    model_config = _CONFIG
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: Content
    id: Id | None = None
    status: StrictStr | None = None


class FunctionCallItem(BaseModel):
    """A call the model made (a previous response's output item, sent back)."""

    model_config = _CONFIG
    type: Literal["function_call"]
    call_id: Id
    name: Id
    arguments: StrictStr
    id: Id | None = None
    status: StrictStr | None = None


class FunctionCallOutputItem(BaseModel):
    """The result of a call, for the model's next turn."""

    model_config = _CONFIG
    type: Literal["function_call_output"]
    call_id: Id
    output: Content
    id: Id | None = None
    status: StrictStr | None = None


class OtherItem(_Passthrough):
    """Any other item type (item_reference, reasoning, web_search_call...): refused by the
    front-end naming its place."""

    type: Id


InputItem = MessageItem | FunctionCallItem | FunctionCallOutputItem | OtherItem
# input items are told apart by ``type`` (a message may leave it out); each is validated
# by its own model, so an error names the item's field rather than a union branch
ITEM_MODELS: dict[str, type[BaseModel]] = {
    "message": MessageItem, "function_call": FunctionCallItem, "function_call_output": FunctionCallOutputItem,
}


def item_model(raw: dict[str, Any]) -> type[BaseModel]:
    kind = raw.get("type", "message")
    return ITEM_MODELS.get(kind, OtherItem) if isinstance(kind, str) else OtherItem


class FunctionTool(FunctionDef):
    """Responses' flat function tool: ``{"type": "function", "name", "description",
    "parameters", "strict"}`` (chat nests the same under ``function``)."""

    type: Literal["function"]


class OtherTool(_Passthrough):
    """A built-in tool (web_search, file_search, code_interpreter, mcp...): refused."""

    type: Id

    @field_validator("type")
    @classmethod
    def _not_function(cls, value: str) -> str:
        if value == "function":
            raise ValueError("a function tool needs a 'name' (letters, digits, _ . -, at most 64)")
        return value


class NamedFunctionChoice(BaseModel):
    model_config = _CONFIG
    type: Literal["function"]
    name: Id


class OtherToolChoice(_Passthrough):
    type: Id


class TextFormat(_Passthrough):
    """``text.format``: text, json_object, or json_schema with its fields flat."""

    type: Literal["text", "json_object", "json_schema"]
    name: Annotated[StrictStr, Field(min_length=1, max_length=64)] | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    description: StrictStr | None = None
    strict: bool | None = None

    _check_schema = field_validator("schema_")(_encodable)

    @model_validator(mode="after")
    def _schema_given(self) -> TextFormat:
        if self.type == "json_schema" and (self.name is None or self.schema_ is None):
            raise ValueError("type 'json_schema' needs a 'name' and a 'schema'")
        return self

    def internal(self) -> dict[str, Any] | None:
        """As the chat API's ``response_format`` (engines' one shape); None for text."""
        if self.type == "text":
            return None
        if self.type == "json_object":
            return {"type": "json_object"}
        schema = JsonSchemaFormat.model_validate(
            {"name": self.name, "schema": self.schema_, "description": self.description, "strict": self.strict},
            strict=False,
        )
        return {"type": "json_schema", "json_schema": schema.model_dump(exclude_none=True, by_alias=True)}


class TextConfig(BaseModel):
    model_config = _CONFIG
    format: TextFormat | None = None
    verbosity: StrictStr | None = None


class Reasoning(BaseModel):
    model_config = _CONFIG
    effort: StrictStr | None = None
    summary: StrictStr | None = None
    generate_summary: StrictStr | None = None


def _metadata(value: dict[str, str] | None) -> dict[str, str] | None:
    if value is None:
        return None
    if len(value) > MAX_METADATA:
        raise ValueError(f"at most {MAX_METADATA} keys, not {len(value)}")
    for key, text in value.items():
        if len(key) > MAX_METADATA_KEY or len(text) > MAX_METADATA_VALUE:
            raise ValueError(f"keys have at most {MAX_METADATA_KEY} characters and values {MAX_METADATA_VALUE}")
    return value


class ResponsesRequest(BaseModel):
    model_config = _CONFIG
    model: Id
    # items as JSON objects, each validated by its type's model (``item_model``) by the front-end
    input: StrictStr | Annotated[list[dict[str, Any]], Field(min_length=1, max_length=MAX_ITEMS)]
    instructions: StrictStr | None = None
    max_output_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    tools: Annotated[list[FunctionTool | OtherTool], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedFunctionChoice | OtherToolChoice | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    stream: bool = False
    store: bool = True
    previous_response_id: Id | None = None
    metadata: dict[str, StrictStr] | None = None
    user: Id | None = None
    safety_identifier: Id | None = None
    prompt_cache_key: Id | None = None
    service_tier: StrictStr | None = None
    # declared to be refused by name (the front-end), not silently ignored
    background: bool | None = None
    reasoning: Reasoning | None = None
    include: Annotated[list[StrictStr], Field(max_length=64)] | None = None
    truncation: StrictStr | None = None
    max_tool_calls: Annotated[int, Field(ge=0, le=MAX_TOKENS)] | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    conversation: StrictStr | dict[str, Any] | None = None
    prompt: dict[str, Any] | None = None

    _check_metadata = field_validator("metadata")(_metadata)

    @field_validator("input", mode="wrap")
    @classmethod
    def _input_shape(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        # said here rather than by the str | list union, whose first branch's error
        # ("should be a valid string") would hide what is wrong with a list
        if isinstance(value, list):
            if not value or len(value) > MAX_ITEMS:
                raise ValueError(f"a list input holds 1 to {MAX_ITEMS} items, not {len(value)}")
            for i, item in enumerate(value):
                if not isinstance(item, dict):
                    raise ValueError(f"input[{i}] must be an item object, not {type(item).__name__}")
        elif not isinstance(value, str):
            raise ValueError("input must be a string or a list of input items")
        return handler(value)


# ---------------------------------------------------------------------------- answers


def usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


def output_text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(id_: str, text: str | None, status: str) -> dict[str, Any]:
    """An assistant message; ``text`` None: no content part yet (a stream's first event)."""
    content = [] if text is None else [output_text_part(text)]
    return {"id": id_, "type": "message", "status": status, "role": "assistant", "content": content}


def function_call_item(id_: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {"id": id_, "type": "function_call", "status": status, "arguments": arguments, "call_id": call_id,
            "name": name}


def response_object(
    id_: str, created_at: int, model: str, status: str, output: list[dict[str, Any]],
    usage_body: dict[str, Any] | None, echo: dict[str, Any], error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The response object: ``status`` in_progress | completed | incomplete | failed;
    ``echo`` the request's parameters as every response repeats them."""
    incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
    return {
        "id": id_, "object": "response", "created_at": created_at, "status": status, "error": error,
        "incomplete_details": incomplete, "model": model, "output": output, "usage": usage_body,
        **echo,
    }


def error_object(code: str, message: str) -> dict[str, Any]:
    return {"code": code, "message": message}


def deleted(id_: str) -> dict[str, Any]:
    return {"id": id_, "object": "response.deleted", "deleted": True}


def event_frame(kind: str, sequence: int, fields: dict[str, Any]) -> bytes:
    """One SSE frame: ``event:`` the type, ``data:`` the event with its ``sequence_number``."""
    payload = orjson.dumps({"type": kind, "sequence_number": sequence, **fields})
    return b"event: " + kind.encode() + b"\ndata: " + payload + b"\n\n"


__all__ = [
    "MAX_ID_CHARS", "FunctionCallItem", "FunctionCallOutputItem", "FunctionTool", "InputItem", "MessageItem",
    "NamedFunctionChoice", "OtherItem", "Part", "OtherTool", "item_model", "OtherToolChoice", "ResponsesRequest",
    "TextFormat", "deleted", "error_object", "response_object", "event_frame", "function_call_item", "message_item", "output_text_part", "usage",
]
