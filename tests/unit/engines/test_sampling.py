"""The two samplers Corral runs itself (llama.cpp's per-sequence numpy ``Sampler`` and the
transformers batcher's ``sample_row``), checked on the distributions they draw from:
top_k keeps exactly the k most likely tokens, the repetition penalty moves the argmax
the way CTRL's penalty does, over the prompt and the generated tokens alike."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np
import pytest
import torch

from corral.core.types import SamplingParams
from corral.engines.llamacpp.sampling import Sampler
from corral.engines.transformers.batcher import sample_row

# one sequence's sampler: logits row -> token, keeping its own history
Draw = Callable[[np.ndarray], int]
MakeDraw = Callable[[SamplingParams, Sequence[int], int], Draw]


def llamacpp(params: SamplingParams, prompt_ids: Sequence[int], seed: int) -> Draw:
    sampler = Sampler(params, seed, prompt_ids=prompt_ids)
    return lambda logits: sampler.sample(logits.astype(np.float32))


def transformers(params: SamplingParams, prompt_ids: Sequence[int], seed: int) -> Draw:
    generator = torch.Generator().manual_seed(seed)
    out: list[int] = []

    def draw(logits: np.ndarray) -> int:
        token = sample_row(torch.from_numpy(logits.astype(np.float32)), params, list(prompt_ids), out, [], generator)
        out.append(token)
        return token

    return draw


SAMPLERS = pytest.mark.parametrize("make", [llamacpp, transformers], ids=["llamacpp", "transformers"])


def logits_row(size: int = 200, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(scale=2.0, size=size).astype(np.float32)


@SAMPLERS
def test_top_k_1_is_greedy(make: MakeDraw) -> None:
    logits = logits_row()
    draw = make(SamplingParams(temperature=1.5, top_k=1), (), 3)
    assert {draw(logits) for _ in range(200)} == {int(np.argmax(logits))}


@SAMPLERS
def test_top_k_never_samples_outside_the_top_k_and_follows_their_softmax(make: MakeDraw) -> None:
    logits = logits_row(seed=1)
    k, draws = 5, 4000
    top = np.argsort(-logits)[:k]
    draw = make(SamplingParams(temperature=1.0, top_k=k), (), 11)
    counts = Counter(draw(logits) for _ in range(draws))
    assert set(counts) == set(top.tolist())  # only the top k, and each of them drawn
    expected = np.exp(logits[top] - logits[top].max())
    expected /= expected.sum()
    for token, p in zip(top.tolist(), expected):
        # within 5 standard deviations of a binomial: fails on a wrong distribution, not on noise
        assert abs(counts[token] - draws * p) <= 5 * np.sqrt(draws * p * (1 - p)) + 1, (token, counts[token], draws * p)


@SAMPLERS
def test_top_k_then_top_p(make: MakeDraw) -> None:
    logits = logits_row(seed=2)
    draw = make(SamplingParams(temperature=1.0, top_k=50, top_p=1e-9), (), 5)
    assert {draw(logits) for _ in range(50)} == {int(np.argmax(logits))}  # the nucleus is the top token


@SAMPLERS
def test_top_k_beyond_the_vocabulary_is_no_filter(make: MakeDraw) -> None:
    logits = np.zeros(4, dtype=np.float32)
    draw = make(SamplingParams(temperature=1.0, top_k=10), (), 5)
    assert {draw(logits) for _ in range(200)} == {0, 1, 2, 3}


@SAMPLERS
def test_repetition_penalty_on_a_prompt_token_moves_the_argmax(make: MakeDraw) -> None:
    logits = np.array([0.0, 2.0, 1.5, -3.0], dtype=np.float32)
    assert make(SamplingParams(temperature=0.0), (1, 3), 0)(logits) == 1  # off: the argmax
    # 2.0 / 1.5 = 1.33 < 1.5: token 1, seen in the prompt, loses to token 2
    assert make(SamplingParams(temperature=0.0, repetition_penalty=1.5), (1, 3), 0)(logits) == 2
    # a penalty below 1 favours seen tokens: 1.5 / 0.5 = 3.0 beats 2.0
    assert make(SamplingParams(temperature=0.0, repetition_penalty=0.5), (2,), 0)(logits) == 2


@SAMPLERS
def test_repetition_penalty_multiplies_negative_logits(make: MakeDraw) -> None:
    logits = np.array([-1.0, -0.1, -0.12, -5.0], dtype=np.float32)
    # -0.1 * 1.5 = -0.15 < -0.12: dividing a negative logit would have raised it instead
    assert make(SamplingParams(temperature=0.0, repetition_penalty=1.5), (1,), 0)(logits) == 2


@SAMPLERS
def test_repetition_penalty_counts_generated_tokens(make: MakeDraw) -> None:
    logits = np.array([0.0, 2.0, 1.5, 1.2], dtype=np.float32)
    draw = make(SamplingParams(temperature=0.0, repetition_penalty=2.0), (), 0)
    # 1 (2.0), then 2 (1.5 > 2.0/2), then 3 (1.2 > 1.0, 0.75), then 1 again (1.0 > 0.75, 0.6, 0.0)
    assert [draw(logits) for _ in range(4)] == [1, 2, 3, 1]


@SAMPLERS
def test_repetition_penalty_is_applied_once_per_token_however_often_seen(make: MakeDraw) -> None:
    logits = np.array([0.0, 2.0, 1.5], dtype=np.float32)
    # token 1 seen three times: 2.0 / 1.2 = 1.67 still beats 1.5 (not 2.0 / 1.2^3 = 1.16)
    assert make(SamplingParams(temperature=0.0, repetition_penalty=1.2), (1, 1, 1), 0)(logits) == 1


@SAMPLERS
def test_the_logits_row_is_never_written(make: MakeDraw) -> None:
    logits = logits_row(seed=4)
    before = logits.copy()
    draw = make(SamplingParams(temperature=0.8, top_k=7, repetition_penalty=1.3, frequency_penalty=0.5), (1, 2, 3), 9)
    for _ in range(20):
        draw(logits)
    assert np.array_equal(logits, before)


def test_llamacpp_sampler_takes_no_copy_without_penalties_or_bans() -> None:
    """The fast path: a plain request reads llama.cpp's buffer in place (top_k included)."""
    logits = logits_row(seed=5)
    plain = Sampler(SamplingParams(temperature=1.0, top_k=40), 1, prompt_ids=(1, 2, 3))
    assert plain._adjusted(logits) is logits
    penalised = Sampler(SamplingParams(temperature=1.0, repetition_penalty=1.1), 1, prompt_ids=(1, 2, 3))
    assert penalised._adjusted(logits) is not logits


def test_llamacpp_seen_tokens_grow_past_their_first_allocation() -> None:
    vocab = 1000
    logits = np.zeros(vocab, dtype=np.float32)
    logits[:] = np.linspace(1.0, 2.0, vocab, dtype=np.float32)
    draw = Sampler(SamplingParams(temperature=0.0, repetition_penalty=100.0), 0)
    # every token, once penalised, falls below the unpenalised ones: 300 distinct tokens in a row
    seen = [draw.sample(logits) for _ in range(300)]
    assert len(set(seen)) == 300 and seen[:3] == [vocab - 1, vocab - 2, vocab - 3]
