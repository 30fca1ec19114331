"""The llama.cpp context of a batched engine, through llama-cpp-python's low-level bindings.

One ``Context`` owns a ``llama_context`` created from already loaded weights (so a
restart after a crash makes a fresh KV cache in milliseconds without reloading the
model) and one ``llama_batch``. It speaks llama.cpp's own terms: a batch is a list of
(token, position, sequence id, wants logits); each sequence id owns its KV cells, which
``remove`` frees and ``copy`` shares with another sequence (the prompt of ``n`` choices).

With ``kv_unified`` off (the default) llama.cpp gives each sequence id its own KV
stream of ``n_ctx / n_seq_max`` cells, so a sequence's attention reads exactly the cells
it would read alone: greedy output is the same alone and in a batch. A unified buffer
lets one sequence use all of ``n_ctx``, but interleaves the cells of sequences, which
changes floating-point summation order in attention.

Only the engine's decode thread touches a ``Context``.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from corral.engines.llamacpp.sampling import Logits


@dataclass(frozen=True)
class ContextConfig:
    n_ctx: int
    n_seq_max: int
    n_batch: int
    n_threads: int | None
    kv_unified: bool
    flash_attn: bool


class DecodeFailed(RuntimeError):
    """llama_decode refused a batch: the engine's loop treats it as a crash."""


class Context:
    def __init__(self, llama_cpp: Any, model: Any, n_vocab: int, config: ContextConfig) -> None:
        self._L = llama_cpp
        self._n_vocab = n_vocab
        self.config = config
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = config.n_ctx
        params.n_batch = params.n_ubatch = config.n_batch
        params.n_seq_max = config.n_seq_max
        params.kv_unified = config.kv_unified
        # llama.cpp's default is "auto" (on, on CPU); llama-cpp-python's is off: its numbers
        params.flash_attn_type = (
            llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if config.flash_attn else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        params.no_perf = True
        threads = config.n_threads or physical_cores()
        params.n_threads = params.n_threads_batch = threads
        self._ctx = llama_cpp.llama_init_from_model(model, params)
        if not self._ctx:
            raise RuntimeError(f"llama.cpp could not create a context of {config.n_ctx} cells for {config.n_seq_max} sequences")
        self._mem = llama_cpp.llama_get_memory(self._ctx)
        self._batch = llama_cpp.llama_batch_init(config.n_batch, 0, 1)
        self.n_ctx = int(llama_cpp.llama_n_ctx(self._ctx))
        self.n_ctx_seq = int(llama_cpp.llama_n_ctx_seq(self._ctx))  # what one sequence may hold
        self.n_threads = int(llama_cpp.llama_n_threads(self._ctx))
        self._outputs: list[int] = []

    # -- building and decoding one batch -----------------------------------------------

    @property
    def n_tokens(self) -> int:
        return int(self._batch.n_tokens)

    @property
    def room(self) -> int:
        """Tokens the current batch can still take."""
        return self.config.n_batch - self._batch.n_tokens

    def clear_batch(self) -> None:
        self._batch.n_tokens = 0

    def add(self, token: int, pos: int, seq_id: int, logits: bool) -> int:
        """Add one token; returns its index in the batch (``logits_row`` reads it)."""
        b = self._batch
        i = b.n_tokens
        b.token[i] = token
        b.pos[i] = pos
        b.n_seq_id[i] = 1
        b.seq_id[i][0] = seq_id
        b.logits[i] = 1 if logits else 0
        b.n_tokens = i + 1
        return i

    def decode(self) -> None:
        rc = self._L.llama_decode(self._ctx, self._batch)
        if rc != 0:
            raise DecodeFailed(f"llama_decode returned {rc} for a batch of {self._batch.n_tokens} tokens")

    def logits_row(self, i: int) -> Logits:
        """The logits of batch token ``i`` (a view of llama.cpp's buffer, valid until the
        next ``decode``)."""
        ptr = self._L.llama_get_logits_ith(self._ctx, i)
        if not ptr:
            raise DecodeFailed(f"llama.cpp has no logits for batch token {i}")
        return np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(self._n_vocab,))

    # -- KV cells of sequences -----------------------------------------------------------

    def remove(self, seq_id: int) -> None:
        self._L.llama_memory_seq_rm(self._mem, seq_id, -1, -1)

    def copy(self, src: int, dst: int) -> None:
        self._L.llama_memory_seq_cp(self._mem, src, dst, -1, -1)

    def clear(self) -> None:
        self._L.llama_memory_clear(self._mem, True)

    def close(self) -> None:
        if self._ctx:
            self._L.llama_batch_free(self._batch)
            self._L.llama_free(self._ctx)
            self._ctx = None


def physical_cores() -> int:
    """llama.cpp's own default thread count (its server's): one per physical core this
    process may run on; a hyperthread sibling adds little to the matrix products and its
    spinning threads slow the others. llama-cpp-python's half of ``os.cpu_count()``
    left one of two real cores idle (measured here: 43 vs 86 tokens/s on SmolLM2)."""
    try:
        allowed = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        allowed = set(range(os.cpu_count() or 2))
    siblings: set[str] = set()
    for cpu in allowed:
        try:
            siblings.add(Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list").read_text().strip())
        except OSError:  # no topology (not Linux, a container hiding /sys): assume two threads per core
            return max(len(allowed) // 2, 1)
    return max(len(siblings), 1)
