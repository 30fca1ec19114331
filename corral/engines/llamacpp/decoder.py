"""The batched decode loop of the llama.cpp engine: llama.cpp server's slots, in Python.

Requests (``Job``) wait in a bounded FIFO queue. Each ``step``, run on the engine's one
decode thread:

1. drops cancelled sequences (their KV cells are removed, their sequence ids freed);
2. admits waiting jobs, in order, while there are free sequence ids for all their
   choices (and, with a unified KV buffer, room for their prompt plus ``n x max_tokens``
   cells): a job that does not fit yet blocks the ones behind it, so admission order is
   kept;
3. builds one ``llama_batch``: the last sampled token of every decoding sequence, then
   chunks of prompts still being prefilled, up to ``n_batch`` tokens;
4. calls ``llama_decode`` once, and samples each sequence's next token from its own
   logits row with its own ``Sampler``; text goes out through each job's ``emit`` as
   soon as the shared ``IncrementalDetokenizer`` / ``StopMatcher`` release it.

A job with ``n`` choices prefills its prompt once, on its first sequence; the others
get a copy of those cells (``llama_memory_seq_cp``) and sample from the same logits row
with their own seeds. A finished sequence's cells are removed at once.

The event loop calls only ``submit``, ``cancel`` and the read-only counters. When a
step raises, the engine's supervisor calls ``abandon_running`` (the jobs of the batch, to
fail) and, before the loop runs again, ``reset_context`` (a fresh KV cache on the same
weights); waiting jobs stay queued.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from corral.core.errors import CorralError, Overloaded, Unavailable
from corral.core.types import FinishReason, GenerationRequest, SamplingParams
from corral.engines.llamacpp.context import Context
from corral.engines.llamacpp.sampling import Sampler
from corral.engines.textstream import Decode, IncrementalDetokenizer, StopMatcher

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Out:
    """A text delta of one choice; its last one has the finish reason and token count."""

    index: int
    text: str
    finish_reason: FinishReason | None = None
    completion_tokens: int = 0
    stop_sequence: str | None = None  # the stop string that ended it


@dataclass(frozen=True)
class Failed:
    error: CorralError


Emit = Callable[[Out | Failed], None]


class Job:
    """One admitted request: its prompt tokens, sampling and where its output goes."""

    __slots__ = ("request", "fingerprint", "prompt_ids", "params", "max_tokens", "seeds", "emit",
                 "cancelled", "finished", "failed", "remaining")

    def __init__(
        self,
        request: GenerationRequest,
        fingerprint: str,
        prompt_ids: list[int],
        max_tokens: int,
        seeds: list[int],
        emit: Emit,
    ) -> None:
        self.request = request
        self.fingerprint = fingerprint
        self.prompt_ids = prompt_ids
        self.params: SamplingParams = request.sampling
        self.max_tokens = max_tokens
        self.seeds = seeds
        self.emit = emit
        self.cancelled = False  # set on the event loop, acted on by the decode thread
        self.finished = False  # the consumer has every choice's end: closing it cancels nothing
        self.failed = False  # an error was sent: nothing more is
        self.remaining = len(seeds)  # choices still running (decode thread)

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def cells(self) -> int:
        """KV cells the job may fill at most: the shared prompt and every choice's tokens."""
        return len(self.prompt_ids) + len(self.seeds) * self.max_tokens

    def fail(self, error: CorralError) -> None:
        if not self.failed and not self.finished:
            self.failed = True
            self.emit(Failed(error))


class _Seq:
    """One choice of a running job, on one llama.cpp sequence id."""

    __slots__ = ("job", "index", "seq_id", "sampler", "detok", "stops", "pos", "fed", "generated", "next", "lead")

    def __init__(self, job: Job, index: int, seq_id: int, sampler: Sampler, decode: Decode, lead: bool) -> None:
        self.job = job
        self.index = index
        self.seq_id = seq_id
        self.sampler = sampler
        self.detok = IncrementalDetokenizer(decode)
        self.stops = StopMatcher(job.params.stop)
        self.pos = 0  # cells this sequence holds (the next token's position)
        self.fed = 0  # prompt tokens prefilled (the lead only)
        self.generated = 0  # tokens sampled, an end-of-generation one included
        self.next: int | None = None  # sampled, to be fed in the next batch
        self.lead = lead  # prefills the prompt; the others copy its cells

    def tail(self) -> str:
        """What is still held back once the sequence ends (not after a stop string)."""
        if self.stops.stopped:
            return ""
        text = self.stops.feed(self.detok.flush())
        return text if self.stops.stopped else text + self.stops.flush()


class Decoder:
    def __init__(
        self,
        make_context: Callable[[], Context],
        decode_text: Decode,
        eog: frozenset[int],
        max_queue: int,
        name: str,
    ) -> None:
        self._make_context = make_context
        self._decode_text = decode_text
        self._eog = eog
        self._eog_ids = np.fromiter(sorted(eog), dtype=np.intp, count=len(eog))
        self._max_queue = max_queue
        self._name = name
        self._ctx = make_context()
        self._lock = threading.Lock()
        self._waiting: collections.deque[Job] = collections.deque()
        self._free: list[int] = []
        self._running: list[_Seq] = []
        self._jobs: list[Job] = []  # jobs with running sequences, in admission order
        self._reserved = 0  # KV cells promised to running jobs (a unified buffer's budget)
        self._closed = False
        self._reset_ids()
        self.cancelled_total = 0
        self.completed_total = 0
        self.generated_total = 0
        self.decode_seconds = 0.0

    @property
    def n_ctx_seq(self) -> int:
        return self._ctx.n_ctx_seq

    @property
    def n_threads(self) -> int:
        return self._ctx.n_threads

    @property
    def max_sequences(self) -> int:
        return self._ctx.config.n_seq_max

    def in_flight(self) -> int:
        return len(self._jobs)

    def queued(self) -> int:
        return len(self._waiting)

    def running_jobs(self) -> list[Job]:
        return list(self._jobs)

    # -- the event loop's side ---------------------------------------------------------

    def submit(self, job: Job) -> None:
        """Queue ``job``; ``Overloaded`` when the queue is full, ``Unavailable`` once closed."""
        with self._lock:
            if self._closed:
                raise Unavailable(f"model {self._name!r} is not serving")
            # jobs the next step admits (the free sequence ids take them in order) do not count:
            # what is bounded is the jobs that will have to wait
            free = len(self._free)
            blocked = 0
            for queued in [*self._waiting, job]:
                if blocked or len(queued.seeds) > free:
                    blocked += 1
                else:
                    free -= len(queued.seeds)
            if blocked > self._max_queue:
                raise Overloaded(f"model {self._name!r} has {blocked - 1} requests waiting; retry shortly")
            self._waiting.append(job)

    def cancel(self, job: Job) -> None:
        """The consumer left: a waiting job is dropped now, a running one at the next step."""
        if job.finished or job.cancelled:
            return
        job.cancelled = True
        with self._lock:
            try:
                self._waiting.remove(job)
            except ValueError:
                return  # running: the decode thread counts it
            self.cancelled_total += 1

    def drain(self) -> list[Job]:
        """Take no more jobs (the engine gave up, or stops): the ones still waiting."""
        with self._lock:
            self._closed = True
            waiting, self._waiting = list(self._waiting), collections.deque()
        return waiting

    # -- the decode thread's side --------------------------------------------------------

    def step(self) -> bool:
        """One batch; False when there is nothing to do."""
        self._reap()
        self._admit()
        if not self._running:
            return False
        started = time.perf_counter()
        groups = self._build()
        if self._ctx.n_tokens == 0:  # cannot happen: every running sequence feeds a token or a prompt chunk
            raise RuntimeError("the decode batch is empty while sequences are running")
        self._ctx.decode()
        for index, seqs in groups:
            row = self._ctx.logits_row(index)
            lead = seqs[0]
            for sibling in seqs[1:]:  # the other choices share the prompt just prefilled
                self._ctx.copy(lead.seq_id, sibling.seq_id)
                sibling.pos = lead.pos
            for seq in seqs:
                self._accept(seq, seq.sampler.sample(row))
        self.decode_seconds += time.perf_counter() - started
        return True

    def abandon_running(self) -> list[Job]:
        """After a crash: forget the running sequences (their context is not touched: it
        is about to be replaced) and return their jobs."""
        jobs = [j for j in self._jobs if not j.finished]
        self._running, self._jobs, self._reserved = [], [], 0
        self._reset_ids()
        return jobs

    def reset_context(self) -> None:
        """A fresh context (empty KV cache) on the same weights."""
        old, self._ctx = self._ctx, None
        try:
            old.close()  # type: ignore[union-attr]
        except Exception:  # a broken context must not keep the engine from replacing it
            log.exception("closing the llama.cpp context of %s failed", self._name)
        self._ctx = self._make_context()
        self._running, self._jobs, self._reserved = [], [], 0
        self._reset_ids()

    def close(self) -> None:
        if self._ctx is not None:
            self._ctx.close()
            self._ctx = None  # type: ignore[assignment]

    def _reset_ids(self) -> None:
        self._free = list(range(self._ctx.config.n_seq_max - 1, -1, -1))  # pop() hands out 0 first

    def _reap(self) -> None:
        if not any(job.cancelled for job in self._jobs):
            return
        for seq in [s for s in self._running if s.job.cancelled]:
            self._release(seq)
        for job in [j for j in self._jobs if j.cancelled]:
            self._jobs.remove(job)
            self._reserved -= job.cells
            with self._lock:
                self.cancelled_total += 1

    def _admit(self) -> None:
        unified = self._ctx.config.kv_unified
        with self._lock:
            while self._waiting:
                job = self._waiting[0]
                if len(job.seeds) > len(self._free):
                    return
                if unified and self._reserved + job.cells > self._ctx.n_ctx and self._jobs:
                    return
                self._waiting.popleft()
                self._start(job)

    def _start(self, job: Job) -> None:
        banned = self._eog_ids if job.params.ignore_eos else None
        for index, seed in enumerate(job.seeds):
            sampler = Sampler(job.params, seed, banned, job.prompt_ids)
            seq = _Seq(job, index, self._free.pop(), sampler, self._decode_text, index == 0)
            self._running.append(seq)
        self._jobs.append(job)
        self._reserved += job.cells

    def _build(self) -> list[tuple[int, list[_Seq]]]:
        """Fill the batch; returns, per logits row to sample, the sequences sampling it."""
        ctx = self._ctx
        ctx.clear_batch()
        groups: list[tuple[int, list[_Seq]]] = []
        for seq in self._running:  # decoding sequences first: one token each
            if seq.next is not None:
                groups.append((ctx.add(seq.next, seq.pos, seq.seq_id, True), [seq]))
                seq.pos += 1
                seq.next = None
        for job in self._jobs:  # then prompt chunks, oldest job first
            lead = next((s for s in self._running if s.job is job and s.lead), None)
            prompt = job.prompt_ids
            if lead is None or lead.fed >= len(prompt):
                continue
            take = min(ctx.room, len(prompt) - lead.fed)
            if take <= 0:
                break
            for pos in range(lead.fed, lead.fed + take):
                last = pos == len(prompt) - 1
                index = ctx.add(prompt[pos], pos, lead.seq_id, last)
            lead.fed += take
            lead.pos = lead.fed
            if lead.fed == len(prompt):
                groups.append((index, [s for s in self._running if s.job is job]))
        return groups

    def _accept(self, seq: _Seq, token: int) -> None:
        job = seq.job
        self.generated_total += 1
        # the end-of-generation token counts as generated, as vLLM, TGI and llama.cpp's
        # server count it (it was computed); it is never part of the text
        seq.generated += 1
        if token in self._eog:  # never sampled under ignore_eos: the sampler bans them
            self._finish(seq, FinishReason.STOP, seq.tail())
            return
        text = seq.stops.feed(seq.detok.push(token))
        if seq.stops.stopped:
            self._finish(seq, FinishReason.STOP, text)
        elif seq.generated >= job.max_tokens:
            self._finish(seq, FinishReason.LENGTH, text + seq.tail())
        else:
            if text:
                job.emit(Out(seq.index, text))
            seq.next = token

    def _finish(self, seq: _Seq, reason: FinishReason, text: str) -> None:
        job = seq.job
        job.emit(Out(seq.index, text, reason, seq.generated, seq.stops.matched if reason is FinishReason.STOP else None))
        self._release(seq)
        job.remaining -= 1
        if job.remaining == 0:
            self._jobs.remove(job)
            self._reserved -= job.cells
            with self._lock:
                self.completed_total += 1

    def _release(self, seq: _Seq) -> None:
        self._ctx.remove(seq.seq_id)
        self._running.remove(seq)
        self._free.append(seq.seq_id)
