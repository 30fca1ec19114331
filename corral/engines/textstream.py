"""Engine-agnostic text assembly for token-by-token generation: incremental
detokenisation (never emitting half a UTF-8 character) and stop-string handling
(never emitting text that may turn out to be the start of a stop string).

Streaming and non-streaming results are built by the same object, so the concatenated
deltas always equal the non-streamed text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

Decode = Callable[[Sequence[int]], str]


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas.

    Decoding a window that starts a few tokens back keeps merges across token
    boundaries right (byte-level BPE, sentencepiece spaces); a delta ending in U+FFFD is
    held back until the rest of its character arrives.
    """

    __slots__ = ("_decode", "_ids", "_prefix", "_read")

    def __init__(self, decode: Decode) -> None:
        self._decode = decode
        self._ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        new_text = self._decode(self._ids[self._prefix :])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            self._prefix = self._read
            self._read = len(self._ids)
            return new_text[len(prefix_text) :]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character at the very end)."""
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        new_text = self._decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return new_text[len(prefix_text) :]


class StopMatcher:
    """Accumulates generated text and releases only what can no longer be a stop string."""

    __slots__ = ("_stops", "_text", "_released", "stopped", "matched")

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._text = ""
        self._released = 0
        self.stopped = False
        self.matched: str | None = None  # the stop string that matched (Anthropic reports it)

    def feed(self, delta: str) -> str:
        """Add ``delta``; return the text now safe to emit. Sets ``stopped`` on a match;
        after that nothing more is released."""
        if self.stopped:
            return ""
        if not self._stops:
            return delta
        start = max(0, len(self._text) - max(len(s) for s in self._stops) + 1)
        self._text += delta
        hit = -1
        for stop in self._stops:
            pos = self._text.find(stop, start)
            if pos != -1 and (hit == -1 or pos < hit):
                hit, self.matched = pos, stop
        if hit != -1:
            self.stopped = True
            out = self._text[self._released : hit]
            self._released = hit
            return out
        safe = len(self._text) - self._held_back()
        out = self._text[self._released : safe]
        self._released = max(self._released, safe)
        return out

    def flush(self) -> str:
        """At the end of generation nothing can complete a stop string any more."""
        if self.stopped:
            return ""
        out = self._text[self._released :]
        self._released = len(self._text)
        return out

    def _held_back(self) -> int:
        longest = 0
        for stop in self._stops:
            for k in range(min(len(stop) - 1, len(self._text)), longest, -1):
                if self._text.endswith(stop[:k]):
                    longest = k
                    break
        return longest
