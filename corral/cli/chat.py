"""``corral chat MODEL``: an interactive, streaming chat over the OpenAI API at ``ADDRESS/v1``.

Speaks ``POST /v1/chat/completions`` with ``stream: true`` and reads the server-sent events
with httpx directly (no openai SDK), printing tokens as they arrive. The conversation is
kept between turns; ``/reset`` clears it (the ``--system`` prompt stays), ``/params`` shows
or sets sampling parameters, ``/quit`` or end of input exits. When stdin is not a terminal,
each non-empty line is one user message, so the command works in a pipe; the exit code is
then 1 if any turn failed. Server errors print their message, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from typing import Any

import httpx

from corral import __version__
from corral.cli.admin_args import UsageError, parse_option, parse_options, resolve_address, resolve_token
from corral.cli.tls_args import client_tls
from corral.core.errors import ConfigError
from corral.core.tls import tls_failure

_CONTROL = {c: None for c in range(32) if chr(c) not in "\n\t"} | {0x7F: None}
RESERVED = frozenset({"model", "messages", "stream", "stream_options", "n"})
HELP = ("commands: /reset (clear the conversation), /params [key=value ...] (show or set sampling parameters; "
        "key=null unsets), /quit; start a message with // to send a leading /")


class ChatError(Exception):
    """A failed turn or start-up check, reported as one line."""


class Chat:
    """One conversation with ``model`` through an ``httpx.Client`` based at ``ADDRESS/v1``."""

    def __init__(self, http: httpx.Client, address: str, model: str, system: str | None,
                 params: dict[str, Any], has_key: bool) -> None:
        self.http, self.address, self.model, self.system = http, address, model, system
        self.params, self.has_key = params, has_key
        self.messages: list[dict[str, str]] = []
        self.tty = sys.stdout.isatty()  # on a terminal, drop control characters a model may emit
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def set_params(self, items: list[str]) -> None:
        """Apply ``key=value`` items (all or none); ``key=null`` removes a parameter."""
        updates = []
        for item in items:
            try:
                key, value = parse_option(item)
            except ValueError as exc:
                raise ChatError(str(exc)) from None
            if key in RESERVED:
                raise ChatError(f"{key!r} cannot be set here")
            updates.append((key, value))
        for key, value in updates:
            if value is None:
                self.params.pop(key, None)
            else:
                self.params[key] = value

    def describe_params(self) -> str:
        if not self.params:
            return "(server defaults)"
        return " ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in self.params.items())

    # -------------------------------------------------------------------- HTTP

    def _error(self, resp: httpx.Response) -> ChatError:
        if resp.status_code == 401:
            if self.has_key:
                return ChatError("the API key was refused: check --api-key or CORRAL_API_KEY")
            return ChatError("the API needs a key: pass --api-key or set CORRAL_API_KEY")
        try:
            message = resp.json()["error"]["message"]
        except Exception:  # not an OpenAI error object
            message = f"HTTP {resp.status_code} from {resp.request.url}"
        return ChatError(str(message))

    def _unreachable(self, exc: httpx.HTTPError) -> ChatError:
        tls = tls_failure(exc)
        if tls is not None:
            return ChatError(f"cannot talk to Corral at {self.address}: {tls}")
        if isinstance(exc, httpx.ConnectError):
            return ChatError(f"cannot reach Corral at {self.address}: is it running? (set --address or CORRAL_ADDRESS)")
        if isinstance(exc, httpx.TimeoutException):
            return ChatError(f"Corral at {self.address} went silent (raise --timeout)")
        return ChatError(f"request to {self.address} failed: {exc or type(exc).__name__}")

    def check_model(self) -> None:
        """Fail early when the server is unreachable, needs a key or does not serve the model."""
        try:
            resp = self.http.get("/models")
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        if resp.status_code != 200:
            raise self._error(resp)
        try:
            served = [str(m["id"]) for m in resp.json()["data"]]
        except Exception:
            return  # an unusual server: let the first turn tell
        if self.model not in served:
            raise ChatError(f"model {self.model!r} is not served at {self.address} "
                            f"(served: {', '.join(served) or 'none'})")

    def _events(self, resp: httpx.Response) -> Iterator[dict[str, Any]]:
        for line in resp.iter_lines():
            if not line.startswith("data:"):
                continue  # blank separators, comments, event names
            data = line[5:].strip()
            if data == "[DONE]":
                return
            try:
                event = json.loads(data)
            except ValueError:
                raise ChatError(f"malformed event from the server: {data[:200]!r}") from None
            if isinstance(event, dict) and isinstance(event.get("error"), dict):
                raise ChatError(str(event["error"].get("message") or event["error"]))
            if isinstance(event, dict):
                yield event

    def turn(self, text: str) -> str:
        """Send ``text``, stream the reply to stdout, keep both in the conversation.

        On failure (or Ctrl-C) the user message is dropped so the conversation stays valid.
        """
        self.messages.append({"role": "user", "content": text})
        body = {**self.params, "model": self.model, "messages": self.messages, "stream": True}
        parts: list[str] = []
        finish = None
        try:
            with self.http.stream("POST", "/chat/completions", json=body) as resp:
                if resp.status_code != 200:
                    resp.read()
                    raise self._error(resp)
                for event in self._events(resp):
                    for choice in event.get("choices") or []:
                        piece = (choice.get("delta") or {}).get("content")
                        if piece:
                            parts.append(piece)
                            sys.stdout.write(piece.translate(_CONTROL) if self.tty else piece)
                            sys.stdout.flush()
                        finish = choice.get("finish_reason") or finish
        except httpx.HTTPError as exc:
            self.messages.pop()
            if parts:
                print()
            raise self._unreachable(exc) from None
        except (ChatError, KeyboardInterrupt):
            self.messages.pop()
            if parts:
                print()
            raise
        print()
        if finish == "length":
            print("[stopped: max_tokens reached]", file=sys.stderr)
        reply = "".join(parts)
        self.messages.append({"role": "assistant", "content": reply})
        return reply


def _lines(interactive: bool) -> Iterator[str]:
    if not interactive:
        for line in sys.stdin:
            yield line.rstrip("\r\n")
        return
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    while True:
        try:
            yield input("> ")
        except EOFError:
            print(file=sys.stderr)
            return


def handle(chat: Chat, line: str) -> bool | None:
    """Run one input line: ``False`` to quit, ``None`` for a command, ``True`` after a turn.

    Raises ``ChatError`` when the command or the turn fails.
    """
    text = line.strip()
    if text.startswith("//"):
        text = text[1:]
    elif text.startswith("/"):
        command, *rest = text.split()
        if command in ("/quit", "/exit", "/q"):
            return False
        if command == "/reset":
            chat.reset()
            print("(conversation cleared)", file=sys.stderr)
        elif command == "/params":
            if rest:
                chat.set_params(rest)
            print(chat.describe_params())
        elif command == "/help":
            print(HELP)
        else:
            raise ChatError(f"unknown command {command}; {HELP}")
        return None
    chat.turn(text)
    return True


def run_chat(args: argparse.Namespace) -> int:
    try:
        address = resolve_address(args.address)
        params = parse_options(args.params)
        trust = client_tls(args, address)
    except (UsageError, ValueError) as exc:
        print(f"corral: error: {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"corral: error: {exc.message}", file=sys.stderr)
        return 2
    key = resolve_token(args.api_key, "CORRAL_API_KEY")
    headers = {"user-agent": f"corral-cli/{__version__}"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    interactive = sys.stdin.isatty()
    timeout = httpx.Timeout(args.timeout, connect=min(args.timeout, 10.0))
    failed = False
    try:
        http = httpx.Client(base_url=f"{address}/v1", headers=headers, timeout=timeout,
                            verify=trust if trust is not None else True)
    except httpx.InvalidURL as exc:
        print(f"corral: error: invalid address {address!r}: {exc}", file=sys.stderr)
        return 2
    with http:
        chat = Chat(http, address, args.model, args.system, params, bool(key))
        try:
            chat.check_model()
            if interactive:
                print(f"chat with {args.model} at {address}/v1; /help for commands, /quit or Ctrl-D to leave",
                      file=sys.stderr)
            for line in _lines(interactive):
                if not line.strip():
                    continue
                try:
                    if handle(chat, line) is False:
                        break
                except ChatError as exc:
                    print(f"error: {exc}", file=sys.stderr)
                    failed = True
                except KeyboardInterrupt:
                    if not interactive:
                        raise
                    print("[interrupted]", file=sys.stderr)
        except ChatError as exc:
            print(f"corral: error: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(file=sys.stderr)
            return 130
        except BrokenPipeError:
            return 1
    return 1 if failed and not interactive else 0
