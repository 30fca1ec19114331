"""Supervision of an engine's serving loop: restart in place, refuse crash-loop inputs.

Engines whose work runs on a loop of their own (the transformers batcher thread, the
llama.cpp decode thread) share this policy instead of each inventing one:

- when the loop dies, the engine fails the requests it was serving (each gets an
  ``EngineError`` at once) and calls ``crashed`` with the fingerprints of those requests;
- ``crashed`` counts the crash and answers whether the engine may restart its loop in
  place (new KV cache, same weights: milliseconds), after ``backoff()`` seconds;
- past ``max_restarts`` crashes within ``window_s`` it gives up: ``failure`` is set, the
  engine reports it in ``EngineLoad.failure``, and the worker marks the instance failed
  so the manager replaces it (a fresh process state, with the manager's own backoff);
- a request whose fingerprint was in flight at ``refuse_after`` crashes is refused by
  ``admit`` with a 400 before it reaches the loop again, so one poisoned input cannot
  take a model down by being retried (by the client, or by the gateway's failover).

Thread-safe: ``crashed`` is called from the engine's thread, ``admit`` on the event loop.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import threading
import time
from collections.abc import Iterable

from corral.core.errors import InvalidRequest
from corral.core.types import GenerationRequest

log = logging.getLogger(__name__)

_REMEMBERED = 1024  # fingerprints kept: enough for any crash loop, bounded memory


def fingerprint(request: GenerationRequest) -> str:
    """What identifies "the same input": the prompt and every sampling parameter (the
    request id and affinity keys differ between retries of the same input)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(repr(request.sampling).encode())
    h.update(repr(request.prompt).encode("utf-8", "surrogatepass"))
    for m in request.messages or ():
        h.update(repr((m.role, m.content, m.name, m.tool_calls, m.tool_call_id)).encode("utf-8", "surrogatepass"))
    h.update(repr((request.echo, request.tools, request.tool_choice, request.response_format)).encode())
    return h.hexdigest()


class LoopSupervisor:
    def __init__(
        self,
        name: str,
        *,
        max_restarts: int = 5,
        window_s: float = 60.0,
        refuse_after: int = 2,
        base_backoff_s: float = 0.05,
        max_backoff_s: float = 5.0,
    ) -> None:
        self.name = name
        self._max_restarts = max_restarts
        self._window = window_s
        self._refuse_after = refuse_after
        self._base_backoff = base_backoff_s
        self._max_backoff = max_backoff_s
        self._lock = threading.Lock()
        self._recent: collections.deque[float] = collections.deque()  # crash times within the window
        self._suspects: collections.OrderedDict[str, int] = collections.OrderedDict()  # fingerprint -> crashes
        self.failure: str | None = None
        self.crashes_total = 0
        self.restarts_total = 0
        self.refused_total = 0

    def admit(self, fp: str, request_id: str) -> None:
        """Raise ``InvalidRequest`` for an input that crashed the loop ``refuse_after`` times."""
        with self._lock:
            crashes = self._suspects.get(fp, 0)
            if crashes < self._refuse_after:
                return
            self.refused_total += 1
        log.warning(
            "model %s: refused request %s: the same input was being served when the engine crashed %d times",
            self.name, request_id, crashes,
        )
        raise InvalidRequest(
            f"this input crashed model {self.name!r}'s engine {crashes} times and is refused; "
            "change the prompt or parameters",
            code="input_crashed_engine",
        )

    def crashed(self, exc: BaseException, fingerprints: Iterable[str], request_ids: Iterable[str] = ()) -> bool:
        """Count a crash of the loop. True: restart it in place (after ``backoff()``);
        False: give up, ``failure`` is set."""
        now = time.monotonic()
        with self._lock:
            self.crashes_total += 1
            for fp in set(fingerprints):
                self._suspects[fp] = self._suspects.pop(fp, 0) + 1
            while len(self._suspects) > _REMEMBERED:
                self._suspects.popitem(last=False)
            self._recent.append(now)
            while self._recent and self._recent[0] < now - self._window:
                self._recent.popleft()
            give_up = len(self._recent) > self._max_restarts
            if give_up:
                self.failure = (
                    f"engine loop crashed {len(self._recent)} times in {self._window:.0f}s; "
                    f"last: {type(exc).__name__}: {exc}"
                )
        ids = ", ".join(request_ids) or "none"
        log.error(
            "model %s: engine loop crashed (%s: %s) while serving requests [%s]; %s",
            self.name, type(exc).__name__, exc, ids, "giving up" if give_up else "restarting it",
            exc_info=(type(exc), exc, exc.__traceback__),
        )
        return not give_up

    def backoff(self) -> float:
        """Seconds to wait before the next in-place restart: doubles with recent crashes."""
        with self._lock:
            recent = max(len(self._recent) - 1, 0)
        return min(self._base_backoff * (2**recent), self._max_backoff)

    def restarted(self) -> None:
        with self._lock:
            self.restarts_total += 1
