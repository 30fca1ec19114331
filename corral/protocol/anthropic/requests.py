"""Request bodies of Anthropic's Messages API (``POST /v1/messages`` and
``POST /v1/messages/count_tokens``), as Corral accepts them.

Written from Anthropic's public API reference. Strict types, so a wrong-typed field is
a 400 naming it; unknown fields are ignored (newer clients keep working), and fields
Corral cannot honour are declared so the front-end refuses them by name rather than
dropping them. Content blocks of kinds Corral does not translate (images, documents,
thinking...) parse as ``OtherBlock`` and are refused by the front-end, naming the block.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationInfo, field_validator, model_validator

from corral.protocol.common import Id, TokenCount, check_stops, encodable

_CONFIG = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)
_PASS = ConfigDict(strict=True, extra="allow", allow_inf_nan=False)

MAX_STOP_SEQUENCES = 16
MAX_TOOLS = 128
MAX_TOP_K = 1 << 20  # above any vocabulary served today


class CacheControl(BaseModel):
    """A prompt-caching hint: accepted, and meaningless here (engines cache prefixes
    by themselves or not at all)."""

    model_config = _PASS
    type: Id


class TextBlock(BaseModel):
    model_config = _CONFIG
    type: Literal["text"]
    text: StrictStr
    cache_control: CacheControl | None = None


class ToolUseBlock(BaseModel):
    """A call the assistant made, in the history sent back."""

    model_config = _CONFIG
    type: Literal["tool_use"]
    id: Annotated[StrictStr, Field(min_length=1, max_length=256)]
    name: Annotated[StrictStr, Field(min_length=1, max_length=256)]
    input: dict[str, Any]
    cache_control: CacheControl | None = None

    _check_input = field_validator("input")(encodable)


class ToolResultBlock(BaseModel):
    """The answer to a ``tool_use``, in a user turn."""

    model_config = _CONFIG
    type: Literal["tool_result"]
    tool_use_id: Annotated[StrictStr, Field(min_length=1, max_length=256)]
    content: StrictStr | list[TextBlock | OtherBlock] | None = None
    is_error: bool | None = None
    cache_control: CacheControl | None = None


class OtherBlock(BaseModel):
    """A block of a kind this server does not translate (image, document, thinking,
    server tool results...): parsed so the front-end can refuse it by name."""

    model_config = _PASS
    type: Id

    @field_validator("type")
    @classmethod
    def _not_known(cls, value: str) -> str:
        if value in ("text", "tool_use", "tool_result"):  # a malformed known block must fail as that block
            raise ValueError(f"a malformed {value!r} block")
        return value


Block = TextBlock | ToolUseBlock | ToolResultBlock | OtherBlock
ToolResultBlock.model_rebuild()


class MessageIn(BaseModel):
    model_config = _CONFIG
    role: Literal["user", "assistant"]
    content: StrictStr | list[Block]


class ToolIn(BaseModel):
    """A client tool (``type`` absent or ``custom``); server tools (``web_search_...``,
    ``bash_...``) have another ``type`` and are refused by the front-end."""

    model_config = _PASS
    type: Id | None = None
    name: Annotated[StrictStr, Field(min_length=1, max_length=128)]
    description: StrictStr | None = None
    input_schema: dict[str, Any] | None = None
    cache_control: CacheControl | None = None

    @model_validator(mode="after")
    def _checked(self) -> ToolIn:
        encodable(self.model_extra or {})
        encodable(self.input_schema)
        if self.type in (None, "custom") and self.input_schema is None:
            raise ValueError("a custom tool needs an input_schema")
        return self


class ToolChoiceIn(BaseModel):
    model_config = _CONFIG
    type: Literal["auto", "any", "tool", "none"]
    name: Id | None = None
    disable_parallel_tool_use: bool | None = None

    @model_validator(mode="after")
    def _named(self) -> ToolChoiceIn:
        if self.type == "tool" and not self.name:
            raise ValueError("tool_choice of type 'tool' needs the name of the tool")
        return self


class Metadata(BaseModel):
    model_config = _CONFIG
    user_id: Id | None = None


class ThinkingIn(BaseModel):
    model_config = _PASS
    type: Id


class CountTokensRequest(BaseModel):
    """What a prompt is made of: the body of ``count_tokens``, and the part of a
    Messages request it counts."""

    model_config = _CONFIG
    model: Id
    messages: Annotated[list[MessageIn], Field(min_length=1)]
    system: StrictStr | list[TextBlock] | None = None
    tools: Annotated[list[ToolIn], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: ToolChoiceIn | None = None
    thinking: ThinkingIn | None = None

    @field_validator("tool_choice")
    @classmethod
    def _choice_names_a_tool(cls, choice: ToolChoiceIn | None, info: ValidationInfo) -> ToolChoiceIn | None:
        tools: list[ToolIn] = info.data.get("tools") or []  # declared before: validated first
        if choice is not None and choice.type == "tool" and choice.name not in {t.name for t in tools}:
            raise ValueError(f"tool_choice names the tool {choice.name!r}, which tools does not declare")
        if choice is not None and choice.type == "any" and not tools:
            raise ValueError("tool_choice 'any' needs tools")
        return choice


class MessagesRequest(CountTokensRequest):
    max_tokens: TokenCount  # required, as Anthropic's API has it
    temperature: Annotated[float, Field(ge=0, le=1)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=0, le=MAX_TOP_K)] | None = None
    stop_sequences: list[StrictStr] | None = Field(
        None, description=f"at most {MAX_STOP_SEQUENCES} non-empty strings of up to 1024 characters"
    )
    stream: bool = False
    metadata: Metadata | None = None
    service_tier: Id | None = None  # accepted: there is one tier here
    # declared to be refused by name: no engine here runs them
    container: Any = None
    mcp_servers: Any = None

    @field_validator("stop_sequences")
    @classmethod
    def _stops(cls, value: list[str] | None) -> list[str] | None:
        check_stops(value or [], MAX_STOP_SEQUENCES)
        return value
