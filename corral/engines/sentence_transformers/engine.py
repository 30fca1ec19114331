"""The sentence-transformers engine: embeddings with request micro-batching.

Concurrent requests are gathered for up to ``batch_wait_ms`` (or until
``max_batch_size`` texts) and encoded in one call on the engine's thread, so a burst
of single-text requests costs one forward pass instead of one each.

Input no tokenizer can take (no texts, text that is not Unicode) is refused with a 400
before it is batched; a request larger than the queue bound is taken when the queue is
empty (it could never fit otherwise) and encoded in ``max_batch_size`` slices. When a
batch of several requests fails, each is encoded again on its own, so one input the
library chokes on fails only its own request.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from corral.core.errors import EngineError, InvalidRequest, Overloaded, Unavailable
from corral.core.spec import ModelKind, ModelSpec
from corral.core.types import EmbeddingRequest, EmbeddingResult, EngineLoad, Usage
from corral.engines import sources
from corral.engines.limits import require_text
from corral.engines.sentence_transformers.options import SentenceTransformersOptions
from corral.engines.sync import Blocking, heavy_imports

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Pending:
    texts: tuple[str, ...]
    future: asyncio.Future[tuple[list[list[float]], int]]


class SentenceTransformersEngine:
    def __init__(self, spec: ModelSpec, options: SentenceTransformersOptions) -> None:
        self._spec = spec
        self._opts = options
        self._blocking = Blocking(spec.name)
        self._model: Any = None
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._queued_texts = 0
        self._in_flight = 0
        self._completed = 0
        self._task: asyncio.Task[None] | None = None
        self._failure: str | None = None  # the batch loop ended: the worker replaces the instance
        self.dimensions = 0

    async def start(self) -> None:
        await self._blocking.run(self._load)
        self._task = asyncio.create_task(self._batch_loop(), name=f"{self._spec.name}-batcher")
        self._task.add_done_callback(self._loop_ended)

    def _loop_ended(self, task: asyncio.Task[None]) -> None:
        """The batch loop never ends by itself: if it did, say so (``load().failure``) and
        answer everyone waiting, rather than leave them and every later caller hanging."""
        if task.cancelled():
            return
        exc = task.exception()
        self._failure = f"the batch loop ended: {type(exc).__name__}: {exc}" if exc else "the batch loop ended"
        log.error("model %s: %s", self._spec.name, self._failure, exc_info=exc)
        self._fail_queued(Unavailable(f"model {self._spec.name!r} is not serving: {self._failure}"))

    def _load(self) -> None:
        with heavy_imports():
            from sentence_transformers import SentenceTransformer

        path = sources.resolve(self._spec.source, revision=self._opts.revision)
        log.info("loading %s (sentence-transformers) from %s", self._spec.name, path)
        self._model = SentenceTransformer(str(path), device=self._opts.device)
        self.dimensions = int(self._model.get_embedding_dimension() or 0)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._fail_queued(Unavailable(f"model {self._spec.name!r} stopped"))
        self._blocking.shutdown()

    def _fail_queued(self, error: Unavailable) -> None:
        while not self._queue.empty():
            pending = self._queue.get_nowait()
            if not pending.future.done():
                pending.future.set_exception(error)

    def load(self) -> EngineLoad:
        return EngineLoad(
            in_flight=self._in_flight, queued=self._queued_texts, completed_total=self._completed, failure=self._failure
        )

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        if self._model is None or self._failure is not None:
            raise Unavailable(f"model {self._spec.name!r} is not serving")
        if request.dimensions is not None and request.dimensions != self.dimensions:
            raise InvalidRequest(
                f"model {self._spec.name!r} returns {self.dimensions}-dimensional vectors and cannot shorten them",
                param="dimensions",
            )
        if not request.inputs:
            raise InvalidRequest("input must contain at least one text", param="input")
        for i, text in enumerate(request.inputs):
            require_text(text, f"input[{i}]" if len(request.inputs) > 1 else "input")
        bound = self._opts.max_queue + self._opts.max_batch_size
        if self._queued_texts and self._queued_texts + len(request.inputs) > bound:
            raise Overloaded(f"model {self._spec.name!r} has {self._queued_texts} texts waiting; retry shortly")
        future: asyncio.Future[tuple[list[list[float]], int]] = asyncio.get_running_loop().create_future()
        self._queued_texts += len(request.inputs)
        self._queue.put_nowait(_Pending(request.inputs, future))
        vectors, tokens = await future
        return EmbeddingResult(vectors=vectors, usage=Usage(prompt_tokens=tokens, completion_tokens=0))

    async def _batch_loop(self) -> None:
        wait = self._opts.batch_wait_ms / 1000
        while True:
            batch = [await self._queue.get()]
            size = len(batch[0].texts)
            deadline = asyncio.get_running_loop().time() + wait
            while size < self._opts.max_batch_size:
                timeout = deadline - asyncio.get_running_loop().time()
                try:
                    item = self._queue.get_nowait() if timeout <= 0 else await asyncio.wait_for(self._queue.get(), timeout)
                except (asyncio.QueueEmpty, TimeoutError):
                    break
                batch.append(item)
                size += len(item.texts)
            live = [p for p in batch if not p.future.done()]  # a cancelled caller needs no vectors
            self._queued_texts -= size
            if not live:
                continue
            if not await self._serve(live) and len(live) > 1:
                for pending in live:  # find the request the library fails on: only it gets the error
                    await self._serve([pending])

    async def _serve(self, batch: list[_Pending]) -> bool:
        """Encode the texts of ``batch`` in one call and answer each caller. False when the
        library failed (the callers are answered with an error only for a single request)."""
        texts = [t for p in batch for t in p.texts]
        self._in_flight += len(texts)
        try:
            vectors, counts = await self._blocking.run(lambda: self._encode(texts))
        except Exception as exc:  # the library failed on this input: its caller gets the error, the loop goes on
            log.exception("embedding batch of %d texts (%d requests) failed", len(texts), len(batch))
            if len(batch) == 1 and not batch[0].future.done():
                batch[0].future.set_exception(EngineError(f"model {self._spec.name!r} failed: {type(exc).__name__}"))
            return False
        finally:
            self._in_flight -= len(texts)
        offset = 0
        for p in batch:
            n = len(p.texts)
            if not p.future.done():
                p.future.set_result((vectors[offset : offset + n], sum(counts[offset : offset + n])))
            offset += n
        self._completed += len(batch)
        return True

    def _encode(self, texts: list[str]) -> tuple[list[list[float]], list[int]]:
        tokenizer = self._model.tokenizer
        limit = self._model.get_max_seq_length() or 512
        counts = [min(len(ids), limit) for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]]
        array = self._model.encode(
            texts,
            batch_size=self._opts.max_batch_size,
            normalize_embeddings=self._opts.normalize,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return array.tolist(), counts


def create(spec: ModelSpec, options: SentenceTransformersOptions) -> object:
    """The catalog's factory: embeddings, or reranking for ``kind = "rerank"``."""
    if spec.kind is ModelKind.RERANK:
        from corral.engines.sentence_transformers.rerank import RerankEngine

        return RerankEngine(spec, options)
    return SentenceTransformersEngine(spec, options)
