"""Virtual keys through HTTP on a real standalone server: the admin API creates, lists,
changes and revokes them; the official OpenAI SDK uses them; models, expiry and limits are enforced; and no secret ever reaches a log or
a request record."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.integration.conftest import write_config
from tests.integration.servers import Server, corral_env, start_corral

STATIC = "static-key-77f1"
CHAT = "demo-chat"
OTHER = "demo-other"
CONFIG = f"""
[server]
records = "sqlite:///{{records}}"

[[models]]
name = "{CHAT}"
kind = "llm"
engine = "transformers"
source = "demo:tiny-llama"

[[models]]
name = "{OTHER}"
kind = "llm"
engine = "transformers"
source = "demo:tiny-llama"
"""
SECRETS: list[str] = []  # every key this module created: none may appear in any log or record


@pytest.fixture(scope="module")
def server(corral_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("keys")
    config = write_config(folder, CONFIG.replace("{records}", str(folder / "records.db")))
    (folder / "logs").mkdir()
    srv = start_corral(["--config", str(config), "--api-key", STATIC], corral_home, folder / "logs")
    srv.records = folder / "records.db"  # type: ignore[attr-defined]
    srv.logs = folder / "logs"  # type: ignore[attr-defined]
    yield srv
    srv.stop()


def admin(server: Server) -> httpx.Client:
    return httpx.Client(base_url=f"{server.url}/admin/v1", timeout=30)


def create(server: Server, **body: object) -> dict:
    with admin(server) as a:
        resp = a.post("/keys", json={"name": "t", **body})
    assert resp.status_code == 201, resp.text
    out = resp.json()
    SECRETS.append(out["key"])
    return out


def sdk(server: Server, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=60)


def chat(server: Server, key: str, model: str = CHAT, max_tokens: int = 4) -> openai.types.chat.ChatCompletion:
    with sdk(server, key) as c:
        return c.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=max_tokens)


def test_created_key_works_is_listed_without_secret_and_revoke_refuses(server: Server) -> None:
    made = create(server, name="team-a", owner="alice", models=["demo-*"])
    assert made["key"].startswith("sk-corral-") and made["id"].startswith("key_")
    assert chat(server, made["key"]).choices[0].message is not None
    assert chat(server, STATIC).choices  # the static key keeps working beside virtual ones
    with admin(server) as a:
        listed = a.get("/keys").json()["keys"]
        mine = next(k for k in listed if k["id"] == made["id"])
        assert mine["name"] == "team-a" and mine["owner"] == "alice" and mine["models"] == ["demo-*"]
        assert made["key"] not in a.get("/keys").text and made["key"] not in a.get(f"/keys/{made['id']}").text
        assert a.delete(f"/keys/{made['id']}").json() == {"ok": True}
        assert a.get(f"/keys/{made['id']}").json()["key"]["revoked_at"] > 0
        assert a.delete(f"/keys/{made['id']}").status_code == 409  # already revoked
        assert a.patch(f"/keys/{made['id']}", json={"rpm": 1}).status_code == 409
    deadline = time.monotonic() + 1.0
    while True:  # refused within a second of the revoke
        try:
            chat(server, made["key"])
        except openai.AuthenticationError as exc:
            assert exc.status_code == 401 and exc.code == "revoked_api_key"
            break
        assert time.monotonic() < deadline, "revoked key still accepted after 1 s"
        time.sleep(0.05)
    with pytest.raises(openai.AuthenticationError):
        chat(server, "sk-corral-not-a-key")


def test_model_limited_key_gets_403_on_another_and_404_on_a_missing_one(server: Server) -> None:
    key = create(server, name="only-chat", models=[CHAT])["key"]
    time.sleep(0.6)
    assert chat(server, key).choices
    with pytest.raises(openai.PermissionDeniedError) as denied:
        chat(server, key, OTHER)
    assert denied.value.status_code == 403 and denied.value.code == "permission_denied"
    with pytest.raises(openai.NotFoundError):
        chat(server, key, "no-such-model")
    with sdk(server, key) as c:  # the key sees only its own models
        assert [m.id for m in c.models.list()] == [CHAT]
        with pytest.raises(openai.NotFoundError):
            c.models.retrieve(OTHER)
    with sdk(server, STATIC) as c:
        assert {m.id for m in c.models.list()} == {CHAT, OTHER}


def test_expired_key_is_refused(server: Server) -> None:
    made = create(server, name="short", expires_at=time.time() + 1.5)
    time.sleep(0.6)
    assert chat(server, made["key"]).choices
    time.sleep(1.2)
    with pytest.raises(openai.AuthenticationError) as refused:
        chat(server, made["key"])
    assert "expired" in refused.value.message


def test_patch_changes_models_and_limits(server: Server) -> None:
    made = create(server, name="changing")
    with admin(server) as a:
        resp = a.patch(f"/keys/{made['id']}", json={"models": [OTHER], "rpm": 100})
        assert resp.status_code == 200 and resp.json()["key"]["models"] == [OTHER] and resp.json()["key"]["rpm"] == 100
    time.sleep(0.6)
    with pytest.raises(openai.PermissionDeniedError):
        chat(server, made["key"], CHAT)
    assert chat(server, made["key"], OTHER).choices


def test_rpm_limit_429_with_headers_then_recovers(server: Server) -> None:
    key = create(server, name="rpm", rpm=6)["key"]  # one request back every 10 s
    time.sleep(0.6)
    with sdk(server, key) as c:
        left = []
        for _ in range(6):  # every answer says what is left, as OpenAI's do
            answer = c.chat.completions.with_raw_response.create(
                model=CHAT, messages=[{"role": "user", "content": "x"}], max_tokens=1
            )
            assert answer.headers["x-ratelimit-limit-requests"] == "6"
            assert answer.headers["x-ratelimit-reset-requests"].endswith("s")
            left.append(answer.headers["x-ratelimit-remaining-requests"])
        assert left == ["5", "4", "3", "2", "1", "0"]
        with pytest.raises(openai.RateLimitError) as limited:
            c.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "x"}], max_tokens=1)
    headers = limited.value.response.headers
    assert limited.value.code == "rate_limit_exceeded"
    assert headers["x-ratelimit-limit-requests"] == "6" and headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"].endswith("s")
    retry = int(headers["retry-after"])
    assert 1 <= retry <= 11
    time.sleep(retry + 0.2)
    assert chat(server, key, max_tokens=1).choices


def test_tpm_limit_counts_real_usage(server: Server) -> None:
    key = create(server, name="tpm", tpm=60)["key"]  # one token back every second
    time.sleep(0.6)
    with sdk(server, key) as c:  # reserves 16, then charges prompt + completion
        raw = c.chat.completions.with_raw_response.create(
            model=CHAT, messages=[{"role": "user", "content": "hello"}], max_tokens=16
        )
    first = raw.parse()
    assert first.usage is not None and first.usage.total_tokens > 0
    # a whole answer starts once its real usage is charged (one token back per second meanwhile)
    assert raw.headers["x-ratelimit-limit-tokens"] == "60"
    assert 0 <= int(raw.headers["x-ratelimit-remaining-tokens"]) - (60 - first.usage.total_tokens) <= 2
    spent = 0
    with pytest.raises(openai.RateLimitError) as limited:
        for _ in range(10):
            spent += chat(server, key, max_tokens=16).usage.total_tokens  # type: ignore[union-attr]
    assert first.usage.total_tokens + spent <= 60 + 40  # refused once the minute's tokens were used
    headers = limited.value.response.headers
    assert headers["x-ratelimit-limit-tokens"] == "60" and "x-ratelimit-reset-tokens" in headers
    time.sleep(int(headers["retry-after"]) + 0.5)
    assert chat(server, key, max_tokens=1).choices


def test_concurrency_limit_holds_under_32_parallel_requests(server: Server) -> None:
    key = create(server, name="conc", max_concurrency=2)["key"]
    time.sleep(0.6)
    client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=60)

    async def one() -> int:
        try:
            await client.chat.completions.create(
                model=CHAT, messages=[{"role": "user", "content": "count"}], max_tokens=24
            )
            return 200
        except openai.RateLimitError as exc:
            assert exc.response.headers["x-ratelimit-limit-concurrency"] == "2"
            return 429

    async def run() -> list[int]:
        return await asyncio.gather(*(one() for _ in range(32)))

    statuses = asyncio.run(run())
    assert 2 <= statuses.count(200) < 32 and statuses.count(429) > 0, statuses
    assert chat(server, key).choices  # every slot was given back


def test_request_budget_stops_the_key(server: Server) -> None:
    key = create(server, name="budget", budget_requests=2, budget_period="day")["key"]
    time.sleep(0.6)
    chat(server, key)
    chat(server, key)
    with pytest.raises(openai.RateLimitError) as spent:
        chat(server, key)
    assert "budget" in spent.value.message and int(spent.value.response.headers["retry-after"]) > 0


@pytest.mark.parametrize(
    "body",
    [
        {}, {"name": 5}, {"name": ""}, {"name": "x" * 129}, {"name": "a", "rpm": -1}, {"name": "a", "rpm": "5"},
        {"name": "a", "models": "chat"}, {"name": "a", "models": [1]}, {"name": "a", "unknown": 1},
        {"name": "a", "budget_period": "week"}, {"name": "a", "expires_at": 1.0}, {"name": "a", "tpm": 10**13},
        {"name": "a", "models": ["m"] * 257}, [], "key",
    ],
)
def test_bad_create_bodies_get_400(server: Server, body: object) -> None:
    with admin(server) as a:
        resp = a.post("/keys", json=body)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["type"] == "invalid_request_error"


def test_bad_patches_get_400_and_unknown_ids_404(server: Server) -> None:
    made = create(server, name="patched")
    with admin(server) as a:
        for body in ({}, {"name": None}, {"rpm": 1.5}, {"id": "key_x"}, {"key": "sk-corral-x"}):
            assert a.patch(f"/keys/{made['id']}", json=body).status_code == 400, body
        assert a.patch("/keys/key_nope", json={"rpm": 1}).status_code == 404
        assert a.get("/keys/key_nope").status_code == 404


def cli(server: Server, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = corral_env(home)
    env["CORRAL_ADDRESS"] = server.url
    return subprocess.run([sys.executable, "-m", "corral.cli.main", "key", *args], env=env, capture_output=True,
                          text=True, timeout=120)


def test_cli_create_list_update_revoke(server: Server, corral_home: Path) -> None:
    made = cli(server, corral_home, "create", "cli-team", "--owner", "bob", "--model", CHAT, "--rpm", "50",
               "--expires", "30d")
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    SECRETS.append(secret)
    assert secret.startswith("sk-corral-") and "shown only now" in made.stderr
    key_id = made.stderr.split()[1]
    assert chat(server, secret).choices
    listed = cli(server, corral_home, "list")
    assert listed.returncode == 0 and secret not in listed.stdout
    row = next(line for line in listed.stdout.splitlines() if line.startswith(key_id))
    assert "cli-team" in row and "bob" in row and "50 rpm" in row and "active" in row and secret[-4:] in row
    changed = cli(server, corral_home, "update", key_id, "--tpm", "1000")
    assert changed.returncode == 0 and "50 rpm, 1000 tpm" in changed.stdout, changed.stderr
    assert cli(server, corral_home, "update", key_id).returncode == 2  # nothing to change
    bad = cli(server, corral_home, "update", key_id, "--rpm", "-3")
    assert bad.returncode == 2 and "negative" in bad.stderr
    assert cli(server, corral_home, "revoke", key_id).returncode == 0
    again = cli(server, corral_home, "revoke", key_id)
    assert again.returncode == 1 and "already revoked" in again.stderr
    assert "revoked" in next(line for line in cli(server, corral_home, "list").stdout.splitlines() if line.startswith(key_id))
    with pytest.raises(openai.AuthenticationError):
        chat(server, secret)
    missing = cli(server, corral_home, "revoke", "key_000000000000")
    assert missing.returncode == 1 and "no key" in missing.stderr


def test_a_virtual_key_works_over_anthropic_messages_with_its_limits(server: Server) -> None:
    """The key check and the limits are protocol-neutral: the Anthropic SDK's x-api-key
    carries a virtual key, a model outside it is Anthropic's 403, its rpm Anthropic's 429."""
    import anthropic

    key = create(server, name="claude-side", models=[CHAT], rpm=2)["key"]
    time.sleep(0.6)
    client = anthropic.Anthropic(base_url=server.url, api_key=key, max_retries=0, timeout=60)
    said = client.messages.create(model=CHAT, max_tokens=4, messages=[{"role": "user", "content": "hi"}])
    assert said.role == "assistant" and said.usage.output_tokens >= 1
    with pytest.raises(anthropic.PermissionDeniedError) as denied:
        client.messages.create(model=OTHER, max_tokens=4, messages=[{"role": "user", "content": "hi"}])
    assert denied.value.body["error"]["type"] == "permission_error"  # type: ignore[index]
    client.messages.create(model=CHAT, max_tokens=4, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(anthropic.RateLimitError) as limited:
        client.messages.create(model=CHAT, max_tokens=4, messages=[{"role": "user", "content": "hi"}])
    assert limited.value.status_code == 429 and limited.value.response.headers["x-ratelimit-limit-requests"] == "2"
    assert int(limited.value.response.headers["retry-after"]) >= 1
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=server.url, api_key="sk-corral-nope", max_retries=0).messages.create(
            model=CHAT, max_tokens=4, messages=[{"role": "user", "content": "hi"}])


def test_zz_no_secret_in_any_log_or_record(server: Server) -> None:
    """Last in the module (zz): greps everything the server wrote for every key made."""
    assert SECRETS
    time.sleep(1.5)  # records are written behind the requests
    texts = [p.read_text(errors="replace") for p in Path(server.logs).rglob("*") if p.is_file()]  # type: ignore[attr-defined]
    db = sqlite3.connect(server.records)  # type: ignore[attr-defined]
    try:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            texts.append("\n".join(repr(row) for row in db.execute(f"SELECT * FROM {table}")))  # noqa: S608
        ids = {r[0] for r in db.execute("SELECT api_key_id FROM corral_requests WHERE api_key_id LIKE 'key_%'")}
    finally:
        db.close()
    assert len(ids) >= 5  # requests are attributed to their key's id
    with admin(server) as a:
        texts += [a.get("/keys").text, a.get("/audit").text, a.get("/status").text]
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    texts.append(metrics)
    for key_id in ids:  # usage per key on /metrics, labelled by the id
        assert f'corral_key_requests_total{{key_id="{key_id}",outcome="ok"}}' in metrics
        assert f'corral_key_tokens_total{{key_id="{key_id}",kind="completion"}}' in metrics
    for secret in SECRETS:
        for text in texts:
            assert secret not in text and secret[len("sk-corral-"):] not in text
