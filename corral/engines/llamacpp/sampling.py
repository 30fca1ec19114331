"""Per-sequence sampling on one row of llama.cpp's logits, in numpy.

Every running sequence has its own ``Sampler``: its temperature, top_k, top_p, penalties
and a numpy ``Generator`` seeded from the request, so what a sequence samples depends
only on its own logits and seed, never on which other sequences share the batch.

The request's parameters only (no min_p, and no repeat penalty unless asked, which
llama.cpp's own sampler chain would add by default), in this order:

- the repetition penalty (CTRL's, as llama.cpp, transformers and vLLM apply it): the
  logit of every token already *seen* is divided by ``repetition_penalty`` when
  positive and multiplied by it when negative. Seen means the whole prompt and every
  token this sequence generated, as transformers' and vLLM's penalty count them
  (llama.cpp's server looks only at the last ``repeat_last_n`` = 64 tokens);
- presence/frequency penalties count the tokens this sequence generated (not the
  prompt), as OpenAI describes them: ``logit -= frequency * count + presence * (count > 0)``;
- temperature 0 is greedy (argmax, ties to the lowest id); otherwise only the ``top_k``
  most likely tokens stay candidates (0: all), then softmax of ``logits / temperature``
  over them, then nucleus filtering (the smallest set of most likely tokens whose mass
  reaches ``top_p``), then one draw;
- banned tokens (the end-of-generation tokens under ``ignore_eos``) are never chosen.

Requests that ask for none of the penalties, top_k or bans take the fast path: the
logits row is read in place, never copied.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from corral.core.types import SamplingParams

Logits = npt.NDArray[np.float32]

_NUCLEUS_GUESS = 256  # most nuclei fit in the top 256 tokens: partial sort first, full sort if not


class _Seen:
    """The distinct token ids of a sequence so far (prompt and generated), in a growing
    array the penalty indexes with, and a set to keep them distinct."""

    __slots__ = ("ids", "n", "_members")

    def __init__(self, prompt_ids: Sequence[int]) -> None:
        unique = np.unique(np.asarray(prompt_ids, dtype=np.intp))
        self.ids = np.empty(unique.size + 64, dtype=np.intp)
        self.ids[: unique.size] = unique
        self.n = int(unique.size)
        self._members = set(unique.tolist())

    def add(self, token: int) -> None:
        if token in self._members:
            return
        self._members.add(token)
        if self.n == self.ids.size:
            self.ids = np.concatenate([self.ids, np.empty(self.ids.size, dtype=np.intp)])
        self.ids[self.n] = token
        self.n += 1


class Sampler:
    __slots__ = ("_temperature", "_top_p", "_top_k", "_presence", "_frequency", "_repetition", "_rng", "_counts",
                 "_banned", "_seen")

    def __init__(
        self,
        params: SamplingParams,
        seed: int,
        banned: npt.NDArray[np.intp] | None = None,
        prompt_ids: Sequence[int] = (),
    ) -> None:
        self._temperature = params.temperature
        self._top_p = params.top_p
        self._top_k = params.top_k
        self._presence = params.presence_penalty
        self._frequency = params.frequency_penalty
        self._repetition = params.repetition_penalty
        self._rng = np.random.Generator(np.random.PCG64(seed))
        self._counts: dict[int, int] = {}
        self._banned = banned if banned is not None and banned.size else None
        self._seen = _Seen(prompt_ids) if self._repetition != 1.0 else None

    def sample(self, logits: Logits) -> int:
        """One token from ``logits`` (left unchanged: it may be llama.cpp's own buffer)."""
        x = self._adjusted(logits)
        if self._temperature <= 0.0:
            token = int(np.argmax(x))
        else:
            token = self._draw(x)
        self._counts[token] = self._counts.get(token, 0) + 1
        if self._seen is not None:
            self._seen.add(token)
        return token

    def _adjusted(self, logits: Logits) -> Logits:
        penalised = self._counts and (self._presence or self._frequency)
        repeated = self._seen is not None and self._seen.n > 0
        if not penalised and not repeated and self._banned is None:
            return logits
        x = np.array(logits, dtype=np.float32, copy=True)
        if repeated:
            assert self._seen is not None
            ids = self._seen.ids[: self._seen.n]
            v = x[ids]
            x[ids] = np.where(v > 0, v / self._repetition, v * self._repetition)
        if penalised:
            ids = np.fromiter(self._counts.keys(), dtype=np.intp, count=len(self._counts))
            counts = np.fromiter(self._counts.values(), dtype=np.float32, count=len(self._counts))
            x[ids] -= self._frequency * counts + self._presence
        if self._banned is not None:
            x[self._banned] = -np.inf
        return x

    def _draw(self, x: Logits) -> int:
        k = self._top_k
        if 0 < k < x.size:
            # the k largest logits (in no order): temperature and softmax only over them
            candidates: npt.NDArray[np.intp] | None = np.argpartition(-x, k - 1)[:k]
            x = x[candidates]
        else:
            candidates = None
        z = x.astype(np.float64) / self._temperature
        z -= z.max()
        p = np.exp(z)
        p /= p.sum()
        if self._top_p < 1.0:
            ids = self._nucleus(p)
            probs = p[ids]
        else:
            ids, probs = None, p
        cdf = np.cumsum(probs)
        pick = int(np.searchsorted(cdf, self._rng.random() * cdf[-1], side="right"))
        pick = min(pick, len(cdf) - 1)  # rounding at the very top of the cdf
        if ids is not None:
            pick = int(ids[pick])
        return pick if candidates is None else int(candidates[pick])

    def _nucleus(self, p: npt.NDArray[np.float64]) -> npt.NDArray[np.intp]:
        """Ids of the most likely tokens, most likely first, up to and including the one
        that brings their mass to ``top_p``."""
        k = min(_NUCLEUS_GUESS, p.size)
        if k < p.size:
            top = np.argpartition(-p, k - 1)[:k]
            order = top[np.argsort(-p[top], kind="stable")]
            if p[order].sum() < self._top_p:
                order = np.argsort(-p, kind="stable")
        else:
            order = np.argsort(-p, kind="stable")
        cut = int(np.searchsorted(np.cumsum(p[order]), self._top_p, side="left")) + 1
        return order[: min(cut, order.size)]
