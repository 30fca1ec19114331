"""Options of the transformers engine, validated at config load without importing torch."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class TransformersOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    max_batch_size: int = Field(16, ge=1, le=1024, description="sequences decoded together in one step")
    max_queue: int = Field(256, ge=0, description="requests waiting for a batch slot before 429")
    max_context: int | None = Field(None, ge=16, description="prompt + completion tokens; default: the model's")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = "cpu"
    threads: int | None = Field(None, ge=1, description="torch intra-op threads")
    revision: str | None = None
    trust_remote_code: bool = False
