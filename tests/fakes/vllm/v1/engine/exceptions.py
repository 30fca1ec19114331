"""Fake of ``vllm.v1.engine.exceptions`` (vllm/v1/engine/exceptions.py of vLLM 0.33.0)."""

from __future__ import annotations

from typing import Any

from vllm.exceptions import VLLMServerError


class EngineGenerateError(VLLMServerError):  # vllm/v1/engine/exceptions.py:6
    """``AsyncLLM.generate()`` failed for an unexpected reason. Recoverable."""


class EngineDeadError(VLLMServerError):  # vllm/v1/engine/exceptions.py:12-28
    """The EngineCore died. Unrecoverable."""

    ENGINE_DEAD_MESSAGE = "EngineCore encountered an issue. See stack trace (above) for the root cause."

    def __init__(self, *args: Any, suppress_context: bool = False) -> None:
        super().__init__(self.ENGINE_DEAD_MESSAGE, *args)
        self.__suppress_context__ = suppress_context
