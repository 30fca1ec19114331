"""Raw samples of a load run, and their summary: percentiles, rates, errors.

``Samples`` is what the load generator fills on its hot path (flat ``array('d')``
buffers and counters: appending a float is the cheapest thing Python can do per request);
``summarize`` turns one or several of them (one per generator process) into a
``Summary``, a plain JSON-ready mapping. Standard library only.
"""

from __future__ import annotations

import math
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


def percentile(values: Any, q: float) -> float | None:
    """The ``q``-th percentile (0..100) of ``values``, linearly interpolated between the
    two nearest ranks (numpy's default); ``None`` for no values.

    ``values`` may be any sized iterable of numbers, sorted or not.
    """
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is not within 0..100")
    ordered = sorted(values)
    if not ordered:
        return None
    return _ranked(ordered, q)


def _ranked(ordered: list[float], q: float) -> float:
    pos = (len(ordered) - 1) * q / 100
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    frac = pos - low
    return ordered[low] + (ordered[high] - ordered[low]) * frac


def distribution(values: Any, scale: float = 1.0) -> dict[str, float | int | None]:
    """``count``, ``mean``, ``p50``, ``p90``, ``p99``, ``max`` of ``values`` times ``scale``
    (e.g. 1000 for seconds to milliseconds); the statistics are ``None`` for no values."""
    ordered = sorted(values)
    if not ordered:
        return {"count": 0, "mean": None, "p50": None, "p90": None, "p99": None, "max": None}
    return {
        "count": len(ordered),
        "mean": sum(ordered) / len(ordered) * scale,
        "p50": _ranked(ordered, 50) * scale,
        "p90": _ranked(ordered, 90) * scale,
        "p99": _ranked(ordered, 99) * scale,
        "max": ordered[-1] * scale,
    }


@dataclass
class Samples:
    """What one generator process measured. Times are seconds.

    ``latency`` has one entry per successful request; ``ttft`` one per successful
    streamed request that produced text; ``itl`` every gap between two successive text
    events of streamed requests. ``errors`` counts failures by kind: an HTTP status
    (``"503"``) or a transport failure (``"connection refused"``, ``"closed"``, ``"timeout"``...);
    ``error_examples`` keeps the first answer (or failure) of each kind, cut short.
    """

    latency: array = field(default_factory=lambda: array("d"))  # type: ignore[type-arg]
    ttft: array = field(default_factory=lambda: array("d"))  # type: ignore[type-arg]
    itl: array = field(default_factory=lambda: array("d"))  # type: ignore[type-arg]
    errors: Counter[str] = field(default_factory=Counter)
    error_examples: dict[str, str] = field(default_factory=dict)  # the first answer of each kind of error
    ok: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0
    elapsed_s: float = 0.0  # from the first request sent to the last answer received

    def merge(self, other: Samples) -> None:
        """Add ``other``'s samples (another process of the same run: elapsed is the longest)."""
        self.latency.extend(other.latency)
        self.ttft.extend(other.ttft)
        self.itl.extend(other.itl)
        self.errors.update(other.errors)
        for kind, example in other.error_examples.items():
            self.error_examples.setdefault(kind, example)
        self.ok += other.ok
        self.prompt_tokens += other.prompt_tokens
        self.output_tokens += other.output_tokens
        self.elapsed_s = max(self.elapsed_s, other.elapsed_s)

    @property
    def failed(self) -> int:
        return sum(self.errors.values())


def summarize(samples: Samples, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON-ready summary of a run: counts, rates, latency/TTFT/ITL distributions in
    milliseconds, errors by kind, and ``config`` as given."""
    elapsed = samples.elapsed_s
    rate = (lambda n: n / elapsed) if elapsed > 0 else (lambda n: 0.0)
    return {
        "config": dict(config or {}),
        "requests": samples.ok + samples.failed,
        "ok": samples.ok,
        "failed": samples.failed,
        "errors": dict(sorted(samples.errors.items(), key=lambda kv: (-kv[1], kv[0]))),
        "error_examples": dict(sorted(samples.error_examples.items())),
        "elapsed_s": elapsed,
        "requests_per_s": rate(samples.ok),
        "prompt_tokens": samples.prompt_tokens,
        "output_tokens": samples.output_tokens,
        "output_tokens_per_s": rate(samples.output_tokens),
        "latency_ms": distribution(samples.latency, 1000.0),
        "ttft_ms": distribution(samples.ttft, 1000.0),
        "itl_ms": distribution(samples.itl, 1000.0),
    }
