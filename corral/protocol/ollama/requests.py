"""Request bodies of Ollama's API, as Corral accepts them.

Typed strictly where Ollama's own server is (a string is not a number), so a wrong
field is a 400 whose message names it. Unknown top-level fields are ignored, as Ollama
does (clients of newer versions keep working); unknown keys inside ``options`` are
refused, since an option that does nothing would silently change the answer. Fields
this server cannot honour are declared, so the front-end refuses them by name rather
than ignoring them.

Every number is bounded and finite, and names and stop strings have length bounds, so
what passes here fits a records column, a JSON encoder and a log line. Text for the
model (prompts, message contents) is bounded by the body size limit and then by the
engine's context.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator, model_validator

# allow_inf_nan: JSON has no NaN, but the parser takes ``NaN``/``Infinity`` and 1e400
_CONFIG = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)
_CLOSED = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_NAME_CHARS = 256  # model names, function names
MAX_STOP = 16
MAX_STOP_CHARS = 1024
MAX_TOKENS = 1 << 20  # above any context window served today; engines check their own
MAX_TOP_K = 2**31 - 1
MAX_INPUTS = 2048  # texts of one /api/embed call
MAX_DIMENSIONS = 65_536
MAX_TOOL_CALLS = 128

Name = Annotated[StrictStr, Field(max_length=MAX_NAME_CHARS)]
Int64 = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]
Count = Annotated[int, Field(ge=-(2**31), le=2**31 - 1)]  # Go int32 options (num_ctx, num_thread...)
Unit = Annotated[float, Field(ge=0, le=1)]
Penalty = Annotated[float, Field(ge=-2, le=2)]
JSONObject = dict[str, Any]
# keep_alive: seconds, or a Go duration ("5m", "-1"): accepted, see the front-end
KeepAlive = float | Annotated[StrictStr, Field(max_length=64)]


class Options(BaseModel):
    """``options``: what Ollama's ``api.Options`` (runner and sampling) holds."""

    model_config = _CLOSED
    # sampling
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=0, le=MAX_TOP_K)] | None = None
    min_p: Unit | None = None
    typical_p: Annotated[float, Field(gt=0, le=1)] | None = None
    tfs_z: Annotated[float, Field(gt=0, le=1e6)] | None = None
    seed: Int64 | None = None
    num_predict: Annotated[int, Field(ge=-2, le=MAX_TOKENS)] | None = None
    stop: Annotated[list[Annotated[StrictStr, Field(max_length=MAX_STOP_CHARS)]], Field(max_length=MAX_STOP)] | None = None
    repeat_penalty: Annotated[float, Field(gt=0, le=100)] | None = None
    repeat_last_n: Annotated[int, Field(ge=-1, le=2**31 - 1)] | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    penalize_newline: bool | None = None
    mirostat: Annotated[int, Field(ge=0, le=2)] | None = None
    mirostat_tau: Annotated[float, Field(ge=0, le=1e6)] | None = None
    mirostat_eta: Annotated[float, Field(ge=0, le=1e6)] | None = None
    num_keep: Count | None = None
    # the runner: context size, memory and threads
    num_ctx: Count | None = None
    num_batch: Count | None = None
    num_gpu: Count | None = None
    main_gpu: Count | None = None
    num_thread: Count | None = None
    low_vram: bool | None = None
    numa: bool | None = None
    f16_kv: bool | None = None
    use_mmap: bool | None = None
    use_mlock: bool | None = None
    vocab_only: bool | None = None
    logits_all: bool | None = None
    embedding_only: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _known(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(k for k in data if k not in cls.model_fields)
            if unknown:
                raise ValueError(f"unknown option {unknown[0][:64]!r}")
        return data

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and any(not s for s in value):
            raise ValueError("stop strings must not be empty")
        return value


class FunctionCallIn(BaseModel):
    model_config = _CONFIG
    name: Name
    arguments: JSONObject = Field(default_factory=dict)  # an object, as Ollama sends them


class ToolCallIn(BaseModel):
    model_config = _CONFIG
    function: FunctionCallIn


class MessageIn(BaseModel):
    model_config = _CONFIG
    role: Literal["system", "user", "assistant", "tool"]
    content: StrictStr = ""
    images: list[StrictStr] | None = None  # base64 images: refused (no vision engine)
    thinking: StrictStr | None = None  # an earlier answer's reasoning: not sent back to the model
    tool_calls: Annotated[list[ToolCallIn], Field(max_length=MAX_TOOL_CALLS)] | None = None
    tool_name: Name | None = None  # a tool turn: the function whose result it carries


class FunctionIn(BaseModel):
    model_config = _CONFIG
    name: Name
    description: StrictStr | None = None
    parameters: JSONObject | None = None


class ToolIn(BaseModel):
    model_config = _CONFIG
    type: Literal["function"] = "function"
    function: FunctionIn


class _Generating(BaseModel):
    """What /api/chat and /api/generate share."""

    model_config = _CONFIG
    model: Name = ""
    name: Name | None = None  # the old spelling of ``model``
    stream: bool = True  # NDJSON lines unless false
    format: Literal["", "json"] | JSONObject | None = None  # "json", or a JSON schema
    options: Options | None = None
    keep_alive: KeepAlive | None = None
    think: bool | Literal["low", "medium", "high"] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None


class ChatRequest(_Generating):
    messages: list[MessageIn] = Field(default_factory=list)  # none: load the model (done_reason "load")
    tools: Annotated[list[ToolIn], Field(max_length=MAX_TOOL_CALLS)] | None = None


class GenerateRequest(_Generating):
    prompt: StrictStr = ""  # empty: load the model (done_reason "load")
    suffix: StrictStr | None = None
    system: StrictStr | None = None
    template: StrictStr | None = None
    context: Annotated[list[Int64], Field(max_length=MAX_TOKENS)] | None = None
    raw: bool = False
    images: list[StrictStr] | None = None


class EmbedRequest(BaseModel):
    model_config = _CONFIG
    model: Name = ""
    name: Name | None = None
    input: StrictStr | Annotated[list[StrictStr], Field(min_length=1, max_length=MAX_INPUTS)]
    truncate: bool = True
    dimensions: Annotated[int, Field(ge=1, le=MAX_DIMENSIONS)] | None = None
    options: Options | None = None
    keep_alive: KeepAlive | None = None


class EmbeddingsRequest(BaseModel):
    """The legacy /api/embeddings: one prompt, one vector."""

    model_config = _CONFIG
    model: Name = ""
    name: Name | None = None
    prompt: StrictStr = ""
    options: Options | None = None
    keep_alive: KeepAlive | None = None


class ShowRequest(BaseModel):
    model_config = _CONFIG
    model: Name = ""
    name: Name | None = None
    verbose: bool = False
