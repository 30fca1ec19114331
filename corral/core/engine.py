"""The Engine interfaces: the narrow seam between Corral and an inference framework.

An engine is an object with a lifecycle (``start``/``stop``) and ``load()``; what it can
serve is expressed by implementing one or more capability protocols below, never by
stubs that raise. The router checks capabilities with ``isinstance`` (the protocols are
runtime-checkable), so an embedding request sent to a chat model is refused before any
engine is called.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Literal, Protocol, runtime_checkable

from corral.core.types import (
    EmbeddingRequest,
    EmbeddingResult,
    EngineLoad,
    GenerationChunk,
    GenerationEnd,
    GenerationRequest,
    RawEvent,
    RerankRequest,
    RerankResult,
)


@runtime_checkable
class Engine(Protocol):
    async def start(self) -> None:
        """Load the model. May take long; must not block the event loop."""

    async def stop(self) -> None:
        """Cancel in-flight work and release the model."""

    def load(self) -> EngineLoad:
        """Current in-flight and queued work; cheap, called on the hot path."""


@runtime_checkable
class TextGeneration(Protocol):
    """Chat and text completion, streamed as deltas.

    Awaiting ``generate`` validates and admits the request (raising ``CorralError`` for a
    bad or unserviceable one, before any byte is sent to the client); the returned
    iterator yields ``GenerationChunk`` items (deltas, possibly for several choices when
    ``n > 1``) and ends with exactly one ``GenerationEnd``. Closing the iterator early
    (client gone) cancels the work in the engine. Under ``request.passthrough`` an engine
    may yield ``RawEvent`` items instead of chunks (the client's protocol, already encoded).
    """

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk | GenerationEnd | RawEvent]: ...


@runtime_checkable
class Embedding(Protocol):
    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult: ...


@runtime_checkable
class Rerank(Protocol):
    """Relevance of each document to a query; higher is more relevant."""

    async def rerank(self, request: RerankRequest) -> RerankResult: ...


@runtime_checkable
class TokenCounting(Protocol):
    """A ``TextGeneration`` engine that counts the prompt tokens of a request without
    generating: the count ``generate`` would report as ``prompt_tokens`` (chat template
    applied), and the same refusals for a prompt it could not take. Cheap (tokenizing
    only), so gateways can answer token-count APIs (Anthropic's ``count_tokens``)."""

    async def count_tokens(self, request: GenerationRequest) -> int: ...


@runtime_checkable
class ToolCalling(Protocol):
    """A ``TextGeneration`` engine whose ``generate`` honours ``request.tools``,
    ``tool_choice``, ``parallel_tool_calls`` and tool turns in the history, and streams
    the model's calls as ``GenerationChunk.tool_calls`` (finish reason ``tool_calls``).
    Declared with a class attribute ``honours_tools = True``; engines without it are
    never sent such requests (the router answers 400)."""

    honours_tools: Literal[True]


@runtime_checkable
class StructuredOutput(Protocol):
    """A ``TextGeneration`` engine whose ``generate`` honours ``request.response_format``
    (``json_object`` and ``json_schema``). Declared with ``honours_response_format = True``."""

    honours_response_format: Literal[True]
