"""The transformers engine: loads a causal LM and its tokenizer (``loading.py``: a model
folder or a GGUF file), renders chat templates, and streams generations from the shared
``ContinuousBatcher``.

Only what is specific to transformers lives here; request validation shared by all
engines is in the gateway, text assembly in ``corral.engines.textstream``. What this
engine cannot take is refused here, before it reaches the batcher: text that is not
Unicode, a prompt that tokenizes to nothing (when the tokenizer has no BOS token to
stand for it), a prompt or ``max_tokens`` beyond the context, more choices than a batch
holds.

Supervision (``corral.engines.supervise.SupervisedLoop``): when a batcher step raises anyway, the
requests of the batch it was running fail at once with an ``EngineError`` and the loop
restarts in place (a fresh batch and KV cache, the same weights) after a backoff;
requests still queued stay queued. Past the supervisor's budget the engine gives up:
``load().failure`` is set, queued requests get ``InstanceLost``, and the worker marks
the instance failed so the manager replaces it. An input in flight at two crashes is
refused with a 400.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

from corral.core.errors import CorralError, EngineError, InstanceLost, InvalidRequest, Overloaded, Unavailable
from corral.core.spec import ModelSpec
from corral.core.types import (
    EngineLoad,
    FinishReason,
    GenerationChunk,
    GenerationEnd,
    GenerationRequest,
    Usage,
)
from corral.engines.limits import context_room, require_choices, require_text, starting_ids
from corral.engines.streams import ClosingStream
from corral.engines.supervise import LoopHooks, SupervisedLoop, fingerprint
from corral.engines.sync import Blocking, Channel, heavy_imports
from corral.engines.textstream import IncrementalDetokenizer, StopMatcher
from corral.engines.transformers.options import TransformersOptions

log = logging.getLogger(__name__)


class TransformersEngine:
    def __init__(self, spec: ModelSpec, options: TransformersOptions) -> None:
        self._spec = spec
        self._opts = options
        self._blocking = Blocking(f"{spec.name}-load")
        self._tokenizer: Any = None
        self._batcher: Any = None
        self._loop: SupervisedLoop[Any] | None = None
        self._max_context = 0

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        await self._blocking.run(self._load)
        batcher = self._batcher
        assert batcher is not None
        # a step that raised: drop the batch and its KV cache; the queue stays
        hooks = LoopHooks(abandon=batcher.reset, drain=batcher.close, fail=_fail)
        self._loop = SupervisedLoop(self._spec.name, "batcher", batcher.step, hooks)
        self._loop.start()

    def _load(self) -> None:
        with heavy_imports():
            import torch

            from corral.engines.transformers.batcher import ContinuousBatcher
            from corral.engines.transformers.loading import load_causal_lm

        if self._opts.threads:
            torch.set_num_threads(self._opts.threads)
        loaded = load_causal_lm(self._spec.name, self._spec.source, self._opts)
        model, self._tokenizer = loaded.model, loaded.tokenizer
        config_ctx = getattr(model.config, "max_position_embeddings", None) or 2048
        self._max_context = min(self._opts.max_context or config_ctx, config_ctx)
        self._batcher = ContinuousBatcher(model, _eos_ids(model, self._tokenizer), self._opts.max_batch_size)

    async def stop(self) -> None:
        if self._loop is not None and self._loop.stop() and self._batcher is not None:  # else the thread still owns the batch
            stopped = f"model {self._spec.name!r} stopped"
            _fail(self._batcher.reset() + self._batcher.close(), lambda: InstanceLost(stopped))
        self._blocking.shutdown()

    def _failure(self) -> str | None:
        return "not started" if self._loop is None else self._loop.failure()

    def load(self) -> EngineLoad:
        if self._batcher is None:
            return EngineLoad()
        running, waiting = self._batcher.counts()
        return EngineLoad(
            in_flight=running,
            queued=waiting,
            cancelled_total=self._batcher.cancelled_total,
            completed_total=self._batcher.completed_total,
            failure=self._failure(),
            crashes_total=self._loop.supervisor.crashes_total if self._loop else 0,
            restarts_total=self._loop.supervisor.restarts_total if self._loop else 0,
        )

    # -- serving ---------------------------------------------------------------------

    def _prompt_ids(self, request: GenerationRequest) -> list[int]:
        """The prompt's token ids, never empty (the batcher cannot prefill nothing)."""
        tok = self._tokenizer
        if request.messages is not None:
            if not getattr(tok, "chat_template", None):
                raise InvalidRequest(
                    f"model {self._spec.name!r} has no chat template; use /v1/completions", param="messages"
                )
            for i, m in enumerate(request.messages):
                require_text(m.content, f"messages[{i}].content")
            messages = [{"role": m.role, "content": m.content} for m in request.messages]
            try:
                rendered = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            except Exception as exc:  # jinja templates raise for roles or orders they do not accept
                raise InvalidRequest(f"the model's chat template refused these messages: {exc}", param="messages") from None
            ids = tok(rendered, add_special_tokens=False)["input_ids"]
        else:
            assert request.prompt is not None
            require_text(request.prompt, "prompt")
            ids = tok(request.prompt)["input_ids"]
        return starting_ids(list(ids), tok.bos_token_id, request, self._spec.name)

    async def count_tokens(self, request: GenerationRequest) -> int:
        """``TokenCounting``: the prompt as ``generate`` would tokenize it (on the event
        loop, as ``generate``'s own tokenizing is)."""
        failure = self._failure()
        if failure is not None or self._loop is None:
            raise Unavailable(f"model {self._spec.name!r} is not serving: {failure}")
        return len(self._prompt_ids(request))

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk | GenerationEnd]:
        failure = self._failure()
        if failure is not None or self._loop is None:
            raise Unavailable(f"model {self._spec.name!r} is not serving: {failure}")
        from corral.engines.transformers.batcher import Sequence

        import torch

        params = request.sampling
        require_choices(params.n, self._opts.max_batch_size)
        prompt_ids = self._prompt_ids(request)
        param = "messages" if request.messages is not None else "prompt"
        room = context_room(self._max_context, len(prompt_ids), params.max_tokens, param)
        _, waiting = self._batcher.counts()
        if waiting + params.n > self._opts.max_queue + self._opts.max_batch_size:
            raise Overloaded(f"model {self._spec.name!r} has {waiting} requests waiting; retry shortly")

        fp = fingerprint(request)
        self._loop.admit(fp, request.request_id)  # an input that crashed the loop twice: 400
        channel: Channel[Any] = Channel(asyncio.get_running_loop())
        base_seed = params.seed if params.seed is not None else random.getrandbits(63)
        seqs = []
        for i in range(params.n):
            gen = torch.Generator().manual_seed((base_seed + i) & _SEED_MASK)  # any JSON integer
            seqs.append(
                Sequence(
                    key=f"{request.request_id}/{i}",
                    index=i,
                    prompt_ids=prompt_ids,
                    params=params,
                    max_new_tokens=params.max_tokens or room,
                    emit=channel.put,
                    detok=IncrementalDetokenizer(self._decode),
                    stops=StopMatcher(params.stop),
                    generator=gen,
                    request_id=request.request_id,
                    fingerprint=fp,
                )
            )
        if not self._batcher.submit(seqs):  # it gave up (or stopped) since the check above
            raise Unavailable(f"model {self._spec.name!r} is not serving: {self._failure() or 'stopped'}")
        self._loop.wake()
        return ClosingStream(self._stream(request, seqs, channel, len(prompt_ids)), lambda: self._cancel(seqs))

    async def _stream(
        self, request: GenerationRequest, seqs: list[Any], channel: Channel[Any], prompt_tokens: int
    ) -> AsyncIterator[GenerationChunk | GenerationEnd]:
        remaining = len(seqs)
        completion_tokens = 0
        if request.echo and request.prompt is not None:
            for seq in seqs:
                yield GenerationChunk(seq.index, request.prompt)
        while remaining:
            out = await channel.get()
            if out.finish_reason is FinishReason.ERROR:
                raise out.error or EngineError(f"model {self._spec.name!r} failed while generating")
            if out.finish_reason is not None:
                remaining -= 1
                completion_tokens += out.completion_tokens
            yield GenerationChunk(out.index, out.text, out.finish_reason, stop_sequence=out.stop_sequence)
        yield GenerationEnd(Usage(prompt_tokens, completion_tokens))

    def _cancel(self, seqs: list[Any]) -> None:
        """The stream was closed: free the slots of sequences still generating (the
        batcher ignores finished ones)."""
        unfinished = [s.key for s in seqs if not s.done]
        if unfinished:
            self._batcher.cancel(unfinished)
            if self._loop is not None:
                self._loop.wake()

    def _decode(self, ids: Any) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True)


def _fail(seqs: list[Any], error: Callable[[], CorralError]) -> None:
    """Finish each sequence with its own error (a request raises the one it is given)."""
    from corral.engines.transformers.batcher import StepOutput

    for seq in seqs:
        seq.emit(StepOutput(seq.index, "", len(seq.out_ids), FinishReason.ERROR, error()))


_SEED_MASK = (1 << 64) - 1  # torch seeds are unsigned 64-bit


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config):
        eos = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(eos, int):
            ids.add(eos)
        elif eos:
            ids.update(eos)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids
