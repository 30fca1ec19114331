"""Fake of ``vllm.v1.engine.async_llm``: ``AsyncLLM``, following vLLM's documented API.

No model: each choice "generates" one word per step (``WORDS``, as `` word`` pieces with
ids ``100 + position``), picked by a ``random.Random`` seeded with:

- a value derived from the prompt when ``temperature == 0`` (greedy: every choice equal);
- ``seed + index`` when the request has a seed (as vLLM seeds the choices of ``n > 1``);
- the engine's ``seed`` argument plus a request counter otherwise.

A choice ends with an end-of-sequence token (``EOS_ID``, no text, finish ``"stop"``)
after ``6 + seed % 5`` words unless ``ignore_eos``; at a stop string (cut before it,
finish ``"stop"``, text that may start a stop string held back as vLLM does); at
``max_tokens`` (``"length"``); or when aborted (``"abort"``). Outputs follow
``output_kind`` (delta, cumulative or final only). Each step awaits ``asyncio.sleep(0)``.

For tests, an instance records what it was asked: ``engine_args``, ``requests`` (request
id -> ``Recorded``), ``aborted`` (every id ``abort`` was called with) and
``is_shut_down``; ``AsyncLLM.instances`` lists the instances created. Unlike vLLM, a
closed ``generate`` does not abort by itself, so a recorded abort is the caller's.
A model whose name ends with ``-base`` has no chat template.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import zlib
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.outputs import CompletionOutput, RequestOutput
from vllm.sampling_params import RequestOutputKind, SamplingParams
from vllm.v1.engine.exceptions import EngineDeadError

WORDS = (
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
    "india", "juliet", "kilo", "lima", "mike", "november", "oscar", "papa",
)
BOS_ID = 1
EOS_ID = 2
DEFAULT_MAX_MODEL_LEN = 2048


class FakeTokenizer:
    """Word-level: one id per whitespace-separated word (a hash), BOS when asked."""

    bos_token_id = BOS_ID
    eos_token_id = EOS_ID

    def __init__(self, chat_template: str | None) -> None:
        self.chat_template = chat_template

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = [1000 + zlib.crc32(word.encode()) % 30000 for word in text.split()]
        return [BOS_ID, *ids] if add_special_tokens else ids

    def apply_chat_template(
        self, conversation: list[dict[str, str]], tokenize: bool = True, add_generation_prompt: bool = False
    ) -> str | list[int]:
        if self.chat_template is None:
            raise ValueError("this tokenizer has no chat template")
        text = "<s> "
        for message in conversation:
            if message["role"] not in ("system", "user", "assistant"):  # as a jinja template would raise
                raise ValueError(f"unsupported role {message['role']!r}")
            text += f"<|{message['role']}|> {message['content']} <|end|> "
        if add_generation_prompt:
            text += "<|assistant|> "
        return self.encode(text, add_special_tokens=False) if tokenize else text


@dataclass
class ModelConfig:
    model: str
    max_model_len: int


@dataclass
class Recorded:
    prompt_token_ids: list[int]
    sampling_params: SamplingParams


@dataclass
class _Choice:
    index: int
    rng: random.Random
    eos_after: int
    token_ids: list[int] = field(default_factory=list)
    text: str = ""  # everything generated, before any stop-string cut
    visible: str = ""  # what the caller may see so far
    sent_text: int = 0  # delta mode: characters of ``visible`` already sent
    sent_tokens: int = 0
    finish_reason: str | None = None
    stop_reason: str | None = None

    def step(self, params: SamplingParams, max_tokens: int) -> None:
        if not params.ignore_eos and len(self.token_ids) >= self.eos_after:
            self.token_ids.append(EOS_ID)
            self.visible = self.text
            self.finish_reason = "stop"
            return
        word = self.rng.randrange(len(WORDS))
        self.token_ids.append(100 + word)
        self.text += " " + WORDS[word]
        stops = params.stop or []
        hits = [(self.text.find(s), s) for s in stops if s in self.text]
        if hits:
            at, stop = min(hits)
            self.visible, self.finish_reason, self.stop_reason = self.text[:at], "stop", stop
        elif len(self.token_ids) >= max_tokens:
            self.visible, self.finish_reason = self.text, "length"
        else:
            hold = max((len(s) for s in stops), default=1) - 1  # could be the start of a stop string
            self.visible = self.text[: len(self.text) - hold]

    def output(self, kind: RequestOutputKind) -> CompletionOutput:
        if kind is RequestOutputKind.DELTA:
            text, ids = self.visible[self.sent_text:], self.token_ids[self.sent_tokens:]
            self.sent_text, self.sent_tokens = len(self.visible), len(self.token_ids)
        else:
            text, ids = self.visible, list(self.token_ids)
        return CompletionOutput(self.index, text, ids, finish_reason=self.finish_reason, stop_reason=self.stop_reason)


class AsyncLLM:
    """An asynchronous engine with vLLM's ``AsyncLLM`` interface and no model."""

    instances: ClassVar[list[AsyncLLM]] = []

    def __init__(self, engine_args: AsyncEngineArgs) -> None:
        self.engine_args = engine_args
        self.model_config = ModelConfig(engine_args.model, engine_args.max_model_len or DEFAULT_MAX_MODEL_LEN)
        template = None if engine_args.model.endswith("-base") else "{{ fake chat template }}"
        self.tokenizer = FakeTokenizer(template)
        self.requests: dict[str, Recorded] = {}
        self.aborted: list[str] = []
        self.is_shut_down = False
        self._running: set[str] = set()
        self._to_abort: set[str] = set()
        self._counter = itertools.count()

    @classmethod
    def from_engine_args(cls, engine_args: AsyncEngineArgs, start_engine_loop: bool = True) -> AsyncLLM:
        engine = cls(engine_args)
        AsyncLLM.instances.append(engine)
        return engine

    async def get_tokenizer(self) -> FakeTokenizer:
        return self.tokenizer

    async def get_model_config(self) -> ModelConfig:
        return self.model_config

    def shutdown(self) -> None:
        self.is_shut_down = True

    async def abort(self, request_id: str | Iterable[str]) -> None:
        """Abort requests; unknown or finished ones are a no-op (but recorded)."""
        ids = [request_id] if isinstance(request_id, str) else list(request_id)
        self.aborted.extend(ids)
        self._to_abort.update(i for i in ids if i in self._running)

    async def generate(
        self, prompt: str | dict[str, Any], sampling_params: SamplingParams, request_id: str
    ) -> AsyncGenerator[RequestOutput, None]:
        if self.is_shut_down:
            raise EngineDeadError("the engine is shut down")
        prompt_ids = self._prompt_ids(prompt)
        params = sampling_params
        if request_id in self._running:
            raise ValueError(f"request id {request_id} is already running")
        limit = self.model_config.max_model_len
        if len(prompt_ids) + (params.max_tokens or 0) > limit:
            raise ValueError(f"prompt ({len(prompt_ids)} tokens) + max_tokens exceeds max_model_len {limit}")
        max_tokens = params.max_tokens or limit - len(prompt_ids)  # None: up to the context limit
        self.requests[request_id] = Recorded(prompt_ids, params)
        choices = [self._choice(i, params, prompt_ids) for i in range(params.n)]
        kind = getattr(params, "output_kind", RequestOutputKind.CUMULATIVE)  # absent from old SamplingParams
        self._running.add(request_id)
        try:
            while any(c.finish_reason is None for c in choices):
                await asyncio.sleep(0)
                if self.is_shut_down:
                    raise EngineDeadError("the engine was shut down")
                live = [c for c in choices if c.finish_reason is None]
                for c in live:
                    if request_id in self._to_abort:
                        c.finish_reason = "abort"
                    else:
                        c.step(params, max_tokens)
                finished = all(c.finish_reason is not None for c in choices)
                if kind is RequestOutputKind.FINAL_ONLY and not finished:
                    continue
                shown = live if kind is RequestOutputKind.DELTA else choices
                yield RequestOutput(request_id, None, prompt_ids, outputs=[c.output(kind) for c in shown], finished=finished)
        finally:
            self._running.discard(request_id)
            self._to_abort.discard(request_id)

    def _prompt_ids(self, prompt: str | dict[str, Any]) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt)
        if "prompt_token_ids" in prompt:
            return list(prompt["prompt_token_ids"])
        return self.tokenizer.encode(prompt["prompt"])

    def _choice(self, index: int, params: SamplingParams, prompt_ids: list[int]) -> _Choice:
        if params.temperature == 0:
            seed = sum(prompt_ids) % 1009
        elif params.seed is not None:
            seed = params.seed + index
        else:
            seed = (self.engine_args.seed or 0) * 7919 + next(self._counter)
        return _Choice(index, random.Random(seed), eos_after=6 + seed % 5)
