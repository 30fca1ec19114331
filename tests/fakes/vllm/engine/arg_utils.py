"""Fake of ``vllm.engine.arg_utils``: the engine-argument dataclasses.

A subset of vLLM's ``EngineArgs`` fields, with vLLM's names and defaults; what matters to
the adapter is that they are dataclass fields (it checks ``engine_args`` keys against
``dataclasses.fields``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EngineArgs:
    model: str = "facebook/opt-125m"
    tokenizer: str | None = None
    revision: str | None = None
    trust_remote_code: bool = False
    download_dir: str | None = None
    dtype: str = "auto"
    quantization: str | None = None
    max_model_len: int | None = None
    seed: int | None = None
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    enforce_eager: bool = False
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    enable_prefix_caching: bool | None = None
    swap_space: float = 4
    disable_log_stats: bool = False


@dataclass
class AsyncEngineArgs(EngineArgs):
    enable_log_requests: bool = False
