"""A continuous batcher for causal LMs on top of a plain transformers model.

Why not transformers' own ``ContinuousBatchingManager``: its sampling settings are
global to the manager (one temperature/do_sample for all requests) and it has no
per-request seed, while the OpenAI API lets every request choose temperature, top_p,
seed, top_k and penalties. This batcher keeps that per-row, and is small enough to read:

- requests wait in a queue; each step admits waiting sequences up to ``max_batch_size``
  (prefilled together, left-padded), merges their KV cache into the running batch, and
  decodes one token for every running sequence in a single forward pass;
- finished and cancelled sequences leave the batch at the next step, so a
  disconnected client frees its slot at once;
- all torch work happens on this object's one thread (``WorkerThread``); results go back
  through each sequence's ``emit`` callback;
- it survives any sequence it is handed: one it cannot run (no tokens, a token id
  outside the model's vocabulary) is finished with an error instead of reaching the
  model. When a step raises anyway, ``reset`` drops the batch (its KV cache, masks) and
  returns the sequences that were in it, so the engine can fail just those and run
  the loop again on the same weights; waiting sequences stay queued.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from corral.core.errors import CorralError, InvalidRequest
from corral.core.types import FinishReason, SamplingParams
from corral.engines.textstream import IncrementalDetokenizer, StopMatcher

log = logging.getLogger(__name__)

# Below this temperature sampling is greedy: dividing logits by a tiny temperature
# overflows to inf, and the softmax of inf is NaN, which torch.multinomial refuses.
MIN_TEMPERATURE = 1e-5


@dataclass(frozen=True)
class StepOutput:
    """What one sequence produced in one step, sent to its request."""

    index: int
    text: str
    completion_tokens: int  # generated so far, this one included
    finish_reason: FinishReason | None = None
    error: CorralError | None = None  # with FinishReason.ERROR: what the request is told
    stop_sequence: str | None = None  # the stop string that ended it


@dataclass(eq=False)
class Sequence:
    key: str  # unique per sequence: request id + choice index
    index: int  # the choice index within its request
    prompt_ids: list[int]
    params: SamplingParams
    max_new_tokens: int
    emit: Callable[[StepOutput], None]
    detok: IncrementalDetokenizer
    stops: StopMatcher
    generator: torch.Generator
    request_id: str  # for logs: which requests were in a batch that crashed
    fingerprint: str  # ``corral.engines.supervise.fingerprint`` of its request
    out_ids: list[int] = field(default_factory=list)
    done: bool = False


class ContinuousBatcher:
    def __init__(self, model: Any, eos_ids: set[int], max_batch_size: int) -> None:
        self._model = model
        self._eos = eos_ids
        self._max_batch = max_batch_size
        self._vocab = int(model.get_input_embeddings().num_embeddings)
        self._lock = threading.Lock()
        self._waiting: collections.deque[Sequence] = collections.deque()
        self._cancelled: set[str] = set()
        self._running: list[Sequence] = []
        self._admitting: list[Sequence] = []  # taken from the queue in this step, not yet running
        self._closed = False
        self._cache: Any = None  # transformers DynamicCache of the running batch
        self._mask: torch.Tensor | None = None  # [B, T] attention mask of the running batch
        self._positions: torch.Tensor | None = None  # [B] next position id of each row
        self._last: torch.Tensor | None = None  # [B] last sampled token of each row
        self.cancelled_total = 0
        self.completed_total = 0

    # -- called from any thread -------------------------------------------------------

    def submit(self, seqs: list[Sequence]) -> bool:
        """Queue sequences; False once ``close`` was called (nothing would run them)."""
        with self._lock:
            if self._closed:
                return False
            self._waiting.extend(seqs)
        return True

    def cancel(self, keys: list[str]) -> None:
        with self._lock:
            self._cancelled.update(keys)

    def counts(self) -> tuple[int, int]:
        """(running, waiting) sequences; racy by design, for load reporting."""
        return len(self._running), len(self._waiting)

    def close(self) -> list[Sequence]:
        """Take no more sequences (the engine gave up, or stops): the ones still waiting."""
        with self._lock:
            self._closed = True
            waiting, self._waiting = list(self._waiting), collections.deque()
        return waiting

    # -- the engine thread ----------------------------------------------------------

    def reset(self) -> list[Sequence]:
        """A step raised: drop the running batch and its KV cache; the unfinished
        sequences that were in it (marked done), for the engine to fail. The queue stays.
        On the engine thread (or once it has stopped)."""
        seen: set[int] = set()
        victims = []
        for seq in [*self._running, *self._admitting]:
            if id(seq) not in seen and not seq.done:
                seen.add(id(seq))
                seq.done = True
                victims.append(seq)
        self._running, self._admitting = [], []
        self._cache, self._mask, self._positions, self._last = None, None, None, None
        return victims

    @torch.inference_mode()
    def step(self) -> bool:
        self._drop_cancelled()
        self._drop_finished()
        admitted = self._admitting = []
        with self._lock:
            while self._waiting and len(self._running) + len(admitted) < self._max_batch:
                seq = self._waiting.popleft()
                if self._runnable(seq):
                    admitted.append(seq)
        if admitted:
            self._prefill(admitted)
        self._admitting = []
        if not self._running:
            return bool(self._waiting)
        if not admitted:
            self._decode()
        self._drop_finished()
        return True

    def _runnable(self, seq: Sequence) -> bool:
        """False (and the sequence finished with an error) for one the model cannot run:
        the engine refuses these before submitting, this keeps the loop alive if not."""
        if not seq.prompt_ids:
            problem = "the prompt has no tokens"
        elif min(seq.prompt_ids) < 0 or max(seq.prompt_ids) >= self._vocab:
            problem = f"the prompt has token ids outside the model's vocabulary of {self._vocab}"
        else:
            return True
        seq.done = True
        seq.emit(StepOutput(seq.index, "", 0, FinishReason.ERROR, InvalidRequest(problem, param="prompt")))
        return False

    def _prefill(self, seqs: list[Sequence]) -> None:
        lengths = [len(s.prompt_ids) for s in seqs]
        width = max(lengths)
        ids = torch.zeros((len(seqs), width), dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, seq in enumerate(seqs):
            ids[row, width - len(seq.prompt_ids) :] = torch.tensor(seq.prompt_ids)
            mask[row, width - len(seq.prompt_ids) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self._model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        tokens = self._sample(seqs, out.logits[:, -1, :])
        self._merge(seqs, out.cache, mask, torch.tensor(lengths), tokens)
        self._accept(seqs, tokens)

    def _decode(self) -> None:
        assert self._mask is not None and self._positions is not None and self._last is not None
        ones = torch.ones((self._mask.shape[0], 1), dtype=self._mask.dtype)
        self._mask = torch.cat([self._mask, ones], dim=1)
        out = self._model(
            input_ids=self._last.unsqueeze(1),
            attention_mask=self._mask,
            position_ids=self._positions.unsqueeze(1),
            cache=self._cache,
            use_cache=True,
        )
        self._cache = out.cache
        self._positions = self._positions + 1
        tokens = self._sample(self._running, out.logits[:, -1, :])
        self._last = tokens
        self._accept(self._running, tokens)

    def _merge(self, seqs: list[Sequence], cache: Any, mask: torch.Tensor, lengths: torch.Tensor, last: torch.Tensor) -> None:
        """Append prefilled rows to the running batch, left-padding the shorter side."""
        if not self._running:
            self._running, self._cache, self._mask, self._positions, self._last = list(seqs), cache, mask, lengths, last
            return
        assert self._mask is not None and self._positions is not None and self._last is not None
        old_t, new_t = self._mask.shape[1], mask.shape[1]
        width = max(old_t, new_t)
        for old_layer, new_layer in zip(self._cache.layers, cache.layers):
            old_layer.keys = torch.cat([_pad_left(old_layer.keys, width), _pad_left(new_layer.keys, width)], dim=0)
            old_layer.values = torch.cat([_pad_left(old_layer.values, width), _pad_left(new_layer.values, width)], dim=0)
        self._mask = torch.cat([_pad_left(self._mask, width), _pad_left(mask, width)], dim=0)
        self._positions = torch.cat([self._positions, lengths])
        self._last = torch.cat([self._last, last])
        self._running.extend(seqs)

    def _sample(self, seqs: list[Sequence], logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        tokens = torch.empty(len(seqs), dtype=torch.long)
        greedy = logits.argmax(dim=-1)
        eos = sorted(self._eos)
        for row, seq in enumerate(seqs):
            p = seq.params
            if _plain_greedy(p, seq.out_ids):
                tokens[row] = greedy[row]  # the batch's argmax: no per-row work
                continue
            tokens[row] = sample_row(logits[row], p, seq.prompt_ids, seq.out_ids, eos, seq.generator)
        return tokens

    def _accept(self, seqs: list[Sequence], tokens: torch.Tensor) -> None:
        for seq, token in zip(seqs, tokens.tolist()):
            if seq.done:
                continue
            seq.out_ids.append(token)
            finish: FinishReason | None = None
            text = ""
            if token in self._eos and not seq.params.ignore_eos:
                finish = FinishReason.STOP
            else:
                text = seq.stops.feed(seq.detok.push(token))
                if seq.stops.stopped:
                    finish = FinishReason.STOP
                elif len(seq.out_ids) >= seq.max_new_tokens:
                    finish = FinishReason.LENGTH
            if finish is not None:
                if not seq.stops.stopped:
                    text += seq.stops.feed(seq.detok.flush())
                if not seq.stops.stopped:
                    text += seq.stops.flush()
                seq.done = True
                self.completed_total += 1
                matched = seq.stops.matched if finish is FinishReason.STOP else None
                seq.emit(StepOutput(seq.index, text, len(seq.out_ids), finish, stop_sequence=matched))
            elif text:
                seq.emit(StepOutput(seq.index, text, len(seq.out_ids)))

    def _drop_cancelled(self) -> None:
        with self._lock:
            if not self._cancelled:
                return
            cancelled, self._cancelled = self._cancelled, set()
            before = len(self._waiting)
            self._waiting = collections.deque(s for s in self._waiting if s.key not in cancelled)
            self.cancelled_total += before - len(self._waiting)
        for seq in self._running:
            if seq.key in cancelled and not seq.done:
                seq.done = True
                self.cancelled_total += 1

    def _drop_finished(self) -> None:
        keep = [i for i, s in enumerate(self._running) if not s.done]
        if len(keep) == len(self._running):
            return
        if not keep:
            self._running, self._cache, self._mask, self._positions, self._last = [], None, None, None, None
            return
        idx = torch.tensor(keep)
        self._running = [self._running[i] for i in keep]
        assert self._mask is not None and self._positions is not None and self._last is not None
        mask = self._mask.index_select(0, idx)
        # columns that are padding for every remaining row are dead weight in every step
        first = int((mask.sum(0) > 0).nonzero()[0])
        self._mask = mask[:, first:]
        for layer in self._cache.layers:
            layer.keys = layer.keys.index_select(0, idx)[:, :, first:, :]
            layer.values = layer.values.index_select(0, idx)[:, :, first:, :]
        self._positions = self._positions.index_select(0, idx)
        self._last = self._last.index_select(0, idx)


def _plain_greedy(p: SamplingParams, out_ids: list[int]) -> bool:
    """Greedy, and nothing changes the logits (presence/frequency penalties count only
    generated tokens: none yet at the first step): the token is the row's argmax."""
    penalties = bool((p.presence_penalty or p.frequency_penalty) and out_ids)
    return p.temperature < MIN_TEMPERATURE and not penalties and p.repetition_penalty == 1.0 and not p.ignore_eos


def sample_row(
    logits: torch.Tensor,
    p: SamplingParams,
    prompt_ids: list[int],
    out_ids: list[int],
    eos: list[int],
    generator: torch.Generator,
) -> int:
    """One token for one sequence from its logits row (left unchanged), in this order:

    - repetition penalty (CTRL's, as transformers' ``RepetitionPenaltyLogitsProcessor``
      and vLLM apply it): the logit of every token already *seen* (the whole prompt and
      every generated token) is divided by ``repetition_penalty`` when positive and
      multiplied by it when negative;
    - presence/frequency penalties over the generated tokens only (OpenAI's definition);
    - end-of-generation tokens banned under ``ignore_eos``;
    - temperature 0: argmax; otherwise the ``top_k`` largest logits stay candidates (0:
      all), softmax of ``logits / temperature``, nucleus filtering at ``top_p``, one draw
      from the sequence's own generator.
    """
    x = logits
    if p.repetition_penalty != 1.0:
        seen = torch.tensor(prompt_ids + out_ids, dtype=torch.long)
        if seen.numel():
            v = x[seen]
            x = x.clone()
            x[seen] = torch.where(v > 0, v / p.repetition_penalty, v * p.repetition_penalty)
    if (p.presence_penalty or p.frequency_penalty) and out_ids:
        counts = torch.bincount(torch.tensor(out_ids), minlength=x.shape[0]).float()
        x = x - p.frequency_penalty * counts - p.presence_penalty * (counts > 0).float()
    if p.ignore_eos:
        x = x.clone()
        x[eos] = float("-inf")
    if p.temperature < MIN_TEMPERATURE:
        return int(x.argmax())
    if 0 < p.top_k < x.shape[0]:
        values, ids = torch.topk(x, p.top_k)
        x = torch.full_like(x, float("-inf")).scatter_(0, ids, values)
    probs = torch.softmax(x / p.temperature, dim=-1)
    if p.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        drop = sorted_probs.cumsum(-1) - sorted_probs > p.top_p
        sorted_probs[drop] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


def _pad_left(t: torch.Tensor, width: int) -> torch.Tensor:
    """Left-pad the sequence axis (dim 1 of a mask, dim 2 of a KV tensor) with zeros."""
    axis = 1 if t.dim() == 2 else 2
    missing = width - t.shape[axis]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[axis] = missing
    return torch.cat([torch.zeros(shape, dtype=t.dtype), t], dim=axis)
