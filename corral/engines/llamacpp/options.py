"""Options of the llama.cpp engine, validated at config load without importing llama_cpp."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class LlamaCppOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    max_batch_size: int = Field(
        8,
        ge=1,
        le=256,
        description=(
            "sequences decoded together (llama.cpp's n_seq_max, its server's slots); a request with n choices "
            "takes n; requests that find none free wait in the queue"
        ),
    )
    n_ctx: int = Field(
        2048,
        ge=0,
        description=(
            "tokens one sequence holds (prompt + completion); the instance allocates max_batch_size x n_ctx "
            "KV cells; 0: the model's training context"
        ),
    )
    kv_unified: bool = Field(
        False,
        description=(
            "one KV buffer shared by all sequences instead of one per sequence: a request's choices share "
            "their prompt's cells; greedy output may then differ slightly between a request alone and in a batch"
        ),
    )
    flash_attn: bool = Field(False, description="llama.cpp's flash attention (faster on long contexts, other rounding)")
    n_threads: int | None = Field(None, ge=1, description="CPU threads for generation and prompt processing")
    n_batch: int = Field(512, ge=1, description="tokens evaluated per llama_decode call: one per decoding sequence, then chunks of prompts")
    max_queue: int = Field(64, ge=0, description="requests waiting for free sequences (admission order kept) before 429")
    seed: int | None = Field(
        None, ge=0, description="seeds the engine's sampling RNG for requests that give none (reproducible runs)"
    )
    verbose: bool = Field(False, description="let llama.cpp print its own logs to stderr")
