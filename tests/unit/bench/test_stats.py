"""Percentiles, distributions and run summaries of ``corral.bench.stats``."""

from __future__ import annotations

from array import array

import pytest

from corral.bench.stats import Samples, distribution, percentile, summarize


def test_percentile_interpolates_between_ranks_like_numpy() -> None:
    values = [15, 20, 35, 40, 50]
    assert percentile(values, 0) == 15
    assert percentile(values, 100) == 50
    assert percentile(values, 50) == 35
    assert percentile(values, 40) == pytest.approx(29.0)  # numpy.percentile(values, 40)
    assert percentile(values, 99) == pytest.approx(49.6)
    assert percentile(reversed(values), 50) == 35  # order does not matter


def test_percentile_edge_cases() -> None:
    assert percentile([], 50) is None
    assert percentile([7.5], 99) == 7.5
    with pytest.raises(ValueError):
        percentile([1], 101)


def test_distribution_scales_and_handles_empty() -> None:
    d = distribution(array("d", [0.001, 0.002, 0.003, 0.004]), 1000)
    assert d["count"] == 4
    assert d["mean"] == pytest.approx(2.5)
    assert d["p50"] == pytest.approx(2.5)
    assert d["max"] == pytest.approx(4.0)
    assert distribution([]) == {"count": 0, "mean": None, "p50": None, "p90": None, "p99": None, "max": None}


def test_merge_adds_counts_and_keeps_longest_elapsed() -> None:
    a, b = Samples(), Samples()
    a.latency.extend([0.1, 0.2])
    a.ok, a.output_tokens, a.elapsed_s = 2, 32, 1.0
    a.errors["503"] += 1
    b.latency.append(0.3)
    b.itl.extend([0.01, 0.02])
    b.ok, b.output_tokens, b.elapsed_s = 1, 16, 1.5
    b.errors["503"] += 2
    b.errors["connection refused"] += 1
    a.merge(b)
    assert list(a.latency) == [0.1, 0.2, 0.3] and list(a.itl) == [0.01, 0.02]
    assert a.ok == 3 and a.output_tokens == 48 and a.elapsed_s == 1.5
    assert a.failed == 4 and a.errors == {"503": 3, "connection refused": 1}


def test_summarize_rates_and_errors_sorted_by_count() -> None:
    s = Samples()
    s.latency.extend([0.010, 0.020, 0.030, 0.040])
    s.ttft.extend([0.005] * 4)
    s.ok, s.output_tokens, s.prompt_tokens, s.elapsed_s = 4, 400, 40, 2.0
    s.errors.update({"timeout": 1, "503": 3})
    out = summarize(s, {"concurrency": 4})
    assert out["config"] == {"concurrency": 4}
    assert out["requests"] == 8 and out["ok"] == 4 and out["failed"] == 4
    assert list(out["errors"]) == ["503", "timeout"]
    assert out["requests_per_s"] == 2.0 and out["output_tokens_per_s"] == 200.0
    assert out["latency_ms"]["p50"] == pytest.approx(25.0)
    assert out["ttft_ms"]["p99"] == pytest.approx(5.0)
    assert out["itl_ms"]["count"] == 0


def test_summarize_zero_elapsed_gives_zero_rates() -> None:
    out = summarize(Samples())
    assert out["requests_per_s"] == 0.0 and out["requests"] == 0
