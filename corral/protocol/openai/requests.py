"""Request bodies of the OpenAI API, as Corral accepts them.

Strict types (``"5"`` is not an integer) so wrong-typed fields get a 400 that names
them; unknown fields are ignored, as OpenAI-compatible servers commonly do, so clients
that send newer parameters keep working. Fields Corral cannot honour are declared so
engines can refuse them explicitly rather than silently ignore them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator, model_validator

_CONFIG = ConfigDict(strict=True, extra="ignore")


class TextPart(BaseModel):
    model_config = _CONFIG
    type: Literal["text"]
    text: StrictStr


class ContentPart(BaseModel):
    """Any non-text part (image_url, input_audio, file): accepted by the schema, then
    refused by engines that cannot see it."""

    model_config = ConfigDict(strict=True, extra="allow")
    type: StrictStr

    @field_validator("type")
    @classmethod
    def _not_text(cls, value: str) -> str:
        if value == "text":  # a malformed text part must fail, not pass as "some other part"
            raise ValueError("a text part needs a string 'text'")
        return value


# Tool and structured-output fields are validated for shape, then passed to engines as
# the client wrote them (``model_dump(exclude_unset=True)``), vendor extras included.
_PASS = ConfigDict(strict=True, extra="allow")


class FunctionCallIn(BaseModel):
    model_config = _CONFIG
    name: StrictStr
    arguments: StrictStr  # JSON text


class ToolCallIn(BaseModel):
    model_config = _CONFIG
    id: StrictStr
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ChatMessageIn(BaseModel):
    model_config = _CONFIG
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: StrictStr | list[TextPart | ContentPart] | None = None
    name: StrictStr | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: StrictStr | None = None

    @model_validator(mode="after")
    def _tool_turn(self) -> ChatMessageIn:
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a message with role 'tool' needs the tool_call_id of the call it answers")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        return self


class FunctionDef(BaseModel):
    model_config = _PASS
    name: Annotated[StrictStr, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
    description: StrictStr | None = None
    parameters: dict[str, Any] | None = None  # a JSON Schema object
    strict: bool | None = None


class ToolIn(BaseModel):
    model_config = _PASS
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(BaseModel):
    model_config = _CONFIG
    name: StrictStr


class NamedToolChoice(BaseModel):
    model_config = _PASS
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(BaseModel):
    model_config = _PASS
    name: Annotated[StrictStr, Field(min_length=1, max_length=64)]
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    description: StrictStr | None = None
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = _PASS
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type 'json_schema' needs a json_schema object with a name and a schema")
        return self


class StreamOptions(BaseModel):
    model_config = _CONFIG
    include_usage: bool = False


PositiveInt = Annotated[int, Field(ge=1)]


class SamplingFields(BaseModel):
    """Fields shared by chat and text completions."""

    model_config = _CONFIG
    model: StrictStr
    max_tokens: PositiveInt | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    n: Annotated[int, Field(ge=1, le=16)] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: StrictStr | Annotated[list[StrictStr], Field(max_length=8)] | None = None
    seed: int | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] = 0.0
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] = 0.0
    user: StrictStr | None = None
    logit_bias: dict[str, float] | None = None
    # Extension shared with vLLM: keep generating past end-of-sequence (benchmarks).
    ignore_eos: bool = False


class ChatCompletionRequest(SamplingFields):
    messages: Annotated[list[ChatMessageIn], Field(min_length=1)]
    max_completion_tokens: PositiveInt | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: Annotated[list[ToolIn], Field(max_length=128)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None

    @model_validator(mode="after")
    def _choice_names_a_tool(self) -> ChatCompletionRequest:
        if isinstance(self.tool_choice, NamedToolChoice):
            names = {t.function.name for t in self.tools or ()}
            if self.tool_choice.function.name not in names:
                raise ValueError(f"tool_choice names the function {self.tool_choice.function.name!r}, which tools does not declare")
        elif self.tool_choice == "required" and not self.tools:
            raise ValueError("tool_choice 'required' needs tools")
        return self


class CompletionRequest(SamplingFields):
    prompt: StrictStr | Annotated[list[StrictStr], Field(min_length=1)]
    echo: bool = False
    logprobs: int | None = None
    suffix: StrictStr | None = None
    best_of: int | None = None


class RerankDocument(BaseModel):
    model_config = _CONFIG
    text: StrictStr


class RerankRequestIn(BaseModel):
    """The Jina / Cohere rerank request: documents as strings or ``{"text": ...}``."""

    model_config = _CONFIG
    model: StrictStr
    query: Annotated[StrictStr, Field(min_length=1)]
    documents: Annotated[list[StrictStr | RerankDocument], Field(min_length=1, max_length=4096)]
    top_n: PositiveInt | None = None
    return_documents: bool = False


class EmbeddingsRequest(BaseModel):
    model_config = _CONFIG
    model: StrictStr
    input: StrictStr | Annotated[list[StrictStr], Field(min_length=1, max_length=2048)]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: PositiveInt | None = None
    user: StrictStr | None = None
