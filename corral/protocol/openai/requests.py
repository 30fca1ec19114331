"""Request bodies of the OpenAI API, as Corral accepts them.

Strict types (``"5"`` is not an integer) so wrong-typed fields get a 400 that names
them; unknown fields are ignored, as OpenAI-compatible servers commonly do, so clients
that send newer parameters keep working. Fields Corral cannot honour are declared so
engines can refuse them explicitly rather than silently ignore them.

Every number is bounded and finite, and every free client string that is not text for
the model (ids, names, ``user``, stop strings) has a length bound, so what passes here
fits a signed 64-bit column, a JSON encoder and a log line: a request is refused at the
wire, naming the field, rather than failing later in an engine or a records store.
Text for the model (prompts, message contents) is bounded by the body size limit and
then by the engine's context.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationInfo, field_validator, model_validator

from corral.protocol.common import INT64_MAX, INT64_MIN, MAX_ID_CHARS, MAX_STOP_CHARS, MAX_TOKENS, Id, TokenCount, check_stops
from corral.protocol.common import encodable as _encodable

# allow_inf_nan: JSON has no NaN, but the parser takes ``NaN``/``Infinity`` and 1e400
_CONFIG = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)

MAX_STOP = 4  # stop sequences, as OpenAI
MAX_N = 128  # choices per request (n, best_of), as OpenAI
MAX_LOGIT_BIAS = 1024  # entries
MAX_TOKEN_ID = 2**31 - 1
MAX_DIMENSIONS = 65_536
MAX_DOCUMENTS = 4096
MAX_PROMPTS = 2048  # prompts of one completion request, as embedding inputs
MAX_REPETITION_PENALTY = 100.0  # 2 is already strong; bounded so that it is a finite number
MAX_TOP_N = 1_000_000  # may exceed the documents given: the ranking is cut to top_n

Int64 = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]
Choices = Annotated[int, Field(ge=1, le=MAX_N)]
Penalty = Annotated[float, Field(ge=-2, le=2)]


class TextPart(BaseModel):
    model_config = _CONFIG
    type: Literal["text"]
    text: StrictStr


# Tool and structured-output fields are validated for shape, then passed to engines as
# the client wrote them (``model_dump(exclude_unset=True)``), vendor extras included.
_PASS = ConfigDict(strict=True, extra="allow", allow_inf_nan=False)


class _Passthrough(BaseModel):
    """A model passed on as written: its extras are checked as free JSON."""

    model_config = _PASS

    @model_validator(mode="after")
    def _extras_encodable(self) -> _Passthrough:
        _encodable(self.model_extra or {})
        return self


class ContentPart(_Passthrough):
    """Any non-text part (image_url, input_audio, file): accepted by the schema, then
    refused by engines that cannot see it."""

    type: Id

    @field_validator("type")
    @classmethod
    def _not_text(cls, value: str) -> str:
        if value == "text":  # a malformed text part must fail, not pass as "some other part"
            raise ValueError("a text part needs a string 'text'")
        return value


class FunctionCallIn(BaseModel):
    model_config = _CONFIG
    name: Id
    arguments: StrictStr  # JSON text


class ToolCallIn(BaseModel):
    model_config = _CONFIG
    id: Id
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ChatMessageIn(BaseModel):
    model_config = _CONFIG
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: StrictStr | list[TextPart | ContentPart] | None = None
    name: Id | None = None
    tool_calls: Annotated[list[ToolCallIn], Field(max_length=MAX_N)] | None = None
    tool_call_id: Id | None = None

    @model_validator(mode="after")
    def _tool_turn(self) -> ChatMessageIn:
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a message with role 'tool' needs the tool_call_id of the call it answers")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        return self


class FunctionDef(_Passthrough):
    name: Annotated[StrictStr, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
    description: StrictStr | None = None
    parameters: dict[str, Any] | None = None  # a JSON Schema object
    strict: bool | None = None

    _check_parameters = field_validator("parameters")(_encodable)


class ToolIn(_Passthrough):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(BaseModel):
    model_config = _CONFIG
    name: Id


class NamedToolChoice(_Passthrough):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(_Passthrough):
    name: Annotated[StrictStr, Field(min_length=1, max_length=64)]
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    description: StrictStr | None = None
    strict: bool | None = None

    _check_schema = field_validator("schema_")(_encodable)


class ResponseFormat(_Passthrough):
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


def _stop(value: str | list[str] | None) -> str | list[str] | None:
    check_stops([value] if isinstance(value, str) else value or [], MAX_STOP)
    return value


def _logit_bias(value: dict[str, float] | None) -> dict[str, float] | None:
    if value is None:
        return None
    if len(value) > MAX_LOGIT_BIAS:
        raise ValueError(f"at most {MAX_LOGIT_BIAS} entries, not {len(value)}")
    for key, bias in value.items():
        # keys are token ids: decimal digits only (int() would take " 1", "1_0", "+1")
        if not (key.isascii() and key.isdigit() and len(key) <= 10 and int(key) <= MAX_TOKEN_ID):
            raise ValueError(f"keys are token ids (0 to {MAX_TOKEN_ID} in decimal), not {key[:40]!r}")
        if not -100 <= bias <= 100:
            raise ValueError(f"biases are between -100 and 100, not {bias} (token {key})")
    return value


class SamplingFields(BaseModel):
    """Fields shared by chat and text completions."""

    model_config = _CONFIG
    model: Id
    max_tokens: TokenCount | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    n: Choices = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    # checked by validators (so a 400 names the field, not a union branch); described here
    # for the JSON schema of /openapi.json
    stop: StrictStr | list[StrictStr] | None = Field(
        None, description=f"at most {MAX_STOP} non-empty strings of up to {MAX_STOP_CHARS} characters"
    )
    seed: Int64 | None = None
    presence_penalty: Penalty = 0.0
    frequency_penalty: Penalty = 0.0
    user: Id | None = None
    logit_bias: dict[str, float] | None = Field(
        None, description=f"at most {MAX_LOGIT_BIAS} token ids (decimal, 0 to {MAX_TOKEN_ID}) to biases in -100..100"
    )
    # Extensions shared with vLLM: keep generating past end-of-sequence (benchmarks);
    # top-k sampling (0 or vLLM's older -1: off) and CTRL's repetition penalty (1: off)
    ignore_eos: bool = False
    top_k: Annotated[int, Field(ge=-1, le=MAX_TOKEN_ID)] = 0
    repetition_penalty: Annotated[float, Field(gt=0, le=MAX_REPETITION_PENALTY)] = 1.0

    _check_stop = field_validator("stop")(_stop)
    _check_logit_bias = field_validator("logit_bias")(_logit_bias)


class ChatCompletionRequest(SamplingFields):
    messages: Annotated[list[ChatMessageIn], Field(min_length=1)]
    max_completion_tokens: TokenCount | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    tools: Annotated[list[ToolIn], Field(max_length=128)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None

    @field_validator("tool_choice")
    @classmethod
    def _choice_names_a_tool(
        cls, value: str | NamedToolChoice | None, info: ValidationInfo
    ) -> str | NamedToolChoice | None:
        tools: list[ToolIn] = info.data.get("tools") or []  # declared before: validated first
        if isinstance(value, NamedToolChoice):
            if value.function.name not in {t.function.name for t in tools}:
                name = value.function.name
                raise ValueError(f"tool_choice names the function {name!r}, which tools does not declare")
        elif value == "required" and not tools:
            raise ValueError("tool_choice 'required' needs tools")
        return value


class CompletionRequest(SamplingFields):
    prompt: StrictStr | Annotated[list[StrictStr], Field(min_length=1, max_length=MAX_PROMPTS)]
    echo: bool = False
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    suffix: StrictStr | None = None
    best_of: Choices | None = None

    @field_validator("best_of")
    @classmethod
    def _at_least_n(cls, value: int | None, info: ValidationInfo) -> int | None:
        n = info.data.get("n", 1)
        if value is not None and value < n:
            raise ValueError(f"best_of ({value}) must be at least n ({n})")
        return value


class RerankDocument(BaseModel):
    model_config = _CONFIG
    text: StrictStr


class RerankRequestIn(BaseModel):
    """The Jina / Cohere rerank request: documents as strings or ``{"text": ...}``."""

    model_config = _CONFIG
    model: Id
    query: Annotated[StrictStr, Field(min_length=1)]
    documents: Annotated[list[StrictStr | RerankDocument], Field(min_length=1, max_length=MAX_DOCUMENTS)]
    top_n: Annotated[int, Field(ge=1, le=MAX_TOP_N)] | None = None
    return_documents: bool = False


class EmbeddingsRequest(BaseModel):
    model_config = _CONFIG
    model: Id
    input: StrictStr | Annotated[list[StrictStr], Field(min_length=1, max_length=MAX_PROMPTS)]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(ge=1, le=MAX_DIMENSIONS)] | None = None
    user: Id | None = None
