"""Fake of ``vllm.sampling_params``: ``SamplingParams`` and ``RequestOutputKind``.

Follows vllm/sampling_params.py of vLLM 0.33.0 (line numbers below) for the fields the
adapter sets: keyword-only, vLLM's defaults (``max_tokens`` 16, cumulative outputs), and
its checks, which raise ``VLLMValidationError`` (not a ``ValueError``), with
``parameter`` only where vLLM gives one. Among them, the refusals an OpenAI client can
meet: greedy with ``n > 1``, an empty stop string, a temperature above 2, a
repetition_penalty not above 0, a top_k below -1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from vllm.exceptions import VLLMValidationError

_SAMPLING_EPS = 1e-5  # :32, below it a temperature is greedy
_MAX_TEMP = 1e-2  # :33, smaller positive temperatures are raised to it
MAX_N_SEQUENCES = 16384  # vllm/envs.py:112, VLLM_MAX_N_SEQUENCES


class RequestOutputKind(Enum):  # :208
    CUMULATIVE = 0  # every output carries the whole text so far
    DELTA = 1  # every output carries only what is new
    FINAL_ONLY = 2  # one output, at the end


@dataclass(kw_only=True)
class SamplingParams:  # :271
    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: str | list[str] | None = None
    ignore_eos: bool = False
    max_tokens: int | None = 16
    output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE

    def __post_init__(self) -> None:  # :559-632
        if 0 < self.temperature < _MAX_TEMP:
            self.temperature = _MAX_TEMP
        if self.seed == -1:
            self.seed = None
        if self.stop is None:
            self.stop = []
        elif isinstance(self.stop, str):
            self.stop = [self.stop]
        self._verify_args()
        if self.temperature < _SAMPLING_EPS:  # :613-618
            self.top_p = 1.0
            self.top_k = 0
            self._verify_greedy_sampling()

    def _verify_args(self) -> None:  # :634-747, in vLLM's order
        _verify_num_sequences(self.n, "n")
        if not -2.0 <= self.presence_penalty <= 2.0:
            raise VLLMValidationError(f"presence_penalty must be in [-2, 2], got {self.presence_penalty}.")
        if not -2.0 <= self.frequency_penalty <= 2.0:
            raise VLLMValidationError(f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty}.")
        if not math.isfinite(self.repetition_penalty):
            raise VLLMValidationError(f"repetition_penalty must be a finite number, got {self.repetition_penalty}.")
        if self.repetition_penalty <= 0.0:
            raise VLLMValidationError(f"repetition_penalty must be greater than zero, got {self.repetition_penalty}.")
        t = self.temperature
        if not math.isfinite(t):
            raise VLLMValidationError(
                f"temperature must be a finite number, got {t}.", parameter="temperature", value=t
            )
        if t < 0.0:
            raise VLLMValidationError(f"temperature must be non-negative, got {t}.", parameter="temperature", value=t)
        if t > 2.0:
            raise VLLMValidationError(f"temperature must be in [0, 2], got {t}.", parameter="temperature", value=t)
        if not 0.0 < self.top_p <= 1.0:
            raise VLLMValidationError(
                f"top_p must be in (0, 1], got {self.top_p}.", parameter="top_p", value=self.top_p
            )
        if self.top_k < -1:  # vLLM quietly accepts -1 as disabled
            raise VLLMValidationError(f"top_k must be 0 (disable), or at least 1, got {self.top_k}.")
        if not isinstance(self.top_k, int):
            raise VLLMValidationError(f"top_k must be an integer, got {type(self.top_k).__name__}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise VLLMValidationError(
                f"max_tokens must be at least 1, got {self.max_tokens}.", parameter="max_tokens", value=self.max_tokens
            )
        assert isinstance(self.stop, list)
        if any(not s for s in self.stop):  # :735-736
            raise VLLMValidationError("stop cannot contain an empty string.")

    def _verify_greedy_sampling(self) -> None:  # :769-773
        if self.n > 1:
            raise VLLMValidationError(f"n must be 1 when using greedy sampling, got {self.n}.")


def _verify_num_sequences(value: int, parameter_name: str) -> None:  # :49-62
    if not isinstance(value, int):
        raise VLLMValidationError(f"{parameter_name} must be an int, but is of type {type(value)}")
    if value < 1:
        raise VLLMValidationError(f"{parameter_name} must be at least 1, got {value}.")
    if value > MAX_N_SEQUENCES:
        raise VLLMValidationError(f"{parameter_name} must be at most {MAX_N_SEQUENCES}, got {value}.")
