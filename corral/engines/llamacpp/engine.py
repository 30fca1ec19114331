"""The llama.cpp engine: chat and text completion from a GGUF file, concurrent requests
decoded together.

llama.cpp's batch API through llama-cpp-python's low-level bindings, as llama.cpp's own
server does with its slots (``decoder.py``): every choice of every running request is
one llama.cpp sequence id with its own KV cells, and one ``llama_decode`` per step
evaluates the next token of every decoding sequence plus chunks of the prompts being
prefilled. Sampling is per sequence (``sampling.py``: temperature, top_p, seed,
presence/frequency penalties), text goes out through ``corral.engines.textstream``
(stop strings, never half a UTF-8 character), and a closed stream frees its sequences at
the next step. Requests that find no free sequence ids wait in a bounded FIFO
(``max_queue``, then 429 ``Overloaded``).

What the decoder cannot take is refused here, on the event loop, before it queues (400
naming the field): text that is not Unicode, a prompt that tokenizes to nothing when the
model has no BOS token to start from (one that has gets BOS), a prompt or ``max_tokens``
beyond what one sequence holds, more choices than ``max_batch_size``.

Supervision (``corral.engines.supervise.SupervisedLoop``, as the transformers engine):
a step that raises fails the requests of its batch at once (``EngineError``), the loop
restarts in place on a fresh ``Context`` (the same weights) after a backoff, and queued
requests stay queued; past the supervisor's budget ``load().failure`` is set and queued
requests get ``InstanceLost``. An input in flight at two crashes is refused with a 400.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence

from corral.core.errors import CorralError, Unavailable
from corral.core.spec import ModelSpec
from corral.core.types import (
    EngineLoad,
    GenerationChunk,
    GenerationEnd,
    GenerationRequest,
    Usage,
)
from corral.engines.limits import context_room, require_choices, require_text, starting_ids
from corral.engines.llamacpp.context import Context, ContextConfig
from corral.engines.llamacpp.decoder import Decoder, Failed, Job, Out
from corral.engines.llamacpp.loading import Gguf, load_gguf
from corral.engines.llamacpp.options import LlamaCppOptions
from corral.engines.streams import ClosingStream
from corral.engines.supervise import LoopHooks, SupervisedLoop, fingerprint
from corral.engines.sync import Blocking, Channel

log = logging.getLogger(__name__)

_SEEDS = 1 << 64  # numpy's PCG64 takes any non-negative integer; JSON seeds may be negative


class LlamaCppEngine:
    def __init__(self, spec: ModelSpec, options: LlamaCppOptions) -> None:
        self._spec = spec
        self._opts = options
        self._blocking = Blocking(f"{spec.name}-load")
        self._gguf: Gguf | None = None
        self._decoder: Decoder | None = None
        self._loop: SupervisedLoop[Job] | None = None
        self._rng = random.Random(options.seed)
        self._seq_tokens = 0  # what one sequence may hold: prompt + completion
        self._stopping = False

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        await self._blocking.run(self._load)
        decoder = self._decoder
        assert decoder is not None
        hooks = LoopHooks(abandon=decoder.abandon_running, drain=decoder.drain, fail=_fail, renew=decoder.reset_context)
        self._loop = SupervisedLoop(self._spec.name, "llamacpp", decoder.step, hooks)
        self._loop.start()

    def _load(self) -> None:
        started = time.perf_counter()
        opts = self._opts
        gguf = self._gguf = load_gguf(self._spec.name, self._spec.source, opts.n_threads, opts.verbose)
        n_seq = opts.max_batch_size
        per_seq = opts.n_ctx or gguf.trained_ctx or 2048
        if gguf.trained_ctx and per_seq > gguf.trained_ctx:
            log.info("%s: n_ctx %d capped to the model's training context %d", self._spec.name, per_seq, gguf.trained_ctx)
            per_seq = gguf.trained_ctx
        n_ctx = n_seq * per_seq  # llama.cpp's n_ctx: the cells of all sequences
        config = ContextConfig(
            n_ctx=n_ctx,
            n_seq_max=n_seq,
            n_batch=max(opts.n_batch, n_seq),  # every decoding sequence's token fits in one batch
            n_threads=opts.n_threads,
            kv_unified=opts.kv_unified,
            flash_attn=opts.flash_attn,
        )

        def make_context() -> Context:
            return Context(gguf.llama_cpp, gguf.model, gguf.n_vocab, config)

        self._decoder = Decoder(make_context, gguf.detokenize, gguf.eog, opts.max_queue, self._spec.name)
        # llama.cpp may round a stream up; a unified buffer would let one sequence take every cell
        self._seq_tokens = min(self._decoder.n_ctx_seq, per_seq)
        log.info(
            "loaded %s (llama.cpp) from %s in %.2fs: %d sequences of %d tokens (%d KV cells%s), %d threads",
            self._spec.name, self._spec.source, time.perf_counter() - started, n_seq, self._seq_tokens,
            n_ctx, ", unified KV" if opts.kv_unified else "", self._decoder.n_threads,
        )

    async def stop(self) -> None:
        self._stopping = True
        decoder = self._decoder
        if self._loop is not None and not self._loop.stop():
            log.warning("the llama.cpp thread of %s did not stop in time; leaving its model loaded", self._spec.name)
            if decoder is not None:
                _fail(decoder.drain(), self._stopped)
            self._blocking.shutdown()
            return
        if decoder is not None:  # the thread has ended: its state is ours
            _fail(decoder.abandon_running() + decoder.drain(), self._stopped)
            decoder.close()
        if self._gguf is not None:
            self._gguf.close()
        self._blocking.shutdown()

    def _stopped(self) -> CorralError:
        return Unavailable(f"model {self._spec.name!r} stopped during the request")

    def _failure(self) -> str | None:
        if self._stopping:
            return "stopped"
        return "not started" if self._loop is None else self._loop.failure()

    def load(self) -> EngineLoad:
        decoder, loop = self._decoder, self._loop
        if decoder is None or loop is None:
            return EngineLoad()
        extra: dict[str, float] = {"generated_tokens_total": float(decoder.generated_total)}
        if decoder.decode_seconds > 0:
            extra["tokens_per_second"] = decoder.generated_total / decoder.decode_seconds
        return EngineLoad(
            in_flight=decoder.in_flight(),
            queued=decoder.queued(),
            cancelled_total=decoder.cancelled_total,
            completed_total=decoder.completed_total,
            failure=self._failure(),
            crashes_total=loop.supervisor.crashes_total,
            restarts_total=loop.supervisor.restarts_total,
            extra=extra,
        )

    # -- admission (event loop) -------------------------------------------------------

    def _prompt_ids(self, request: GenerationRequest) -> list[int]:
        """The prompt's token ids, never empty (a sequence cannot start from nothing)."""
        gguf = self._gguf
        assert gguf is not None
        if request.messages is not None:
            for i, m in enumerate(request.messages):
                require_text(m.content, f"messages[{i}].content")
            ids = gguf.render(self._spec.name, [{"role": m.role, "content": m.content} for m in request.messages])
        else:
            assert request.prompt is not None
            require_text(request.prompt, "prompt")
            # add_bos=True adds BOS only when the GGUF asks for it (as create_completion does)
            ids = gguf.tokenize(request.prompt, add_bos=True)
        return starting_ids(ids, gguf.bos, request, self._spec.name)

    def _max_tokens(self, request: GenerationRequest, prompt_tokens: int) -> int:
        """What each choice may generate: at most what its sequence holds after the prompt."""
        params = request.sampling
        param = "messages" if request.messages is not None else "prompt"
        room = context_room(self._seq_tokens, prompt_tokens, params.max_tokens, param)
        return params.max_tokens or room

    async def count_tokens(self, request: GenerationRequest) -> int:
        """``TokenCounting``: the prompt as ``generate`` would tokenize it (the GGUF's
        chat template and its vocabulary-only twin, on the event loop)."""
        failure = self._failure()
        if failure is not None or self._decoder is None:
            raise Unavailable(f"model {self._spec.name!r} is not serving: {failure}")
        return len(self._prompt_ids(request))

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk | GenerationEnd]:
        failure = self._failure()
        decoder, loop = self._decoder, self._loop
        if failure is not None or decoder is None or loop is None:
            raise Unavailable(f"model {self._spec.name!r} is not serving: {failure}")
        params = request.sampling
        require_choices(params.n, self._opts.max_batch_size)
        prompt_ids = self._prompt_ids(request)
        max_tokens = self._max_tokens(request, len(prompt_ids))
        fp = fingerprint(request)
        loop.admit(fp, request.request_id)  # an input that crashed the loop twice: 400
        base_seed = params.seed if params.seed is not None else self._rng.getrandbits(63)
        channel: Channel[Out | Failed] = Channel(asyncio.get_running_loop())
        job = Job(
            request=request,
            fingerprint=fp,
            prompt_ids=prompt_ids,
            max_tokens=max_tokens,
            seeds=[(base_seed + i) % _SEEDS for i in range(params.n)],  # choice i: seed + i
            emit=channel.put,
        )
        decoder.submit(job)  # Overloaded when the queue is full
        loop.wake()
        return ClosingStream(self._stream(request, job, channel), lambda: self._cancel(job))

    async def _stream(
        self, request: GenerationRequest, job: Job, channel: Channel[Out | Failed]
    ) -> AsyncGenerator[GenerationChunk | GenerationEnd, None]:
        remaining = len(job.seeds)
        completion_tokens = 0
        try:
            if request.echo and request.prompt is not None:
                for i in range(remaining):
                    yield GenerationChunk(i, request.prompt)
            while remaining:
                out = await channel.get()
                if isinstance(out, Failed):
                    raise out.error
                if out.finish_reason is not None:
                    remaining -= 1
                    completion_tokens += out.completion_tokens
                yield GenerationChunk(out.index, out.text, out.finish_reason, stop_sequence=out.stop_sequence)
            job.finished = True
            yield GenerationEnd(Usage(len(job.prompt_ids), completion_tokens))
        finally:
            if remaining:  # the consumer went away or failed: drop the job, or stop it at the next step
                self._cancel(job)

    def _cancel(self, job: Job) -> None:
        if self._decoder is not None:
            self._decoder.cancel(job)
        if self._loop is not None:
            self._loop.wake()


def _fail(jobs: Sequence[Job], error: Callable[[], CorralError]) -> None:
    """Answer each job with its own error (a request raises the one it is given)."""
    for job in jobs:
        job.fail(error())
