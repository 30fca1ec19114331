"""The fuzzers' client: send one request to a real server, check the properties every
answer must have, and count what was seen.

Properties (issue 11): no 5xx other than the documented 503/504, an answer within
``DEADLINE_S`` (a stream read to its end), errors in the protocol's error shape with the
expected 4xx naming the field, a successful stream well formed. What the shape and a
well-formed stream are is the protocol's ``Dialect``: OpenAI's (``error.param``, SSE
chunks ending in ``[DONE]``) or Ollama's (``{"error": ...}`` naming the field in its
message, NDJSON lines ending in a ``done`` line or an error line).
A broken property is recorded as a violation rather than raised, so one seeded run
lists every input that broke something; the test asserts the list is empty at the end.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

DEADLINE_S = 5.0
ALLOWED_5XX = frozenset({503, 504})  # documented: model unavailable, upstream timeout
MAX_SHOWN = 300  # characters of a body shown in a violation


@dataclass(frozen=True)
class Expect:
    """What the answer to a generated request must be. ``statuses`` None: any non-5xx
    (a request that may or may not be valid); ``param``: the field a 400 must name
    (a prefix: ``messages`` accepts ``messages[0].content``)."""

    statuses: frozenset[int] | None = None
    param: str | None = None


ANY = Expect()


def refused(param: str | None = None, *statuses: int) -> Expect:
    return Expect(frozenset(statuses or (400,)), param)


@dataclass(frozen=True)
class Probe:
    method: str
    path: str
    body: bytes | None = None  # raw bytes: the fuzzers control the exact JSON text
    expect: Expect = ANY
    headers: tuple[tuple[str, str], ...] = ()
    stream: bool = False
    what: str = ""  # which strategy or mutation built it, for the violation report


def encode(value: Any) -> bytes:
    """JSON text as a client would send it; ``ensure_ascii`` turns lone surrogates
    into ``\\udXXX`` escapes, which is valid JSON that cannot be re-encoded as UTF-8."""
    return json.dumps(value, ensure_ascii=True, allow_nan=False).encode()


@dataclass
class Stats:
    tried: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    hangs: int = 0
    server_errors: int = 0
    slowest_s: float = 0.0
    elapsed_s: float = 0.0
    violations: list[str] = field(default_factory=list)
    hits: set[tuple[str, str]] = field(default_factory=set)  # (method, path without the query)

    def summary(self, name: str) -> str:
        codes = ", ".join(f"{k}: {v}" for k, v in sorted(self.statuses.items()))
        return (
            f"fuzz {name}: {self.tried} requests in {self.elapsed_s:.1f}s; statuses {{{codes}}}; "
            f"5xx (not 503/504): {self.server_errors}; hangs (> {DEADLINE_S:.0f}s): {self.hangs}; "
            f"slowest {self.slowest_s:.2f}s; violations: {len(self.violations)}"
        )


@dataclass(frozen=True)
class Dialect:
    """How a protocol's answers must look: ``error_shape`` (body, status) -> a problem or
    None; ``names`` (error body, field) -> whether the error names the field; ``stream``
    (path, content type, body) -> a problem of a successful stream, or None."""

    error_shape: Callable[[bytes, int], str | None]
    names: Callable[[bytes, str], bool]
    stream: Callable[[str, str, bytes], str | None]
    allowed_5xx: frozenset[int] = ALLOWED_5XX  # the 5xx the protocol documents (Anthropic's 529)


def _openai_names(body: bytes, param: str) -> bool:
    named = json.loads(body)["error"]["param"]
    return isinstance(named, str) and named.startswith(param)


def _openai_stream(path: str, content_type: str, body: bytes) -> str | None:
    if not content_type.startswith("text/event-stream"):
        return None
    return _responses_sse_problem(body) if path.startswith("/v1/responses") else _sse_problem(body)


class Fuzzer:
    def __init__(self, http: httpx.Client, stats: Stats, dialect: Dialect | None = None) -> None:
        self.http = http
        self.stats = stats
        self.dialect = dialect or OPENAI

    def send(self, probe: Probe) -> httpx.Response | None:
        """Send one probe and check it; the response (read) or None on a hang."""
        self.stats.tried += 1
        self.stats.hits.add((probe.method, probe.path.split("?", 1)[0]))
        headers = dict(probe.headers)
        if probe.body is not None:
            headers.setdefault("content-type", "application/json")
        started = time.monotonic()
        try:
            with self.http.stream(probe.method, probe.path, content=probe.body, headers=headers) as resp:
                body = b""
                for chunk in resp.iter_bytes():
                    body += chunk
                    if time.monotonic() - started > DEADLINE_S:
                        raise httpx.ReadTimeout("answer not complete in time")
        except httpx.TimeoutException as exc:
            self.stats.hangs += 1
            self._violation(probe, f"no complete answer within {DEADLINE_S}s ({type(exc).__name__})")
            return None
        except httpx.TransportError as exc:
            self._violation(probe, f"transport error {type(exc).__name__}: {exc}")
            return None
        took = time.monotonic() - started
        self.stats.slowest_s = max(self.stats.slowest_s, took)
        self.stats.statuses[resp.status_code] += 1
        if took > DEADLINE_S:
            self.stats.hangs += 1
            self._violation(probe, f"answered in {took:.1f}s")
        self._check(probe, resp, body)
        return resp

    def _check(self, probe: Probe, resp: httpx.Response, body: bytes) -> None:
        status = resp.status_code
        dialect = self.dialect
        if status >= 500 and status not in dialect.allowed_5xx:
            self.stats.server_errors += 1
            self._violation(probe, f"status {status}: {body[:MAX_SHOWN]!r}")
            return
        if status >= 400:
            problem = dialect.error_shape(body, status)
            if problem:
                self._violation(probe, f"status {status}, {problem}: {body[:MAX_SHOWN]!r}")
                return
        expect = probe.expect
        if expect.statuses is not None and status not in expect.statuses and status not in dialect.allowed_5xx:
            self._violation(probe, f"status {status}, expected {sorted(expect.statuses)}: {body[:MAX_SHOWN]!r}")
            return
        if status == 400 and expect.param is not None and not dialect.names(body, expect.param):
            self._violation(probe, f"the 400 does not name {expect.param!r}: {body[:MAX_SHOWN]!r}")
        if status == 200:
            problem = dialect.stream(probe.path, resp.headers.get("content-type", ""), body)
            if problem:
                self._violation(probe, f"stream {problem}: {body[-MAX_SHOWN:]!r}")

    def _violation(self, probe: Probe, problem: str) -> None:
        sent = (probe.body or b"")[:MAX_SHOWN]
        self.stats.violations.append(f"{probe.method} {probe.path} [{probe.what}] {problem}\n    sent: {sent!r}")


def _error_shape_problem(body: bytes, status: int) -> str | None:
    try:
        doc = json.loads(body)
    except ValueError:
        return "the body is not JSON"
    err = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(err, dict) or set(err) != {"message", "type", "param", "code"}:
        return "not OpenAI's error shape"
    if not isinstance(err["message"], str) or not err["message"] or "Traceback" in err["message"]:
        return "a bad error message"
    if status == 400 and err["type"] != "invalid_request_error":
        return f"type {err['type']!r} for a 400"
    return None


def _sse_problem(body: bytes) -> str | None:
    events = [e for e in body.split(b"\n\n") if e.strip()]
    data = [e[len(b"data: ") :] for e in events if e.startswith(b"data: ")]
    if not data or data[-1] != b"[DONE]":
        return "does not end with [DONE]"
    for payload in data[:-1]:
        try:
            frame = json.loads(payload)
        except ValueError:
            return f"has a frame that is not JSON ({payload[:80]!r})"
        error = frame.get("error") if isinstance(frame, dict) else None
        if isinstance(error, dict) and error.get("type") == "server_error":
            return "carries a server error (a 5xx after the headers)"
    return None


_RESPONSE_ENDS = (b"response.completed", b"response.incomplete")


def _responses_sse_problem(body: bytes) -> str | None:
    """A Responses API stream: named events (``event:`` then ``data:`` of that type),
    ``sequence_number`` 0, 1, 2..., ending with ``response.completed`` or
    ``response.incomplete`` (``response.failed`` is a failure after the headers)."""
    frames = [f for f in body.split(b"\n\n") if f.strip() and not f.startswith(b":")]
    if not frames:
        return "has no events"
    for i, frame in enumerate(frames):
        name, _, data = frame.partition(b"\n")
        if not name.startswith(b"event: ") or not data.startswith(b"data: "):
            return f"has a frame that is not an event ({frame[:80]!r})"
        try:
            event = json.loads(data[len(b"data: "):])
        except ValueError:
            return f"has data that is not JSON ({data[:80]!r})"
        if event.get("type") != name[len(b"event: "):].decode() or event.get("sequence_number") != i:
            return f"has event {i} out of sequence or misnamed ({frame[:80]!r})"
    last = frames[-1].partition(b"\n")[0][len(b"event: "):]
    if last not in _RESPONSE_ENDS:
        return f"ends with {last!r}, not response.completed / response.incomplete"
    return None


OPENAI = Dialect(_error_shape_problem, _openai_names, _openai_stream)
