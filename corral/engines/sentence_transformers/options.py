"""Options of the sentence-transformers engine, validated at config load without importing torch."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class SentenceTransformersOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    max_batch_size: int = Field(64, ge=1, le=4096, description="texts encoded together")
    batch_wait_ms: float = Field(2.0, ge=0, le=1000, description="how long to gather a batch")
    max_queue: int = Field(1024, ge=0, description="texts waiting to be encoded before 429")
    device: str = "cpu"
    normalize: bool = Field(True, description="unit-length vectors, as OpenAI returns")
    mode: Literal["auto", "cross-encoder", "bi-encoder"] = Field(
        "auto", description="rerank models: a CrossEncoder, or embeddings' cosine similarity"
    )
    revision: str | None = None
