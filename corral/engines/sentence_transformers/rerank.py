"""Reranking with sentence-transformers: a CrossEncoder scores (query, document) pairs
directly; any other sentence-transformers model serves as a bi-encoder fallback (cosine
similarity of embeddings), so an embedding model can rerank too.

``mode = "auto"`` picks the cross-encoder when the folder holds a sequence-classification
model with one label, else the bi-encoder.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from corral.core.errors import EngineError, InvalidRequest, Unavailable
from corral.core.spec import ModelSpec
from corral.core.types import EngineLoad, RerankRequest, RerankResult, Usage
from corral.engines import sources
from corral.engines.limits import require_text
from corral.engines.sentence_transformers.options import SentenceTransformersOptions
from corral.engines.sync import Blocking, heavy_imports

log = logging.getLogger(__name__)


def is_cross_encoder(path: Path) -> bool:
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    archs = config.get("architectures") or []
    return any(a.endswith("ForSequenceClassification") for a in archs) and config.get("num_labels", 1) == 1 and (
        len(config.get("id2label", {"0": ""})) == 1
    )


class RerankEngine:
    def __init__(self, spec: ModelSpec, options: SentenceTransformersOptions) -> None:
        self._spec = spec
        self._opts = options
        self._blocking = Blocking(spec.name)
        self._model: Any = None
        self.mode = options.mode
        self._in_flight = 0
        self._completed = 0

    async def start(self) -> None:
        await self._blocking.run(self._load)

    def _load(self) -> None:
        path = sources.resolve(self._spec.source, revision=self._opts.revision)
        if self.mode == "auto":
            self.mode = "cross-encoder" if is_cross_encoder(path) else "bi-encoder"
        log.info("loading %s (%s reranker) from %s", self._spec.name, self.mode, path)
        with heavy_imports():
            from sentence_transformers import CrossEncoder, SentenceTransformer
        if self.mode == "cross-encoder":
            self._model = CrossEncoder(str(path), device=self._opts.device)
        else:
            self._model = SentenceTransformer(str(path), device=self._opts.device)

    async def stop(self) -> None:
        self._blocking.shutdown()

    def load(self) -> EngineLoad:
        return EngineLoad(in_flight=self._in_flight, completed_total=self._completed)

    async def rerank(self, request: RerankRequest) -> RerankResult:
        if self._model is None:
            raise Unavailable(f"model {self._spec.name!r} is not serving")
        if not request.documents:
            raise InvalidRequest("documents must contain at least one text", param="documents")
        require_text(request.query, "query")
        for i, doc in enumerate(request.documents):
            require_text(doc, f"documents[{i}]")
        self._in_flight += 1
        try:
            scores, tokens = await self._blocking.run(lambda: self._score(request.query, list(request.documents)))
        except Exception as exc:  # the library failed on this input: the caller gets an error, the engine lives
            log.exception("rerank failed")
            raise EngineError(f"model {self._spec.name!r} failed: {type(exc).__name__}") from None
        finally:
            self._in_flight -= 1
        self._completed += 1
        return RerankResult(scores=scores, usage=Usage(tokens, 0))

    def _score(self, query: str, documents: list[str]) -> tuple[list[float], int]:
        tokenizer = self._model.tokenizer
        if self.mode == "cross-encoder":
            pairs = [(query, d) for d in documents]
            tokens = sum(len(ids) for ids in tokenizer([query] * len(documents), documents)["input_ids"])
            raw = self._model.predict(pairs, batch_size=self._opts.max_batch_size, show_progress_bar=False)
            return [float(x) for x in raw], tokens
        tokens = sum(len(ids) for ids in tokenizer([query, *documents])["input_ids"])
        vectors = self._model.encode(
            [query, *documents], batch_size=self._opts.max_batch_size, normalize_embeddings=True,
            convert_to_numpy=True, show_progress_bar=False,
        )
        return [float(x) for x in vectors[1:] @ vectors[0]], tokens
