"""The management CLI (`corral model ...`, `status`, `audit`, `chat`) as a user runs it,
against a real standalone server."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.cluster.harness import ADMIN_TOKEN, Load
from tests.integration.servers import Server, corral_env, start_corral


@pytest.fixture(scope="module")
def server(corral_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("cli-admin")
    config = folder / "corral.toml"
    config.write_text('[[models]]\nname = "base"\nkind = "llm"\nengine = "transformers"\nsource = "demo:tiny-llama"\n')
    srv = start_corral(["--config", str(config), "--admin-token", ADMIN_TOKEN], corral_home, folder)
    yield srv
    srv.stop()


def corral(server: Server, home: Path, *args: str, token: str | None = ADMIN_TOKEN, stdin: str | None = None):  # type: ignore[no-untyped-def]
    env = corral_env(home)
    env["CORRAL_ADDRESS"] = server.url
    if token:
        env["CORRAL_ADMIN_TOKEN"] = token
    else:
        env.pop("CORRAL_ADMIN_TOKEN", None)
    return subprocess.run(
        [sys.executable, "-m", "corral.cli.main", *args], env=env, capture_output=True, text=True, timeout=180, input=stdin
    )


def test_model_list_is_a_table_and_json(server: Server, corral_home: Path) -> None:
    out = corral(server, corral_home, "model", "list")
    assert out.returncode == 0, out.stderr
    header = out.stdout.splitlines()[0]
    assert "NAME" in header and "ENGINE" in header
    assert any(line.startswith("base") and "transformers" in line and "1/1" in line for line in out.stdout.splitlines())
    data = json.loads(corral(server, corral_home, "model", "list", "--json").stdout)
    assert [m["name"] for m in data["models"]] == ["base"]


def test_deploy_scale_restart_stop_with_progress(server: Server, corral_home: Path) -> None:
    out = corral(server, corral_home, "model", "deploy", "cli-model", "--engine", "transformers",
                 "--source", "demo:tiny-llama", "--option", "max_batch_size=4")
    assert out.returncode == 0, out.stderr
    assert "cli-model" in out.stderr + out.stdout and "1/1" in out.stderr + out.stdout
    load = Load(server.url, "cli-model")
    try:
        out = corral(server, corral_home, "model", "scale", "cli-model", "2")
        assert out.returncode == 0, out.stderr
        assert "2/2" in out.stderr + out.stdout
        out = corral(server, corral_home, "model", "restart", "cli-model")
        assert out.returncode == 0, out.stderr
    finally:
        statuses = load.stop()
    assert set(statuses) == {200}, load.errors[:3]
    listed = json.loads(corral(server, corral_home, "model", "list", "--json").stdout)
    model = next(m for m in listed["models"] if m["name"] == "cli-model")
    assert model["ready"] == 2 and model["options"] == {"max_batch_size": 4}

    assert corral(server, corral_home, "model", "offline", "cli-model").returncode == 0
    assert corral(server, corral_home, "model", "online", "cli-model").returncode == 0
    assert corral(server, corral_home, "model", "routing", "cli-model", "round_robin").returncode == 0
    out = corral(server, corral_home, "model", "stop", "cli-model")
    assert out.returncode == 0, out.stderr

    status = corral(server, corral_home, "status")
    assert status.returncode == 0 and "standalone" in status.stdout
    audit = corral(server, corral_home, "audit", "--limit", "50")
    for action in ("deploy", "scale", "restart", "offline", "online", "update", "stop"):
        assert action in audit.stdout, audit.stdout


def test_cli_errors_say_what_to_do(server: Server, corral_home: Path, tmp_path: Path) -> None:
    no_token = corral(server, corral_home, "model", "list", token=None)
    assert no_token.returncode == 1 and "token" in no_token.stderr and "Traceback" not in no_token.stderr
    missing = corral(server, corral_home, "model", "scale", "ghost", "2")
    assert missing.returncode == 1 and "ghost" in missing.stderr
    env_server = Server(server.process, 1, server.log_path)  # nothing listens on port 1
    down = corral(env_server, corral_home, "status")
    assert down.returncode == 1 and "cannot reach Corral" in down.stderr and "Traceback" not in down.stderr
    bad = corral(server, corral_home, "model", "deploy", "x", "--engine", "nope", "--source", "y")
    assert bad.returncode == 1 and "engine" in bad.stderr


def test_chat_streams_and_keeps_the_conversation(server: Server, corral_home: Path) -> None:
    out = corral(server, corral_home, "chat", "base", "-p", "max_tokens=5", "-p", "temperature=0",
                 stdin="hello\n/params\n/reset\nagain\n/quit\n")
    assert out.returncode == 0, out.stderr
    assert "max_tokens" in out.stdout + out.stderr
    unknown = corral(server, corral_home, "chat", "nope", stdin="hi\n")
    assert unknown.returncode == 1 and "base" in unknown.stderr  # lists the models it does serve
