"""Tests of the management commands' arguments: parsing, option values, spec building,
address/token resolution, and the small pure helpers of their output."""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from corral.cli.admin_args import (
    DEFAULT_ADDRESS,
    ROUTING_POLICIES,
    UsageError,
    build_spec,
    normalize_address,
    parse_option,
    parse_options,
    parse_value,
    resolve_address,
    resolve_token,
)
from corral.cli.main import _parser


def parse(*argv: str) -> argparse.Namespace:
    return _parser().parse_args(list(argv))


def usage_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exc:
        parse(*argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


# ---------------------------------------------------------------------------- option values


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("16", 16),
        ("0.5", 0.5),
        ("true", True),
        ("null", None),
        ("[1, 2]", [1, 2]),
        ('{"a": 1}', {"a": 1}),
        ('"16"', "16"),
        ("auto", "auto"),
        ("", ""),
        ("hello world", "hello world"),
        ("NaN", "NaN"),
        ("Infinity", "Infinity"),
        ("1e400", "1e400"),
        ("[1,", "[1,"),
    ],
)
def test_parse_value(text: str, value: Any) -> None:
    assert parse_value(text) == value
    assert type(parse_value(text)) is type(value)


def test_parse_option() -> None:
    assert parse_option("max_batch_size=16") == ("max_batch_size", 16)
    assert parse_option("stop=a=b") == ("stop", "a=b")  # only the first '=' splits
    assert parse_option(" dtype =auto") == ("dtype", "auto")
    for bad in ("noequals", "=1", "1x=2", "a b=1"):
        with pytest.raises(ValueError):
            parse_option(bad)


def test_parse_options_last_wins() -> None:
    assert parse_options(["a=1", "b=x", "a=2"]) == {"a": 2, "b": "x"}
    assert parse_options(None) == {}


def test_routing_policies_match_the_core() -> None:
    from corral.core.spec import ROUTING_POLICIES as CORE

    assert ROUTING_POLICIES == CORE


# ---------------------------------------------------------------------------- parsing


def test_model_list_defaults() -> None:
    args = parse("model", "list")
    assert (args.command, args.model_command) == ("model", "list")
    assert args.address is None and args.token is None
    assert args.json is False and args.instances is False and args.timeout == 10.0


def test_model_deploy_flags() -> None:
    args = parse("model", "deploy", "chat", "--engine", "transformers", "--source", "demo:tiny-llama",
                 "--replicas", "2", "--routing", "least_requests", "-o", "max_batch_size=8",
                 "--option", "dtype=auto", "--no-wait", "--json", "--address", "h:1", "--token", "t")
    assert args.name == "chat" and args.engine == "transformers" and args.replicas == 2
    assert args.options == ["max_batch_size=8", "dtype=auto"]
    assert args.no_wait and args.json and args.address == "h:1" and args.token == "t"
    assert args.wait_timeout is None


def test_scale_restart_offline_routing_audit_status_chat() -> None:
    args = parse("model", "scale", "chat", "0", "--wait-timeout", "30")
    assert (args.name, args.replicas, args.wait_timeout) == ("chat", 0, 30.0)
    assert parse("model", "restart", "chat").no_wait is False
    args = parse("model", "offline", "chat", "--instance", "chat-1a")
    assert (args.model_command, args.instance) == ("offline", "chat-1a")
    assert parse("model", "online", "chat").instance is None
    assert parse("model", "routing", "chat", "weighted").policy == "weighted"
    assert parse("model", "stop", "chat").name == "chat"
    assert parse("audit").limit == 20 and parse("audit", "--limit", "5").limit == 5
    assert parse("status", "--json").json is True
    args = parse("chat", "demo-chat", "--system", "be brief", "-p", "temperature=0.2", "--api-key", "k")
    assert (args.model, args.system, args.params, args.api_key) == ("demo-chat", "be brief", ["temperature=0.2"], "k")


@pytest.mark.parametrize(
    "argv",
    [
        ("model",),
        ("model", "frobnicate"),
        ("model", "scale", "chat"),
        ("model", "scale", "chat", "-1"),
        ("model", "scale", "chat", "two"),
        ("model", "deploy", "x", "--replicas", "0"),
        ("model", "deploy", "x", "--option", "novalue"),
        ("model", "deploy", "x", "--kind", "vision"),
        ("model", "routing", "chat", "random"),
        ("model", "list", "--timeout", "0"),
        ("model", "list", "--timeout", "soon"),
        ("audit", "--limit", "0"),
        ("chat",),
        ("chat", "m", "-p", "temperature"),
    ],
)
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]) -> None:
    assert "error" in usage_error(capsys, *argv)


def test_help_imports_nothing_heavy() -> None:
    code = ("import sys; from corral.cli.main import _parser; _parser(); "
            "print(sorted(m for m in ('httpx', 'uvicorn', 'rich', 'starlette', 'pydantic') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ---------------------------------------------------------------------------- address and token


def test_normalize_address() -> None:
    assert normalize_address("localhost:8001") == "http://localhost:8001"
    assert normalize_address("https://corral.example/ ") == "https://corral.example"
    assert normalize_address("http://10.0.0.5:8001///") == "http://10.0.0.5:8001"
    assert normalize_address("http://[::1]:8001/") == "http://[::1]:8001"
    for bad in ("", "  ", "ftp://host", "http://[::1", "http://host:99999", "http://:80", "http://a b"):
        with pytest.raises(UsageError):
            normalize_address(bad)


def test_resolve_address_flag_env_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CORRAL_ADDRESS", raising=False)
    assert resolve_address(None) == DEFAULT_ADDRESS == "http://127.0.0.1:8000"
    monkeypatch.setenv("CORRAL_ADDRESS", "ctl:8001")
    assert resolve_address(None) == "http://ctl:8001"
    assert resolve_address("other:9") == "http://other:9"


def test_resolve_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CORRAL_ADMIN_TOKEN", raising=False)
    assert resolve_token(None) is None
    monkeypatch.setenv("CORRAL_ADMIN_TOKEN", "env")
    assert resolve_token(None) == "env" and resolve_token("flag") == "flag"
    monkeypatch.setenv("CORRAL_API_KEY", "key")
    assert resolve_token(None, "CORRAL_API_KEY") == "key"


# ---------------------------------------------------------------------------- deploy specs


def test_build_spec_from_flags() -> None:
    args = parse("model", "deploy", "chat", "--engine", "transformers", "--source", "demo:tiny-llama",
                 "-o", "max_batch_size=8", "-o", "dtype=auto", "--replicas", "2")
    assert build_spec(args) == {"name": "chat", "kind": "llm", "engine": "transformers", "source": "demo:tiny-llama",
                                "options": {"max_batch_size": 8, "dtype": "auto"}, "replicas": 2}


def test_build_spec_resources_from_flags_over_the_file(tmp_path: Path) -> None:
    args = parse("model", "deploy", "chat", "--engine", "transformers", "--source", "s", "--num-cpus", "1.5",
                 "--num-gpus", "0", "--memory-gb", "8", "--resource", "nodeb=1", "--resource", "zone=0.5")
    assert build_spec(args)["resources"] == {"num_cpus": 1.5, "num_gpus": 0.0, "memory_gb": 8.0,
                                             "custom": {"nodeb": 1.0, "zone": 0.5}}
    path = tmp_path / "m.toml"
    path.write_text('[[models]]\nname = "m"\nkind = "llm"\nengine = "transformers"\nsource = "s"\n'
                    "[models.resources]\nnum_cpus = 2\nmemory_gb = 4\n")
    assert build_spec(parse("model", "deploy", "--file", str(path), "--num-cpus", "1"))["resources"] == {
        "num_cpus": 1.0, "memory_gb": 4}
    assert "resources" not in build_spec(parse("model", "deploy", "x", "--engine", "transformers", "--source", "s"))
    for bad in (["--num-cpus", "-1"], ["--resource", "nodeb"], ["--resource", "nodeb=x"], ["--memory-gb", "0"]):
        with pytest.raises(SystemExit):
            parse("model", "deploy", "x", "--engine", "transformers", "--source", "s", *bad)


def test_build_spec_kind_defaults_from_the_engine() -> None:
    args = parse("model", "deploy", "emb", "--engine", "sentence-transformers", "--source", "package:x")
    assert build_spec(args)["kind"] == "embedding"
    args = parse("model", "deploy", "x", "--engine", "someone-elses-engine", "--source", "s")
    assert build_spec(args) == {"name": "x", "kind": "llm", "engine": "someone-elses-engine", "source": "s"}
    args = parse("model", "deploy", "x", "--engine", "transformers", "--source", "s", "--kind", "embedding")
    assert build_spec(args)["kind"] == "embedding"  # the server says no, naming the field


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("model", "deploy"), "needs NAME, --engine, --source"),
        (("model", "deploy", "x", "--engine", "e"), "needs --source"),
        (("model", "deploy", "--file", "f.toml", "--engine", "e", "-o", "a=1"), "--engine, --option"),
    ],
)
def test_build_spec_usage_errors(argv: tuple[str, ...], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        build_spec(parse(*argv))


MODEL = """\
[[models]]
name = "{name}"
kind = "llm"
engine = "{engine}"
source = "demo:tiny-llama"
replicas = 2
[models.options]
max_batch_size = 4
"""


def deploy_file(tmp_path: Path, text: str, *extra: str) -> dict[str, Any]:
    path = tmp_path / "spec.toml"
    path.write_text(text)
    return build_spec(parse("model", "deploy", *extra, "--file", str(path)))


def test_build_spec_from_file_with_overrides(tmp_path: Path) -> None:
    spec = deploy_file(tmp_path, MODEL.format(name="qwen", engine="transformers"), "--replicas", "3",
                       "--routing", "weighted")
    assert spec == {"name": "qwen", "kind": "llm", "engine": "transformers", "source": "demo:tiny-llama",
                    "replicas": 3, "routing": "weighted", "options": {"max_batch_size": 4}}


def test_build_spec_file_with_several_models_needs_a_name(tmp_path: Path) -> None:
    text = MODEL.format(name="a", engine="transformers") + MODEL.format(name="b", engine="transformers")
    with pytest.raises(UsageError, match=r"declares 2 models \(a, b\)"):
        deploy_file(tmp_path, text)
    assert deploy_file(tmp_path, text, "b")["name"] == "b"
    with pytest.raises(UsageError, match=r"no \[\[models\]\] table named 'c'"):
        deploy_file(tmp_path, text, "c")


def test_build_spec_file_errors_name_file_and_line(tmp_path: Path) -> None:
    text = MODEL.format(name="q", engine="transformers").replace("max_batch_size", "max_batch_sise")
    with pytest.raises(UsageError, match=r"spec.toml:8: unknown key 'max_batch_sise'.*did you mean 'max_batch_size'"):
        deploy_file(tmp_path, text)
    with pytest.raises(UsageError, match="declares no"):
        deploy_file(tmp_path, "[server]\nport = 1\n")
    with pytest.raises(UsageError, match="invalid TOML"):
        deploy_file(tmp_path, "x = [\n")
    with pytest.raises(UsageError, match="cannot read"):
        build_spec(parse("model", "deploy", "--file", str(tmp_path / "missing.toml")))


def test_build_spec_file_with_an_engine_unknown_here_is_left_to_the_server(tmp_path: Path) -> None:
    spec = deploy_file(tmp_path, MODEL.format(name="q", engine="remote-only"))
    assert spec["engine"] == "remote-only" and spec["options"] == {"max_batch_size": 4}


# ---------------------------------------------------------------------------- output helpers


def model(**fields: Any) -> dict[str, Any]:
    base = {"name": "chat", "replicas": 2, "ready": 1, "operation": None, "instances": [
        {"id": "chat-1", "state": "ready"}, {"id": "chat-2", "state": "starting"}]}
    return {**base, **fields}


def test_progress_line() -> None:
    from corral.cli.admin import progress_line

    assert progress_line(model(), 2) == "chat: 1/2 ready, 1 starting"
    assert progress_line(model(operation="restarting 1/2"), 2) == "chat: 1/2 ready, 1 starting (restarting 1/2)"
    assert progress_line(model(ready=0, instances=[]), 3) == "chat: 0/3 ready"


def test_health_summary() -> None:
    from corral.cli.admin import health_summary

    ok = {"mode": "standalone", "workers": [], "models": [model(ready=2, instances=[]), model(name="e", replicas=3,
                                                                                            ready=3, instances=[])]}
    assert health_summary(ok) == "standalone: 2 models, 5/5 instances ready"
    busy = {"mode": "cluster", "workers": [{"id": "w"}], "models": [model(operation="restarting 1/2")]}
    assert health_summary(busy) == "cluster: 1 worker, 1 model, 1/2 instances ready, 1 starting (chat restarting 1/2)"


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def test_progress_prints_a_line_per_change_off_a_terminal() -> None:
    from corral.cli.admin import Progress

    stream = _Stream(tty=False)
    progress = Progress(stream)
    for text in ("chat: 0/2 ready", "chat: 0/2 ready", "chat: 1/2 ready"):
        progress.show(text, " [3s]")
    progress.end()
    assert stream.getvalue() == "chat: 0/2 ready\nchat: 1/2 ready\n"


def test_progress_rewrites_one_line_on_a_terminal() -> None:
    from corral.cli.admin import Progress

    stream = _Stream(tty=True)
    progress = Progress(stream)
    progress.show("chat: 0/2 ready, 2 starting", " [0s]")
    progress.show("chat: 1/2 ready", " [1s]")
    progress.end()
    first, second = "chat: 0/2 ready, 2 starting [0s]", "chat: 1/2 ready [1s]"
    assert stream.getvalue() == f"\r{first}\r{second}" + " " * (len(first) - len(second)) + "\n"
