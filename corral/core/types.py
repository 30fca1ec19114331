"""Internal request and result types passed between the gateway, router and engines.

Wire formats (OpenAI JSON) are translated to and from these in the protocol front-ends;
engines never see a wire object, so a new protocol (Anthropic Messages, Ollama) needs no
engine change.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from typing import Any
from enum import Enum


TOOLS = "tools"  # capability names, as instance records list them
RESPONSE_FORMAT = "response_format"
COUNT_TOKENS = "count_tokens"  # the engine counts a prompt's tokens without generating


class FinishReason(str, Enum):
    STOP = "stop"
    LENGTH = "length"
    TOOL_CALLS = "tool_calls"
    CANCELLED = "cancelled"
    ERROR = "error"


JSONObject = dict[str, Any]  # JSON passed through as the client wrote it (tool schemas)


@dataclass(frozen=True)
class Tool:
    """A function the model may call (every protocol's function tool)."""

    name: str
    description: str | None = None
    parameters: JSONObject | None = None  # JSON Schema of the arguments, as the client wrote it
    strict: bool | None = None  # OpenAI's strict schema adherence; None: not asked


class ToolMode(str, Enum):
    AUTO = "auto"  # the model decides
    NONE = "none"  # no tool call
    REQUIRED = "required"  # at least one call, any tool
    NAMED = "named"  # a call of the tool ``ToolChoice.name``


@dataclass(frozen=True)
class ToolChoice:
    mode: ToolMode
    name: str | None = None  # with NAMED


@dataclass(frozen=True)
class ToolCall:
    """A call the model asked for, in an assistant message of the history."""

    id: str
    name: str
    arguments: str  # JSON text, as the model wrote it


@dataclass(frozen=True)
class ToolCallDelta:
    """A streamed fragment of a tool call: ``id`` and ``name`` come with its first
    fragment, ``arguments`` arrive in pieces to be concatenated."""

    index: int  # the call's position within its choice
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str
    name: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()  # an assistant turn that called tools
    tool_call_id: str | None = None  # a tool turn: the call it answers


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int | None = None  # None: up to the context limit
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    n: int = 1
    ignore_eos: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    top_k: int = 0  # sample among the k most likely tokens; 0: off (Anthropic, Ollama)
    repetition_penalty: float = 1.0  # CTRL's multiplicative penalty on seen tokens; 1: off (Ollama's repeat_penalty)
    # parameters the client left out (holding the API's default): a model's sampling
    # defaults replace them (``with_defaults``) once the gateway knows the instance
    unset: frozenset[str] = frozenset()

    def with_defaults(self, defaults: tuple[tuple[str, float], ...]) -> SamplingParams:
        """These parameters with the model's ``defaults`` in place of those left out."""
        chosen = {k: v for k, v in defaults if k in self.unset}
        return replace(self, unset=self.unset - chosen.keys(), **chosen) if chosen else self


@dataclass(frozen=True)
class PassThrough:
    """The client speaks OpenAI's streamed chat or completions, the dialect of an
    openai-compatible upstream: its engine may forward the upstream's events as they
    came (``RawEvent``), rewriting only the response id and the model name, instead of
    decoding them into deltas that the front-end encodes again (docs/performance.md)."""

    response_id: str  # the id the client's chunks carry (chatcmpl-..., cmpl-...)
    include_usage: bool  # the client asked for the usage chunk (stream_options.include_usage)


@dataclass(frozen=True)
class GenerationRequest:
    """One chat or text-completion request, already validated.

    Exactly one of ``messages`` (chat: the engine applies its chat template) and
    ``prompt`` (raw text completion) is set.
    """

    request_id: str
    model: str
    sampling: SamplingParams
    messages: tuple[ChatMessage, ...] | None = None
    prompt: str | None = None
    echo: bool = False
    user: str | None = None  # the API's ``user`` field: a session-affinity key
    session: str | None = None  # the ``x-session-id`` header: a session-affinity key
    traceparent: str | None = None  # W3C trace context to continue on the worker
    # False when the client wants only the whole answer: an engine may then produce it
    # in one piece (an upstream asked for one JSON body, a worker answering in one write)
    stream: bool = True
    # Structured output, passed through to engines that declare the capability
    # (``corral.core.engine.ToolCalling`` / ``StructuredOutput``); the router refuses
    # the request for models whose engine does not.
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice | None = None  # None: the engine's default (auto)
    parallel_tool_calls: bool | None = None  # False: at most one call per turn
    response_format: JSONObject | None = None  # json_object or json_schema; None for text
    # set by the OpenAI front-end when nothing needs the deltas decoded (not sent to workers)
    passthrough: PassThrough | None = None

    @functools.cached_property
    def _features(self) -> frozenset[str]:
        return self._find_features()

    def features(self) -> frozenset[str]:
        """Engine capabilities this request needs beyond plain generation (computed once:
        the router asks on every attempt)."""
        return self._features

    def _find_features(self) -> frozenset[str]:
        needs = set()
        if self.tools or any(m.tool_calls or m.role == "tool" for m in self.messages or ()):
            needs.add(TOOLS)
        if self.response_format is not None:
            needs.add(RESPONSE_FORMAT)
        return frozenset(needs)

    def prefix(self, length: int = 256) -> str:
        """The prompt's leading text, for prefix-affinity routing."""
        if self.prompt is not None:
            return self.prompt[:length]
        out = ""
        for m in self.messages or ():
            out += m.role + ":" + m.content + "\n"
            if len(out) >= length:
                break
        return out[:length]


@dataclass(frozen=True)
class RawEvent:
    """One event of the answer already encoded in the client's protocol (a whole SSE
    frame, ``data: {...}\n\n``), forwarded from an upstream under ``PassThrough``. Its
    finish reason and whether it carries the usage are read off it for the accounting."""

    data: bytes
    finish_reason: FinishReason | None = None
    usage: bool = False


@dataclass(frozen=True)
class GenerationChunk:
    """A delta for one choice. The final chunk of a choice carries ``finish_reason``."""

    index: int
    text: str
    finish_reason: FinishReason | None = None
    tool_calls: tuple[ToolCallDelta, ...] = ()
    # with finish reason STOP: the stop string that ended the choice, when the engine
    # knows (Anthropic's stop_reason "stop_sequence"); None: end of sequence, or unknown
    stop_sequence: str | None = None


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class GenerationEnd:
    """Last item of every generation stream: token accounting for the whole request, and
    the spans a remote worker measured (plain dicts, see ``corral.observe.tracing``)."""

    usage: Usage
    spans: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class EmbeddingRequest:
    request_id: str
    model: str
    inputs: tuple[str, ...]
    dimensions: int | None = None


@dataclass(frozen=True)
class EmbeddingResult:
    vectors: list[list[float]]
    usage: Usage


@dataclass(frozen=True)
class RerankRequest:
    request_id: str
    model: str
    query: str
    documents: tuple[str, ...]


@dataclass(frozen=True)
class RerankResult:
    scores: list[float]  # one per document, in the request's order
    usage: Usage


@dataclass
class EngineLoad:
    """What an engine reports about its own work, for balancing and debugging."""

    in_flight: int = 0
    queued: int = 0
    cancelled_total: int = 0
    completed_total: int = 0
    # Supervision: ``failure`` is set when the engine can no longer serve and will not
    # recover by itself (its loop died past its restart budget); the worker then marks the
    # instance failed so the manager replaces it. Crashes and in-place restarts are counted.
    failure: str | None = None
    crashes_total: int = 0
    restarts_total: int = 0
    extra: dict[str, float] = field(default_factory=dict)
