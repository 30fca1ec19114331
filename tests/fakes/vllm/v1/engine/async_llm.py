"""Fake of ``vllm.v1.engine.async_llm``: ``AsyncLLM``, following vLLM 0.33.0.

Checked against vllm/v1/engine/async_llm.py (and input_processor.py, output_processor.py)
of the vLLM 0.33.0 wheel; the rules the adapter depends on cite their line there.

No model: each choice "generates" one word per step (``WORDS``, as `` word`` pieces with
ids ``100 + position``), picked by a ``random.Random`` seeded with:

- a value derived from the prompt when ``temperature == 0`` (greedy: the same text for a prompt);
- ``seed + index`` when the request has a seed (as vLLM seeds the choices of ``n > 1``);
- the engine's ``seed`` argument plus a request counter otherwise.

A choice ends with an end-of-sequence token (``EOS_ID``, no text, finish ``"stop"``)
after ``6 + seed % 5`` words unless ``ignore_eos``; at a stop string (cut before it,
finish ``"stop"``, text that may start a stop string held back as vLLM does); at
``max_tokens`` (``"length"``); or when aborted (``"abort"``). Outputs follow
``output_kind`` (delta, cumulative or final only). Each step awaits ``asyncio.sleep(0)``,
or 50 ms for a model whose name ends with ``-slow`` (streams that are still running when
a test stops the engine).

As in vLLM 0.33: a closed ``generate`` aborts its request by itself; errors of the request
(``VLLMClientError``, admission's ``GracefulHTTPError``) and ``EngineDeadError`` leave
``generate`` as they are, anything else as ``EngineGenerateError``; ``shutdown`` stops the
outputs without ending the streams (they wait forever, unless aborted); ``abort`` gives a
stream its final ``"abort"`` output. ``die`` stands for a crash of the engine core: every
stream gets ``EngineDeadError``, as does every later request.

For tests, an instance records what it was asked: ``engine_args``, ``requests`` (request
id -> ``Recorded``), ``aborted`` (every id the caller passed to ``abort``; the aborts of
closed ``generate`` calls are in ``self_aborted``) and ``is_shut_down``;
``AsyncLLM.instances`` lists the instances created. A model whose name ends with
``-base`` has no chat template; one whose name contains ``mistral`` has vLLM's
``MistralTokenizer`` interface (no ``chat_template`` attribute, an
``apply_chat_template`` of its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import zlib
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.exceptions import GenerationError, GracefulHTTPError, QueueOverflowError, VLLMClientError, VLLMValidationError
from vllm.outputs import CompletionOutput, RequestOutput
from vllm.sampling_params import RequestOutputKind, SamplingParams
from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

WORDS = (
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
    "india", "juliet", "kilo", "lima", "mike", "november", "oscar", "papa",
)
BOS_ID = 1
EOS_ID = 2
DEFAULT_MAX_MODEL_LEN = 2048
SLOW_STEP_SECONDS = 0.05


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


class FakeMistralTokenizer:
    """vLLM's ``MistralTokenizer`` interface (vllm/tokenizers/mistral.py:206): no
    ``chat_template`` attribute; ``apply_chat_template`` (:386) tokenizes by default and
    refuses a generation prompt after an assistant message (:117-143, a ``ValueError``)."""

    bos_token_id = BOS_ID
    eos_token_id = EOS_ID

    def encode(self, text: str, truncation: bool | None = None, max_length: int | None = None,
               add_special_tokens: bool = True) -> list[int]:
        return FakeTokenizer.encode(self, text, add_special_tokens)  # type: ignore[arg-type]

    def apply_chat_template(
        self, messages: list[dict[str, str]], tools: list[dict[str, Any]] | None = None, *,
        tokenize: bool = True, add_generation_prompt: bool = False, continue_final_message: bool = False,
    ) -> str | list[int]:
        if add_generation_prompt and messages[-1]["role"] == "assistant":
            raise ValueError(
                "Cannot set `add_generation_prompt` to True when the last message is from the assistant. "
                "Consider using `continue_final_message` instead."
            )
        text = "<s> " + " ".join(f"[INST] {m['content']} [/INST]" for m in messages) + " "
        ids = [BOS_ID, *self.encode(text[4:], add_special_tokens=False)]
        return ids if tokenize else text


@dataclass
class ModelConfig:
    model: str
    max_model_len: int


@dataclass
class Recorded:
    prompt_token_ids: list[int]
    sampling_params: SamplingParams


@dataclass
class _State:
    """One running request, as vLLM's output processor holds it."""

    n: int
    aborted: bool = False
    error: BaseException | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)


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
        name = engine_args.model
        self.tokenizer: FakeTokenizer | FakeMistralTokenizer
        if "mistral" in name.lower():
            self.tokenizer = FakeMistralTokenizer()
        else:
            self.tokenizer = FakeTokenizer(None if name.endswith("-base") else "{{ fake chat template }}")
        self.step_seconds = SLOW_STEP_SECONDS if name.endswith("-slow") else 0.0
        self.requests: dict[str, Recorded] = {}
        self.aborted: list[str] = []
        self.self_aborted: list[str] = []
        self.is_shut_down = False
        self.errored = False
        self._running: dict[str, _State] = {}
        self._counter = itertools.count()

    @classmethod
    def from_engine_args(cls, engine_args: AsyncEngineArgs, start_engine_loop: bool = True) -> AsyncLLM:
        engine = cls(engine_args)
        AsyncLLM.instances.append(engine)
        return engine

    def get_tokenizer(self) -> FakeTokenizer | FakeMistralTokenizer:  # a plain method in 0.33 (:1119)
        return self.tokenizer

    def shutdown(self, timeout: float | None = None) -> None:
        """As vLLM's (:305-317): cancels the output handler; running streams get nothing more."""
        self.is_shut_down = True

    def die(self) -> None:
        """The engine core crashed: the output handler propagates the error to every
        stream (:936-944, output_processor.py:593-597) and later requests fail (:418)."""
        self.errored = True
        for state in self._running.values():
            state.error = EngineDeadError()
            state.wake.set()

    async def abort(self, request_id: str | Iterable[str], internal: bool = False) -> None:
        """Abort requests (:948-959); unknown or finished ones are a no-op (but recorded).
        A running one gets its final "abort" output (output_processor.py:637)."""
        ids = [request_id] if isinstance(request_id, str) else list(request_id)
        (self.self_aborted if internal else self.aborted).extend(ids)
        for i in ids:
            if (state := self._running.get(i)) is not None:
                state.aborted = True
                state.wake.set()

    def check_admission(self, n: int = 1, request_id: str | None = None) -> None:
        """:325-383: ``max_num_queued_reqs`` caps the unfinished sequences (n counts n)."""
        limit = self.engine_args.max_num_queued_reqs
        if limit is not None and sum(s.n for s in self._running.values()) + n > limit:
            raise QueueOverflowError()

    async def generate(
        self, prompt: str | dict[str, Any], sampling_params: SamplingParams, request_id: str
    ) -> AsyncGenerator[RequestOutput, None]:
        state: _State | None = None
        try:
            state, prompt_ids, params, max_tokens = self._add_request(prompt, sampling_params, request_id)
            async for out in self._outputs(state, prompt_ids, params, max_tokens, request_id):
                yield out
        except (asyncio.CancelledError, GeneratorExit):  # :807-812: a closed generate aborts itself
            if state is not None:
                await self.abort(request_id, internal=True)
            raise
        except EngineDeadError:  # :815-818
            raise
        except (VLLMClientError, GracefulHTTPError, GenerationError):  # :821-827
            if state is not None:
                await self.abort(request_id, internal=True)
            raise
        except Exception as exc:  # :838-851
            if state is not None:
                await self.abort(request_id, internal=True)
            raise EngineGenerateError() from exc
        finally:
            if state is not None and self._running.get(request_id) is state:
                del self._running[request_id]

    def _add_request(
        self, prompt: str | dict[str, Any], params: SamplingParams, request_id: str
    ) -> tuple[_State, list[int], SamplingParams, int]:
        if self.errored:  # :418-419
            raise EngineDeadError()
        prompt_ids = self._prompt_ids(prompt)
        limit = self.model_config.max_model_len
        # input_processor.py:557-603
        if not prompt_ids:
            raise VLLMValidationError("The decoder prompt cannot be empty")
        if len(prompt_ids) > limit:
            raise VLLMValidationError(
                f"The decoder prompt (length {len(prompt_ids)}) is longer than the maximum model length of {limit}."
            )
        if len(prompt_ids) == limit:
            raise VLLMValidationError(
                f"The decoder prompt (length {limit}) plus the number of requested output tokens (at least 1) "
                f"is longer than the maximum model length of {limit}."
            )
        # input_processor.py:476-479: no max_tokens, up to max_model_len; and a request
        # ends at max_model_len with "length" whatever its max_tokens
        max_tokens = min(params.max_tokens or limit, limit - len(prompt_ids))
        self.check_admission(params.n, request_id)  # :551 for n > 1, :578 for n == 1
        state = _State(params.n)
        self._running[request_id] = state
        self.requests[request_id] = Recorded(prompt_ids, params)
        return state, prompt_ids, params, max_tokens

    async def _outputs(
        self, state: _State, prompt_ids: list[int], params: SamplingParams, max_tokens: int, request_id: str
    ) -> AsyncGenerator[RequestOutput, None]:
        choices = [self._choice(i, params, prompt_ids) for i in range(params.n)]
        kind = params.output_kind
        while any(c.finish_reason is None for c in choices):
            if self.step_seconds:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(state.wake.wait(), self.step_seconds)
            else:
                await asyncio.sleep(0)
            while self.is_shut_down and not state.aborted and state.error is None:
                state.wake.clear()  # no output handler any more: only abort or a crash wake us
                await state.wake.wait()
            if state.error is not None:
                raise state.error
            live = [c for c in choices if c.finish_reason is None]
            for c in live:
                if state.aborted:
                    c.finish_reason = "abort"
                else:
                    c.step(params, max_tokens)
            finished = all(c.finish_reason is not None for c in choices)
            if kind is RequestOutputKind.FINAL_ONLY and not finished:
                continue
            shown = live if kind is RequestOutputKind.DELTA else choices
            outputs = [c.output(kind) for c in shown]
            yield RequestOutput(request_id, None, prompt_ids, outputs=outputs, finished=finished)

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
