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

``SupervisedLoop`` is the glue every such engine needs between its ``WorkerThread`` and
its ``LoopSupervisor``: what to fail, with which error, and when to give up. An engine
gives it three hooks (the work in flight when a step raised, the queued work when it
gives up, how to fail a piece of work) and, when its loop needs one, a ``renew`` that
rebuilds its state before the loop runs again.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from corral.core.errors import CorralError, EngineError, InstanceLost, InvalidRequest
from corral.core.types import GenerationRequest
from corral.engines.sync import WorkerThread

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


class Served(Protocol):
    """A piece of work a loop serves (a sequence, a request): what the supervisor needs."""

    @property
    def request_id(self) -> str: ...

    @property
    def fingerprint(self) -> str: ...


W = TypeVar("W", bound=Served)


@dataclass(frozen=True)
class LoopHooks(Generic[W]):
    abandon: Callable[[], Sequence[W]]  # a step raised: drop the batch, return its unfinished work
    drain: Callable[[], Sequence[W]]  # giving up (or stopping): take no more work, return the queued
    fail: Callable[[Sequence[W], Callable[[], CorralError]], None]  # answer each with its own error
    renew: Callable[[], None] | None = None  # before the loop runs again (a fresh KV cache)


class SupervisedLoop(Generic[W]):
    """A ``WorkerThread`` running ``step`` under a ``LoopSupervisor``: a step that raises
    fails the work of its batch at once (``EngineError``) and the loop restarts in place
    after the supervisor's backoff; past its budget the queued work gets
    ``InstanceLost`` (safe to retry elsewhere) and ``failure()`` says why."""

    def __init__(self, name: str, role: str, step: Callable[[], bool], hooks: LoopHooks[W]) -> None:
        self.name = name
        self.supervisor = LoopSupervisor(name)
        self._hooks = hooks
        self._stopping = False
        self._thread = WorkerThread(f"{name}-{role}", step, self._on_crash, self._on_restart)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._thread.wake()

    def stop(self) -> bool:
        """Stop the loop; True when its thread ended (then its state may be touched)."""
        self._stopping = True
        self._thread.stop()
        return not self._thread.alive()

    def admit(self, fp: str, request_id: str) -> None:
        self.supervisor.admit(fp, request_id)

    def failure(self) -> str | None:
        if self.supervisor.failure is not None:
            return self.supervisor.failure
        if not self._thread.alive() and not self._stopping:
            return "the engine loop ended"  # a crash or restart handler that failed: never serve silently
        return None

    # -- on the loop's thread --------------------------------------------------------

    def _on_crash(self, exc: BaseException) -> float | None:
        victims = self._hooks.abandon()
        restart = self.supervisor.crashed(exc, [w.fingerprint for w in victims], sorted({w.request_id for w in victims}))
        crashed = f"model {self.name!r} failed while generating ({type(exc).__name__}); retry shortly"
        self._hooks.fail(victims, lambda: EngineError(crashed))
        if restart:
            return self.supervisor.backoff()
        gone = f"model {self.name!r} stopped serving: {self.supervisor.failure}"
        self._hooks.fail(self._hooks.drain(), lambda: InstanceLost(gone))
        return None

    def _on_restart(self) -> None:
        if self._hooks.renew is not None:
            try:
                self._hooks.renew()
            except BaseException:  # the loop stays down (failure() says so): nothing queued may hang
                gone = f"model {self.name!r} stopped serving: its engine could not be restarted"
                self._hooks.fail(self._hooks.drain(), lambda: InstanceLost(gone))
                raise
        self.supervisor.restarted()
        log.info("model %s: engine loop restarted in place (%d restarts)", self.name, self.supervisor.restarts_total)
