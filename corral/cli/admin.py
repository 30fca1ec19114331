"""The management commands: ``corral model ...``, ``corral status`` and ``corral audit``.

Each is a thin client of the admin API (``docs/admin-api.md``) under ``ADDRESS/admin/v1``.
Failures become one ``corral: error: ...`` line on stderr and exit code 1 (2 for usage
errors), never a traceback. Commands that change a model can wait for it to settle,
polling the model and showing progress on stderr; ``--json`` prints the API's answer.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import shutil
import ssl
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO, cast
from urllib.parse import quote

import httpx

from corral import __version__
from corral.cli.admin_args import UsageError, build_spec, resolve_address, resolve_token
from corral.cli.tls_args import client_tls
from corral.core.errors import ConfigError
from corral.core.tls import tls_failure
from corral.fmt.table import Align, format_ago, format_detail, format_duration, format_time, render_table

POLL_S = 0.5
Json = dict[str, Any]


class CliError(Exception):
    """A failure to report in one line (plus an optional hint) with exit code ``code``."""

    def __init__(self, message: str, *, hint: str | None = None, code: int = 1) -> None:
        super().__init__(message)
        self.message, self.hint, self.code = message, hint, code


def _actor() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry and no USER/LOGNAME: still send something
        return "unknown"


class AdminClient:
    """Blocking JSON client of ``/admin/v1`` that turns every failure into a ``CliError``."""

    def __init__(
        self, address: str, token: str | None, timeout: float, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        """``ssl_context``: what an https:// server is verified against (``--tls-ca``, ``CORRAL_TLS_CA``)."""
        self.address, self.token, self.timeout = address, token, timeout
        headers = {"accept": "application/json", "user-agent": f"corral-cli/{__version__}"}
        if token:
            headers["authorization"] = f"Bearer {token}"
        self._http = httpx.Client(base_url=f"{address}/admin/v1", headers=headers, timeout=timeout,
                                  verify=ssl_context if ssl_context is not None else True)

    def close(self) -> None:
        self._http.close()

    def get(self, path: str, **params: Any) -> Json:
        return self._request("GET", path, params=params or None)

    def change(self, method: str, path: str, body: Json | None = None) -> Json:
        """A call that changes something: sends ``x-corral-actor`` for the audit log."""
        return self._request(method, path, body=body, headers={"x-corral-actor": _actor()})

    def _request(self, method: str, path: str, *, params: Json | None = None, body: Json | None = None,
                 headers: dict[str, str] | None = None) -> Json:
        content = None
        if body is not None:
            content = json.dumps(body, default=str).encode()
            headers = {**(headers or {}), "content-type": "application/json"}
        try:
            resp = self._http.request(method, path, params=params, content=content, headers=headers)
        except httpx.ConnectError as exc:
            tls = tls_failure(exc)
            if tls is not None:
                raise CliError(f"cannot talk to Corral at {self.address}: {tls}")
            raise CliError(f"cannot reach Corral at {self.address}: is it running? (set --address or CORRAL_ADDRESS)")
        except httpx.RemoteProtocolError as exc:
            hint = "does it serve HTTPS? then use an https:// address" if self.address.startswith("http://") else None
            raise CliError(f"request to {self.address} failed: {exc}", hint=hint)
        except httpx.TimeoutException:
            raise CliError(f"Corral at {self.address} did not answer within {self.timeout:g}s (raise --timeout)")
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            raise CliError(f"invalid address {self.address!r}: {exc}", code=2)
        except httpx.HTTPError as exc:
            raise CliError(f"request to {self.address} failed: {exc}")
        if resp.status_code == 401:
            if self.token:
                raise CliError("the admin token was refused: check --token or CORRAL_ADMIN_TOKEN")
            raise CliError("the admin API needs a token: pass --token or set CORRAL_ADMIN_TOKEN")
        try:
            data = resp.json()
        except ValueError:
            data = None
        error = data.get("error") if isinstance(data, dict) else None
        if resp.status_code >= 400:
            if isinstance(error, dict) and error.get("message"):
                raise CliError(str(error["message"]))
            hint = None
            if resp.status_code in (404, 405):
                hint = f"is {self.address} a Corral controller or standalone server? (a controller usually listens on :8001)"
            raise CliError(f"HTTP {resp.status_code} from {resp.request.url}", hint=hint)
        if not isinstance(data, dict):
            raise CliError(f"unexpected answer from {resp.request.url} (HTTP {resp.status_code}, not a JSON object)",
                           hint=f"is {self.address} a Corral server?")
        return data


def _path(*parts: str) -> str:
    return "/" + "/".join(quote(p, safe="") for p in parts)


# ---------------------------------------------------------------------------- output


def _emit_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def _table(headers: list[str], rows: list[list[Any]], align: str, shrink: str | None = None) -> str:
    """Fit a terminal by cutting only the ``shrink`` column (free text), never names or ids."""
    width = shutil.get_terminal_size().columns if sys.stdout.isatty() else None
    cut = [headers.index(shrink)] if shrink else []
    return render_table(headers, rows, align=[cast(Align, a) for a in align], width=width, shrink=cut)


def _models_table(models: list[Json]) -> str:
    rows = [[m["name"], m.get("kind"), m.get("engine"), m.get("routing"), f"{m.get('ready', 0)}/{m.get('replicas', 0)}",
             m.get("operation") or ("managed" if m.get("managed", True) else "config"), _autoscale_cell(m)] for m in models]
    return _table(["NAME", "KIND", "ENGINE", "ROUTING", "READY/DESIRED", "STATE", "AUTOSCALE"], rows, "llllrll", "AUTOSCALE")


def _instances_table(models: list[Json]) -> str:
    rows = [[m["name"], i.get("id"), i.get("worker_id") or "-", i.get("address") or "-", i.get("state"),
             i.get("in_flight", 0), format_duration(i.get("uptime_s")), i.get("last_error") or ""]
            for m in models for i in m.get("instances") or []]
    headers = ["MODEL", "ID", "WORKER", "ADDRESS", "STATE", "IN-FLIGHT", "UPTIME", "LAST ERROR"]
    return _table(headers, rows, "lllllrrl", "LAST ERROR") if rows else "no instances"


def _workers_table(workers: list[Json]) -> str:
    rows = [[w.get("id"), w.get("address"), ",".join(w.get("engines") or []) or "-", w.get("instances", 0),
             w.get("launcher") or "-", _short_node(w.get("node")), format_ago(w.get("last_seen_s"))] for w in workers]
    return _table(["ID", "ADDRESS", "ENGINES", "INSTANCES", "LAUNCHER", "NODE", "LAST SEEN"], rows, "lllrllr", "ENGINES")


def _short_node(node: str | None) -> str:
    """A Ray node id is 56 hex digits: its first 12 tell nodes apart (``ray status`` does the same)."""
    if not node:
        return "-"
    return node[:12] if len(node) == 56 and all(c in "0123456789abcdef" for c in node) else node


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def health_summary(status: Json) -> str:
    """One line: ``standalone: 3 models, 5/5 instances ready`` (+ failed/offline/starting counts)."""
    models = status.get("models") or []
    states: dict[str, int] = {}
    for m in models:
        for i in m.get("instances") or []:
            states[i.get("state", "?")] = states.get(i.get("state", "?"), 0) + 1
    ready = sum(int(m.get("ready", 0)) for m in models)
    desired = sum(int(m.get("replicas", 0)) for m in models)
    parts = [_plural(len(models), "model"), f"{ready}/{desired} instances ready"]
    if status.get("mode") == "cluster":
        parts.insert(0, _plural(len(status.get("workers") or []), "worker"))
    parts += [f"{states[s]} {s}" for s in ("starting", "draining", "offline", "failed") if states.get(s)]
    busy = [f"{m['name']} {m['operation']}" for m in models if m.get("operation")]
    line = f"{status.get('mode', 'corral')}: {', '.join(parts)}"
    return line + (f" ({'; '.join(busy)})" if busy else "")


class Progress:
    """One status line on ``stream``: rewritten in place with ``\\r`` on a TTY, else a line per change."""

    def __init__(self, stream: TextIO) -> None:
        self.stream, self.tty = stream, stream.isatty()
        self.last: str | None = None
        self.shown = 0

    def show(self, text: str, suffix: str = "") -> None:
        """Show ``text``; ``suffix`` (e.g. elapsed time) only refreshes a TTY line, never adds one."""
        if self.tty:
            line = text + suffix
            self.stream.write("\r" + line + " " * max(self.shown - len(line), 0))
            self.shown = len(line)
            self.stream.flush()
        elif text != self.last:
            self.stream.write(text + "\n")
            self.stream.flush()
        self.last = text

    def end(self) -> None:
        if self.tty and self.last is not None:
            self.stream.write("\n")
            self.stream.flush()
        self.last, self.shown = None, 0


# ---------------------------------------------------------------------------- waiting


def progress_line(model: Json, target: int) -> str:
    """``chat: 1/2 ready`` plus other instance states and the operation in progress."""
    states: dict[str, int] = {}
    for i in model.get("instances") or []:
        if i.get("state") != "ready":
            states[i.get("state", "?")] = states.get(i.get("state", "?"), 0) + 1
    line = f"{model['name']}: {model.get('ready', 0)}/{target} ready"
    line += "".join(f", {n} {state}" for state, n in sorted(states.items()))
    return line + (f" ({model['operation']})" if model.get("operation") else "")


def wait_for(client: AdminClient, model: Json, done: Callable[[Json], bool], target: int,
             wait_timeout: float | None, hint: str) -> tuple[Json, float]:
    """Poll ``model`` until ``done``; raise ``CliError`` when a new instance fails or time runs out."""
    name = model["name"]
    failed_before = {i.get("id") for i in model.get("instances") or [] if i.get("state") == "failed"}
    progress, start = Progress(sys.stderr), time.monotonic()
    try:
        while True:
            elapsed = time.monotonic() - start
            if done(model):
                return model, elapsed
            failed = [i for i in model.get("instances") or []
                      if i.get("state") == "failed" and i.get("id") not in failed_before]
            if failed:
                error = failed[0].get("last_error") or "no error recorded"
                raise CliError(f"{name}: instance {failed[0].get('id')} failed: {error}", hint=hint)
            progress.show(progress_line(model, target), f" [{elapsed:.0f}s]")
            if wait_timeout is not None and elapsed >= wait_timeout:
                raise CliError(f"{name}: gave up waiting after {wait_timeout:g}s ({progress_line(model, target)})",
                               hint="the change goes on; follow it with `corral model list --instances`")
            time.sleep(POLL_S)
            model = client.get(_path("models", name))["model"]
    finally:
        progress.end()


def _settle(args: argparse.Namespace, client: AdminClient, model: Json, done: Callable[[Json], bool],
            target: int, verb: str, hint: str) -> int:
    if args.no_wait:
        if args.json:
            _emit_json({"model": model})
        else:
            print(f"{model['name']}: accepted ({model.get('ready', 0)}/{target} ready); "
                  "follow with `corral model list --instances`")
        return 0
    model, elapsed = wait_for(client, model, done, target, args.wait_timeout, hint)
    if args.json:
        _emit_json({"model": model})
    elif target == 0:
        print(f"{model['name']}: {verb}; no instances serving")
    else:
        print(f"{model['name']}: {verb}; {model.get('ready', 0)}/{target} instances ready after {elapsed:.1f}s")
    return 0


# ---------------------------------------------------------------------------- commands


def cmd_deploy(args: argparse.Namespace, client: AdminClient) -> int:
    spec = build_spec(args)
    model = client.change("POST", "/models", spec)["model"]
    target = int(model.get("replicas", spec.get("replicas", 1)))
    hint = (f"check the source, engine and options, and the worker's log; "
            f"remove the model with `corral model stop {model['name']}`")
    return _settle(args, client, model, lambda m: int(m.get("ready", 0)) >= target, target, "deployed", hint)


def cmd_scale(args: argparse.Namespace, client: AdminClient) -> int:
    model = client.change("POST", _path("models", args.name, "scale"), {"replicas": args.replicas})["model"]
    hint = "see `corral model list --instances` and the worker's log"
    return _settle(args, client, model, lambda m: int(m.get("ready", 0)) == args.replicas, args.replicas,
                   f"scaled to {args.replicas}", hint)


POLICY_FLAGS = ("min_replicas", "max_replicas", "target_in_flight", "upscale_delay_s", "downscale_delay_s",
                "downscale_to_zero_delay_s", "target_ttft_p90_s", "cold_start_timeout_s")


def cmd_autoscale(args: argparse.Namespace, client: AdminClient) -> int:
    policy = {k: getattr(args, k) for k in POLICY_FLAGS if getattr(args, k) is not None}
    if args.off:
        if policy:
            raise UsageError("--off takes no policy flags")
        model = client.change("DELETE", _path("models", args.name, "autoscale"))["model"]
        text = f"{args.name}: autoscaling off; it keeps {model.get('replicas')} replicas"
    else:
        model = client.change("PUT", _path("models", args.name, "autoscale"), policy)["model"]
        text = f"{args.name}: autoscaling {_autoscale_cell(model)}"
    if args.json:
        _emit_json(model)
    else:
        print(text)
    return 0


def _autoscale_cell(model: Json) -> str:
    policy = model.get("autoscale")
    if not policy:
        return "-"
    cell = f"{policy['min_replicas']}..{policy['max_replicas']} @{policy['target_in_flight']:g}"
    last = model.get("autoscaler")
    if last:
        cell += f", last: {last['reason']} {last['from']}->{last['to']} {format_duration(last.get('age_s'))} ago"
    return cell


def cmd_restart(args: argparse.Namespace, client: AdminClient) -> int:
    model = client.change("POST", _path("models", args.name, "restart"))["model"]
    hint = "the old instances keep serving until their replacements are ready; see the worker's log"
    return _settle(args, client, model, lambda m: m.get("operation") is None, int(model.get("replicas", 0)),
                   "restarted", hint)


def _resolve_instance(client: AdminClient, name: str, wanted: str) -> str:
    ids = [str(i.get("id")) for i in client.get(_path("models", name))["model"].get("instances") or []]
    if wanted in ids:
        return wanted
    matches = [i for i in ids if i.startswith(wanted)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise CliError(f"{name}: {wanted!r} matches several instances: {', '.join(matches)}", code=2)
    raise CliError(f"{name}: no instance {wanted!r} (it has: {', '.join(ids) or 'none'})", code=2)


def cmd_offline_online(args: argparse.Namespace, client: AdminClient) -> int:
    action = args.model_command
    if args.instance:
        instance_id = _resolve_instance(client, args.name, args.instance)
        answer = client.change("POST", _path("instances", instance_id, action))
        text = f"{args.name}: instance {instance_id} is {(answer.get('instance') or {}).get('state', action)}"
    else:
        answer = client.change("POST", _path("models", args.name, action))
        text = f"{args.name}: " + ("offline (instances stay loaded, take no traffic)" if action == "offline"
                                   else "online (instances take traffic again)")
    if args.json:
        _emit_json(answer)
    else:
        print(text)
    return 0


def cmd_simple(args: argparse.Namespace, client: AdminClient) -> int:
    """``stop`` and ``routing``: one call, one line."""
    if args.model_command == "stop":
        answer = client.change("DELETE", _path("models", args.name))
        text = f"{args.name}: stopped; its instances drain and stop"
    else:
        answer = client.change("PATCH", _path("models", args.name), {"routing": args.policy})
        text = f"{args.name}: routing is now {(answer.get('model') or {}).get('routing', args.policy)}"
    if args.json:
        _emit_json(answer)
    else:
        print(text)
    return 0


def cmd_list(args: argparse.Namespace, client: AdminClient) -> int:
    data = client.get("/models")
    if args.json:
        _emit_json(data)
    elif not data["models"]:
        print("no models")
    else:
        print(_models_table(data["models"]))
        if args.instances:
            print()
            print(_instances_table(data["models"]))
    return 0


def cmd_status(args: argparse.Namespace, client: AdminClient) -> int:
    status = client.get("/status")
    if args.json:
        _emit_json(status)
        return 0
    workers, models = status.get("workers") or [], status.get("models") or []
    if workers:
        print(_workers_table(workers), end="\n\n")
    elif status.get("mode") == "cluster":
        print("no workers registered", end="\n\n")
    print(_models_table(models) if models else "no models", end="\n\n")
    print(health_summary(status))
    return 0


def cmd_audit(args: argparse.Namespace, client: AdminClient) -> int:
    data = client.get("/audit", limit=args.limit)
    if args.json:
        _emit_json(data)
        return 0
    events = data["events"]
    rows = [[format_time(e.get("time")), e.get("actor") or "-", e.get("action"), e.get("target"),
             format_detail(e.get("detail"))] for e in events]
    print(_table(["TIME", "ACTOR", "ACTION", "TARGET", "DETAIL"], rows, "lllll", "DETAIL") if rows else "no events")
    return 0


MODEL_COMMANDS: dict[str, Callable[[argparse.Namespace, AdminClient], int]] = {
    "list": cmd_list, "deploy": cmd_deploy, "stop": cmd_simple, "scale": cmd_scale, "restart": cmd_restart,
    "autoscale": cmd_autoscale,
    "offline": cmd_offline_online, "online": cmd_offline_online, "routing": cmd_simple,
}


def _fail(message: str, hint: str | None = None) -> None:
    print(f"corral: error: {message}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)


def run_admin(args: argparse.Namespace) -> int:
    """Run ``corral model ...``, ``corral status`` or ``corral audit``; return the exit code."""
    if args.command == "model":
        handler = MODEL_COMMANDS[args.model_command]
    elif args.command == "key":
        from corral.cli.keys import KEY_COMMANDS  # it imports this module

        handler = KEY_COMMANDS[args.key_command]
    else:
        handler = cmd_status if args.command == "status" else cmd_audit
    try:
        address = resolve_address(args.address)
        trust = client_tls(args, address)
    except UsageError as exc:
        _fail(str(exc))
        return 2
    except ConfigError as exc:
        _fail(exc.message)
        return 2
    try:
        client = AdminClient(address, resolve_token(args.token), args.timeout, trust)
    except httpx.InvalidURL as exc:
        _fail(f"invalid address {address!r}: {exc}")
        return 2
    try:
        return handler(args, client)
    except UsageError as exc:
        _fail(str(exc))
        return 2
    except CliError as exc:
        _fail(exc.message, exc.hint)
        return exc.code
    except KeyboardInterrupt:
        print(file=sys.stderr)
        _fail("interrupted", "a change already accepted goes on; see `corral model list --instances`")
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        if os.environ.get("CORRAL_DEBUG"):
            raise
        _fail(f"unexpected answer from Corral at {address}: {type(exc).__name__}: {exc}",
              "is the server the same version as this CLI? (CORRAL_DEBUG=1 shows the traceback)")
        return 1
    finally:
        client.close()
