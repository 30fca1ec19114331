"""Fake of ``vllm.engine.async_llm_engine``.

In vLLM >= 0.10 ``AsyncLLMEngine`` is another name of the V1 ``AsyncLLM``; here it is a
subclass, so that tests can tell which of the two an adapter created.
"""

from __future__ import annotations

from vllm.v1.engine.async_llm import AsyncLLM


class AsyncLLMEngine(AsyncLLM):
    """The pre-V1 name of vLLM's async engine."""
