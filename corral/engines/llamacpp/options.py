"""Options of the llama.cpp engine, validated at config load without importing llama_cpp."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class LlamaCppOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    n_ctx: int = Field(
        2048, ge=0, description="context window (prompt + completion tokens); 0: the model's training context"
    )
    n_threads: int | None = Field(None, ge=1, description="CPU threads for generation and prompt processing")
    n_batch: int = Field(512, ge=1, description="prompt tokens evaluated per llama_decode call")
    max_queue: int = Field(64, ge=0, description="requests waiting behind the running one before 429")
    seed: int | None = Field(
        None, ge=0, description="seeds the engine's sampling RNG for requests that give none (reproducible runs)"
    )
    verbose: bool = Field(False, description="let llama.cpp print its own logs to stderr")
