"""Fake of ``vllm.engine.arg_utils``: the engine-argument dataclasses.

A subset of vLLM 0.33.0's ``EngineArgs`` fields (vllm/engine/arg_utils.py:489-648, and
``AsyncEngineArgs`` at :3244), with its names and defaults (the ``ModelConfig`` /
``CacheConfig`` defaults they point to: seed 0, gpu_memory_utilization 0.92). vLLM 0.33
has no ``swap_space`` any more; ``max_num_queued_reqs`` (:624) is the admission limit the
fake enforces (see ``AsyncLLM.check_admission``). What matters to the adapter is that
they are dataclass fields (it checks ``engine_args`` keys against ``dataclasses.fields``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EngineArgs:
    model: str = "Qwen/Qwen3-0.6B"
    tokenizer: str | None = None
    trust_remote_code: bool = False
    download_dir: str | None = None
    dtype: str = "auto"
    seed: int = 0  # vllm/config/model.py:210
    max_model_len: int | None = None
    pipeline_parallel_size: int = 1
    tensor_parallel_size: int = 1
    enable_prefix_caching: bool | None = None
    gpu_memory_utilization: float = 0.92  # vllm/config/cache.py:215
    max_num_batched_tokens: int | None = None
    max_num_seqs: int | None = None
    max_num_queued_reqs: int | None = None  # :624
    max_num_queued_tokens: int | None = None  # :625
    disable_log_stats: bool = False
    revision: str | None = None
    quantization: str | None = None
    enforce_eager: bool = False


@dataclass
class AsyncEngineArgs(EngineArgs):  # :3244
    enable_log_requests: bool = False
