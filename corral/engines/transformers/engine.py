"""The transformers engine: loads a causal LM and its tokenizer, renders chat templates,
and streams generations from the shared ``ContinuousBatcher``.

Only what is specific to transformers lives here; request validation shared by all
engines is in the gateway, text assembly in ``corral.engines.textstream``.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator
from typing import Any

from corral.core.errors import EngineError, InvalidRequest, Overloaded, Unavailable
from corral.core.spec import ModelSpec
from corral.core.types import (
    EngineLoad,
    FinishReason,
    GenerationChunk,
    GenerationEnd,
    GenerationRequest,
    Usage,
)
from corral.engines import sources
from corral.engines.limits import context_room
from corral.engines.streams import ClosingStream
from corral.engines.sync import Blocking, Channel, WorkerThread, heavy_imports
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
        self._thread: WorkerThread | None = None
        self._max_context = 0
        self._crashed: BaseException | None = None

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        await self._blocking.run(self._load)
        assert self._batcher is not None
        self._thread = WorkerThread(f"{self._spec.name}-batcher", self._batcher.step, self._on_crash)
        self._thread.start()

    def _load(self) -> None:
        with heavy_imports():
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            from corral.engines.transformers.batcher import ContinuousBatcher

        if self._opts.threads:
            torch.set_num_threads(self._opts.threads)
        path = sources.resolve(self._spec.source, revision=self._opts.revision)
        log.info("loading %s (transformers) from %s", self._spec.name, path)
        self._tokenizer = AutoTokenizer.from_pretrained(
            path, revision=self._opts.revision, trust_remote_code=self._opts.trust_remote_code
        )
        dtype: Any = "auto" if self._opts.dtype == "auto" else getattr(torch, self._opts.dtype)
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, revision=self._opts.revision, trust_remote_code=self._opts.trust_remote_code
        )
        model.to(self._opts.device).eval()
        config_ctx = getattr(model.config, "max_position_embeddings", None) or 2048
        self._max_context = min(self._opts.max_context or config_ctx, config_ctx)
        self._batcher = ContinuousBatcher(model, _eos_ids(model, self._tokenizer), self._opts.max_batch_size)

    async def stop(self) -> None:
        if self._thread is not None:
            self._thread.stop()
        self._blocking.shutdown()

    def _on_crash(self, exc: BaseException) -> None:
        log.error("engine loop of %s crashed: %r", self._spec.name, exc, exc_info=exc)
        self._crashed = exc
        self._batcher.fail_all(exc)

    def load(self) -> EngineLoad:
        if self._batcher is None:
            return EngineLoad()
        running, waiting = self._batcher.counts()
        return EngineLoad(
            in_flight=running,
            queued=waiting,
            cancelled_total=self._batcher.cancelled_total,
            completed_total=self._batcher.completed_total,
        )

    # -- serving ---------------------------------------------------------------------

    def _prompt_ids(self, request: GenerationRequest) -> list[int]:
        tok = self._tokenizer
        if request.messages is not None:
            if not getattr(tok, "chat_template", None):
                raise InvalidRequest(
                    f"model {self._spec.name!r} has no chat template; use /v1/completions", param="messages"
                )
            messages = [{"role": m.role, "content": m.content} for m in request.messages]
            try:
                rendered = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            except Exception as exc:  # jinja templates raise for roles or orders they do not accept
                raise InvalidRequest(f"the model's chat template refused these messages: {exc}", param="messages") from None
            return tok(rendered, add_special_tokens=False)["input_ids"]
        assert request.prompt is not None
        return tok(request.prompt)["input_ids"]

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk | GenerationEnd]:
        if self._batcher is None or self._crashed is not None:
            raise Unavailable(f"model {self._spec.name!r} is not serving")
        from corral.engines.transformers.batcher import Sequence

        import torch

        prompt_ids = self._prompt_ids(request)
        params = request.sampling
        param = "messages" if request.messages is not None else "prompt"
        room = context_room(self._max_context, len(prompt_ids), params.max_tokens, param)
        _, waiting = self._batcher.counts()
        if waiting + params.n > self._opts.max_queue + self._opts.max_batch_size:
            raise Overloaded(f"model {self._spec.name!r} has {waiting} requests waiting; retry shortly")

        channel: Channel[Any] = Channel(asyncio.get_running_loop())
        base_seed = params.seed if params.seed is not None else random.getrandbits(63)
        seqs = []
        for i in range(params.n):
            gen = torch.Generator().manual_seed(base_seed + i)
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
                )
            )
        self._batcher.submit(seqs)
        assert self._thread is not None
        self._thread.wake()
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
                raise EngineError(f"model {self._spec.name!r} failed while generating")
            if out.finish_reason is not None:
                remaining -= 1
                completion_tokens += out.completion_tokens
            yield GenerationChunk(out.index, out.text, out.finish_reason)
        yield GenerationEnd(Usage(prompt_tokens, completion_tokens))

    def _cancel(self, seqs: list[Any]) -> None:
        """The stream was closed: free the slots of sequences still generating (the
        batcher ignores finished ones)."""
        unfinished = [s.key for s in seqs if not s.done]
        if unfinished:
            self._batcher.cancel(unfinished)
            if self._thread is not None:
                self._thread.wake()

    def _decode(self, ids: Any) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True)


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
