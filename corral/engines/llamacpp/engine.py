"""The llama.cpp engine: chat and text completion from a GGUF file through llama-cpp-python.

``llama_cpp.Llama`` is not thread-safe and holds a single KV cache, so this engine runs
one request at a time on one dedicated thread (``WorkerThread``), with a bounded queue
of waiting requests (``Overloaded`` when full). A request with ``n > 1`` runs its
choices one after another; the second one reuses the prompt's KV cache.

Two ``Llama`` objects are loaded from the same file:

- the *worker's* one (weights and context), touched only by the worker thread; it
  generates with ``create_chat_completion`` (the GGUF's own chat template) and
  ``create_completion``;
- a vocabulary-only *twin* (no weights), used on the event loop to render
  the chat template and count prompt tokens when a request is admitted, so a bad or
  oversized request is refused before it queues and before any byte is sent.

Both are given the same ``Jinja2ChatFormatter`` built from the GGUF's
``tokenizer.chat_template`` (llama-cpp-python would otherwise swap a recognised template
for a built-in format of its own), and the twin tokenises exactly as llama-cpp-python's
chat handler and ``create_completion`` do, so the admitted count is the one evaluated.

Streaming without llama-cpp-python's ``stream=True``: the worker's ``Llama`` is a subclass
whose ``generate`` (the token loop beneath both ``create_*`` calls) hands every sampled
token to a ``_Tap``, which turns it into a text delta with the shared
``IncrementalDetokenizer`` and ``StopMatcher``, sends it at once, and can end the loop
between two tokens (stop string, ``max_tokens``, cancellation). The ``create_*`` call
itself runs unstreamed and returns llama.cpp's own usage and finish reason. Why not
``stream=True``: while a completion holds an incomplete UTF-8 run, its stream yields no
chunk (so a cancel flag checked between chunks is never seen) and re-decodes the held
tokens on every step, cubic in their number: with the random-weight demo model 450 tokens
took ~20 s instead of ~0.2 s, arriving in one burst at the end. (Unstreamed, llama-cpp-python
still re-decodes the whole completion once per token: quadratic, ~1 ms per token at 1500
tokens, which only matters for models far faster than real ones.)

Sampling follows the OpenAI parameters only: llama-cpp-python's own defaults (top_k 40,
min_p 0.05) are switched off.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral.core.errors import ConfigError, CorralError, EngineError, InvalidRequest, Overloaded, Unavailable
from corral.core.spec import ModelSpec
from corral.core.types import (
    EngineLoad,
    FinishReason,
    GenerationChunk,
    GenerationEnd,
    GenerationRequest,
    SamplingParams,
    Usage,
)
from corral.engines.llamacpp.options import LlamaCppOptions
from corral.engines.limits import context_room
from corral.engines.streams import ClosingStream
from corral.engines.sync import Blocking, Channel, WorkerThread, heavy_imports
from corral.engines.textstream import IncrementalDetokenizer, StopMatcher

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Out:
    """What the worker sends for one choice: a text delta, and on the last one the finish
    reason and llama.cpp's token counts for that choice."""

    index: int
    text: str
    finish_reason: FinishReason | None = None
    completion_tokens: int = 0
    prompt_tokens: int = 0


@dataclass(frozen=True)
class _Failed:
    error: CorralError


class _Job:
    """One admitted request, waiting for or running on the worker thread."""

    __slots__ = ("key", "messages", "prompt_ids", "params", "max_tokens", "seeds", "emit", "cancelled", "finished")

    def __init__(
        self,
        key: str,
        messages: list[dict[str, str]] | None,
        prompt_ids: list[int],
        params: SamplingParams,
        max_tokens: int,
        seeds: list[int],
        emit: Callable[[_Out | _Failed], None],
    ) -> None:
        self.key = key
        self.messages = messages
        self.prompt_ids = prompt_ids
        self.params = params
        self.max_tokens = max_tokens
        self.seeds = seeds
        self.emit = emit
        self.cancelled = False  # set from the event loop, read by the worker between tokens
        self.finished = False  # the consumer has every choice's end: closing it cancels nothing


class _Tap:
    """One choice's view of llama-cpp-python's token loop (see ``_tapped_llama``): turns
    each sampled token into a text delta, sends it, and ends the loop between two tokens
    on a stop string, at ``max_tokens`` or when the request is cancelled."""

    __slots__ = ("job", "index", "eog", "detok", "stops", "sampled", "done")

    def __init__(self, job: _Job, index: int, eog: frozenset[int], decode: Callable[[Sequence[int]], str]) -> None:
        self.job = job
        self.index = index
        self.eog = eog
        self.detok = IncrementalDetokenizer(decode)
        self.stops = StopMatcher(job.params.stop)
        self.sampled = 0
        self.done = False  # end the loop once this token is taken (stop string, max_tokens)

    def token(self, token: int) -> bool:
        """Called for each sampled token before llama-cpp-python sees it; False ends the
        loop without it."""
        if self.job.cancelled:
            return False
        self.sampled += 1
        if token in self.eog:
            return True  # llama-cpp-python ends the completion on it (finish "stop")
        text = self.stops.feed(self.detok.push(token))
        if text:
            self.job.emit(_Out(self.index, text))
        if self.stops.stopped or self.sampled >= self.job.max_tokens:
            self.done = True
        return True

    def last_text(self) -> str:
        """What is still held back once the loop has ended."""
        if self.stops.stopped:
            return ""
        text = self.stops.feed(self.detok.flush())
        if not self.stops.stopped:
            text += self.stops.flush()
        return text


_TAPPED: Any = None


def _tapped_llama() -> Any:
    """``llama_cpp.Llama`` whose ``generate`` (the token loop under ``create_completion``
    and ``create_chat_completion``) reports every token to the instance's ``tap``."""
    global _TAPPED
    if _TAPPED is None:
        import llama_cpp

        class TappedLlama(llama_cpp.Llama):  # type: ignore[misc]
            tap: _Tap | None = None

            def generate(self, tokens: Any, *args: Any, **kwargs: Any) -> Any:
                tap = self.tap
                inner = super().generate(tokens, *args, **kwargs)
                try:
                    for token in inner:
                        if tap is not None and not tap.token(token):
                            return
                        yield token
                        if tap is not None and tap.done:
                            return  # without evaluating the token just taken
                finally:
                    inner.close()

        _TAPPED = TappedLlama
    return _TAPPED


class LlamaCppEngine:
    def __init__(self, spec: ModelSpec, options: LlamaCppOptions) -> None:
        self._spec = spec
        self._opts = options
        self._blocking = Blocking(f"{spec.name}-load")
        self._llama: Any = None  # the worker thread's; never touched elsewhere once started
        self._twin: Any = None  # vocab-only: tokenising and templating on the event loop
        self._formatter: Any = None  # None when the GGUF has no chat template
        self._eog: frozenset[int] = frozenset()  # end-of-generation token ids
        self._eog_bias: dict[int, float] = {}  # ignore_eos: these never get sampled
        self._n_ctx = 0
        self._thread: WorkerThread | None = None
        self._lock = threading.Lock()
        self._waiting: collections.deque[_Job] = collections.deque()
        self._running: _Job | None = None
        self._stopping = False
        self._crashed: BaseException | None = None
        self._rng = random.Random(options.seed)
        self._cancelled_total = 0
        self._completed_total = 0
        self._generated_total = 0
        self._decode_seconds = 0.0

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        await self._blocking.run(self._load)
        self._thread = WorkerThread(f"{self._spec.name}-llamacpp", self._step, self._on_crash)
        self._thread.start()

    def _load(self) -> None:
        with heavy_imports():
            import llama_cpp
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        path = Path(self._spec.source).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"model {self._spec.name!r}: engine 'llamacpp' needs a .gguf file as its source; {str(path)!r} is not a file",
                param="source",
            )
        started = time.perf_counter()
        verbose = self._opts.verbose
        # vocab_only: no weights; llama-cpp-python still makes a (weightless) context, kept tiny.
        # llama.cpp warns "n_ctx_seq (256) > n_ctx_train (0)" for it: harmless.
        try:
            self._twin = llama_cpp.Llama(
                model_path=str(path), vocab_only=True, n_ctx=8, n_batch=8, n_threads=1, verbose=verbose
            )
        except ValueError as exc:  # llama-cpp-python's word for "llama.cpp could not read it"
            raise ConfigError(f"model {self._spec.name!r}: llama.cpp cannot load {str(path)!r}: {exc}", param="source") from None
        meta = self._twin.metadata
        trained = int(meta.get(f"{meta.get('general.architecture', 'llama')}.context_length", 0) or 0)
        n_ctx = self._opts.n_ctx or trained or 2048
        if trained and n_ctx > trained:
            log.info("%s: n_ctx %d capped to the model's training context %d", self._spec.name, n_ctx, trained)
            n_ctx = trained

        handler = None
        template = meta.get("tokenizer.chat_template")
        if template:
            eos, bos = self._twin.token_eos(), self._twin.token_bos()
            self._formatter = Jinja2ChatFormatter(
                template=template,
                eos_token=self._token_text(eos),
                bos_token=self._token_text(bos),
                stop_token_ids=[eos],
            )
            handler = self._formatter.to_chat_handler()

        vocab = llama_cpp.llama_model_get_vocab(self._twin.model)
        self._eog = frozenset(t for t in range(self._twin.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t))
        self._eog_bias = {t: float("-inf") for t in self._eog}

        self._llama = _tapped_llama()(
            model_path=str(path),
            n_ctx=n_ctx,
            n_batch=self._opts.n_batch,
            n_threads=self._opts.n_threads,
            n_threads_batch=self._opts.n_threads,
            seed=self._opts.seed if self._opts.seed is not None else llama_cpp.LLAMA_DEFAULT_SEED,
            last_n_tokens_size=n_ctx,  # presence/frequency penalties count the whole completion
            chat_handler=handler,
            verbose=verbose,
        )
        self._n_ctx = self._llama.n_ctx()
        log.info(
            "loaded %s (llama.cpp) from %s in %.2fs: n_ctx %d, %d threads",
            self._spec.name,
            path,
            time.perf_counter() - started,
            self._n_ctx,
            self._llama.n_threads,
        )

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self._twin.detokenize([token], special=True).decode("utf-8", errors="replace")

    async def stop(self) -> None:
        self._stopping = True
        with self._lock:
            queued, self._waiting = list(self._waiting), collections.deque()
            running = self._running
        for job in queued:
            job.cancelled = True
            job.emit(_Failed(Unavailable(f"model {self._spec.name!r} is stopping")))
        if running is not None:
            running.cancelled = True  # the worker sees it before the next token and fails the request
        if self._thread is not None:
            self._thread.stop()
            if self._thread.alive():
                log.warning("the llama.cpp thread of %s did not stop in time; leaving its model loaded", self._spec.name)
                self._blocking.shutdown()
                return
        for llama in (self._llama, self._twin):
            if llama is not None:
                llama.close()
        self._llama = self._twin = None
        self._blocking.shutdown()

    def _on_crash(self, exc: BaseException) -> None:
        log.error("llama.cpp thread of %s crashed: %r", self._spec.name, exc, exc_info=exc)
        self._crashed = exc
        with self._lock:
            jobs = list(self._waiting) + ([self._running] if self._running is not None else [])
            self._waiting, self._running = collections.deque(), None
        for job in jobs:
            job.emit(_Failed(EngineError(f"model {self._spec.name!r} failed while generating")))

    def load(self) -> EngineLoad:
        running, waiting = self._running, len(self._waiting)
        extra: dict[str, float] = {"generated_tokens_total": float(self._generated_total)}
        if self._decode_seconds > 0:
            extra["tokens_per_second"] = self._generated_total / self._decode_seconds
        return EngineLoad(
            in_flight=0 if running is None else 1,
            queued=waiting,
            cancelled_total=self._cancelled_total,
            completed_total=self._completed_total,
            extra=extra,
        )

    # -- admission (event loop) -------------------------------------------------------

    def _chat_prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        if self._formatter is None:
            raise InvalidRequest(
                f"model {self._spec.name!r} has no chat template in its GGUF file; use /v1/completions",
                param="messages",
            )
        try:
            rendered = self._formatter(messages=messages)
        except Exception as exc:  # jinja templates raise for roles or orders they do not accept
            raise InvalidRequest(f"the model's chat template refused these messages: {exc}", param="messages") from None
        # exactly as llama-cpp-python's chat handler tokenises the rendered prompt
        return self._twin.tokenize(rendered.prompt.encode("utf-8"), add_bos=not rendered.added_special, special=True)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk | GenerationEnd]:
        if self._llama is None or self._thread is None or self._crashed is not None or self._stopping:
            raise Unavailable(f"model {self._spec.name!r} is not serving")
        params = request.sampling
        messages: list[dict[str, str]] | None = None
        if request.messages is not None:
            messages = [{"role": m.role, "content": m.content} for m in request.messages]
            prompt_ids = self._chat_prompt_ids(messages)
            param = "messages"
        else:
            assert request.prompt is not None
            # add_bos=True adds BOS only when the GGUF asks for it (as create_completion does)
            prompt_ids = self._twin.tokenize(request.prompt.encode("utf-8"), add_bos=True, special=True)
            param = "prompt"
            if not prompt_ids:
                raise InvalidRequest("the prompt is empty", param="prompt")
        room = context_room(self._n_ctx, len(prompt_ids), params.max_tokens, param)
        base_seed = params.seed if params.seed is not None else self._rng.getrandbits(31)
        channel: Channel[_Out | _Failed] = Channel(asyncio.get_running_loop())
        job = _Job(
            key=request.request_id,
            messages=messages,
            prompt_ids=prompt_ids,
            params=params,
            max_tokens=params.max_tokens or room,
            # llama.cpp seeds are uint32, and 0xFFFFFFFF there means "pick one at random"
            seeds=[(base_seed + i) % 0xFFFFFFFF for i in range(params.n)],
            emit=channel.put,
        )
        with self._lock:
            busy = self._running is not None or bool(self._waiting)
            if busy and len(self._waiting) >= self._opts.max_queue:
                raise Overloaded(f"model {self._spec.name!r} has {len(self._waiting)} requests waiting; retry shortly")
            self._waiting.append(job)
        self._thread.wake()
        return ClosingStream(self._stream(request, job, channel, len(prompt_ids)), lambda: self._cancel(job))

    async def _stream(
        self, request: GenerationRequest, job: _Job, channel: Channel[_Out | _Failed], prompt_tokens: int
    ) -> AsyncGenerator[GenerationChunk | GenerationEnd, None]:
        remaining = len(job.seeds)
        completion_tokens = 0
        try:
            if request.echo and request.prompt is not None:
                for i in range(remaining):
                    yield GenerationChunk(i, request.prompt)
            while remaining:
                out = await channel.get()
                if isinstance(out, _Failed):
                    raise out.error
                if out.finish_reason is not None:
                    remaining -= 1
                    completion_tokens += out.completion_tokens
                    prompt_tokens = out.prompt_tokens or prompt_tokens  # llama.cpp's own count
                yield GenerationChunk(out.index, out.text, out.finish_reason)
            job.finished = True
            yield GenerationEnd(Usage(prompt_tokens, completion_tokens))
        finally:
            if remaining:  # the consumer went away or failed: drop the job, or stop it at the next token
                self._cancel(job)

    def _cancel(self, job: _Job) -> None:
        if job.finished or job.cancelled:
            return
        job.cancelled = True
        with self._lock:
            try:
                self._waiting.remove(job)
            except ValueError:
                return  # running (the worker counts it) or already done
            self._cancelled_total += 1

    # -- the worker thread --------------------------------------------------------------

    def _step(self) -> bool:
        with self._lock:
            if not self._waiting:
                return False
            job = self._running = self._waiting.popleft()
        try:
            self._run(job)
        finally:
            with self._lock:
                self._running = None
        return True

    def _run(self, job: _Job) -> None:
        try:
            for index, seed in enumerate(job.seeds):
                if job.cancelled:
                    break
                self._run_choice(job, index, seed)
        except Exception as exc:  # a failed request must not take the engine down
            log.error("llama.cpp failed on request %s of %s: %r", job.key, self._spec.name, exc, exc_info=exc)
            job.emit(_Failed(EngineError(f"model {self._spec.name!r} failed while generating: {exc}")))
            return
        with self._lock:  # the loop thread counts cancellations of queued jobs
            if job.cancelled:
                self._cancelled_total += 1
            else:
                self._completed_total += 1
        if job.cancelled and self._stopping:
            job.emit(_Failed(Unavailable(f"model {self._spec.name!r} stopped during the request")))

    def _run_choice(self, job: _Job, index: int, seed: int) -> None:
        llama = self._llama
        p = job.params
        kwargs: dict[str, Any] = {
            "max_tokens": job.max_tokens,
            "temperature": p.temperature,  # 0: llama.cpp's greedy sampler
            "top_p": p.top_p,
            "top_k": 0,  # off: the OpenAI API has no top_k
            "min_p": 0.0,
            "typical_p": 1.0,
            "repeat_penalty": 1.0,
            "presence_penalty": p.presence_penalty,
            "frequency_penalty": p.frequency_penalty,
            "seed": seed,
            "stop": [],  # the tap's StopMatcher
            "stream": False,  # the tap streams; see the module docstring
            "logit_bias": self._eog_bias if p.ignore_eos else None,
        }
        tap = _Tap(job, index, self._eog, self._decode)
        llama.tap = tap
        started = time.perf_counter()
        try:
            if job.messages is not None:
                result = llama.create_chat_completion(messages=job.messages, **kwargs)
            else:
                result = llama.create_completion(prompt=job.prompt_ids, **kwargs)
        finally:
            llama.tap = None
            self._generated_total += tap.sampled
            self._decode_seconds += time.perf_counter() - started
        if job.cancelled:
            return
        usage = result["usage"]
        text = tap.last_text()
        # llama-cpp-python says "stop" after an end-of-generation token, "length" after any
        # other end of its loop, including ours at a stop string
        ended = tap.stops.stopped or result["choices"][0]["finish_reason"] == "stop"
        finish = FinishReason.STOP if ended else FinishReason.LENGTH
        job.emit(_Out(index, text, finish, usage["completion_tokens"], usage["prompt_tokens"]))

    def _decode(self, ids: Sequence[int]) -> str:
        return self._llama.detokenize(list(ids)).decode("utf-8", errors="replace")
