"""TLS settings: the checks and their messages (naming the flag or config key at fault),
the flags on every server and management command, the ``[server] tls_*`` keys, the
client context every hop shares, and the ``https://`` URLs a TLS process advertises.
Certificates come from a throwaway CA made with the openssl CLI (``tests/services/tls.py``)."""

from __future__ import annotations

import argparse
import ssl
from pathlib import Path

import pytest

from corral.cli import tls_args
from corral.cli.cluster import _advertise, _capacity
from corral.cli.main import _parser
from corral.cli.serve import make_server
from corral.cli.start import build_settings
from corral.cli.tls_args import client_tls, tls_from_args
from corral.config.loader import load_settings
from corral.core import tls as core_tls
from corral.core.errors import ConfigError
from corral.core.tls import CONFIG_KEYS, TlsSettings, check_tls, client_context, tls_failure
from tests.services.tls import TlsFiles, make_tls_files


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(autouse=True)
def _no_ca_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CORRAL_TLS_CA", raising=False)


def refused(tls: TlsSettings, names: core_tls.TlsNames = core_tls.FLAGS) -> str:
    with pytest.raises(ConfigError) as info:
        check_tls(tls, names)
    return info.value.message


def parse(*argv: str) -> argparse.Namespace:
    return _parser().parse_args(list(argv))


# ---------------------------------------------------------------------------- checks


def test_usable_files_pass_and_say_what_they_serve(files: TlsFiles) -> None:
    tls = check_tls(TlsSettings(str(files.cert), str(files.key), str(files.ca)))
    assert tls.serving and tls.scheme == "https"
    trusting = check_tls(TlsSettings(ca=str(files.ca)))
    assert not trusting.serving and trusting.scheme == "http"  # a CA alone is for calling out


def test_a_certificate_needs_its_key_and_the_other_way_round(files: TlsFiles) -> None:
    assert refused(TlsSettings(cert=str(files.cert))).startswith("--tls-cert needs --tls-key too")
    assert refused(TlsSettings(key=str(files.key))).startswith("--tls-key needs --tls-cert too")
    assert refused(TlsSettings(key=str(files.key)), CONFIG_KEYS).startswith("[server] tls_key needs [server] tls_cert")


def test_missing_files_are_named_with_their_flag(files: TlsFiles, tmp_path: Path) -> None:
    gone = str(tmp_path / "nope.pem")
    assert refused(TlsSettings(gone, str(files.key))) == f"--tls-cert {gone}: no such file"
    assert refused(TlsSettings(str(files.cert), gone)) == f"--tls-key {gone}: no such file"
    assert refused(TlsSettings(ca=gone)) == f"--tls-ca {gone}: no such file"
    assert refused(TlsSettings(ca=str(tmp_path))) == f"--tls-ca {tmp_path}: is a directory, not a PEM file"


def test_files_that_are_not_what_they_claim(files: TlsFiles, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not PEM\n")
    message = refused(TlsSettings(str(junk), str(files.key)))
    assert message.startswith(f"--tls-cert {junk} / --tls-key {files.key}: not a PEM certificate and private key")
    # the other CA's key is a valid key, of another certificate
    other_key = files.other_ca.with_suffix(".key")
    assert refused(TlsSettings(str(files.cert), str(other_key))) == (
        f"--tls-key {other_key}: not the private key of --tls-cert {files.cert}")
    assert refused(TlsSettings(ca=str(junk))).startswith(f"--tls-ca {junk}: no PEM CA certificate in it")
    assert refused(TlsSettings(ca=str(files.key))).startswith(f"--tls-ca {files.key}: no PEM CA certificate")


def test_an_encrypted_key_is_refused_without_prompting(files: TlsFiles) -> None:
    # OpenSSL would ask on the terminal; a service has nobody there
    message = refused(TlsSettings(str(files.cert), str(files.encrypted_key)))
    assert message.startswith(f"--tls-key {files.encrypted_key}: the private key is encrypted")


def test_no_message_carries_key_material(files: TlsFiles) -> None:
    body = [line for line in files.key.read_text().splitlines() if line and not line.startswith("-----")]
    messages = [refused(TlsSettings(str(files.key), str(files.key))), refused(TlsSettings(ca=str(files.key))),
                refused(TlsSettings(str(files.cert), str(files.other_ca.with_suffix(".key"))))]
    for message in messages:
        assert not any(line in message for line in body)


# ---------------------------------------------------------------------------- the client context


def test_the_client_context_trusts_the_ca_file_only_and_checks_host_names(files: TlsFiles) -> None:
    context = client_context(str(files.ca))
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
    assert [dict(c["subject"][0])["commonName"] for c in context.get_ca_certs()] == ["Corral test ca"]
    system = client_context(None)  # the system's trust store: not the test CA
    assert system.verify_mode is ssl.CERT_REQUIRED and "Corral test ca" not in str(system.get_ca_certs())


def test_tls_failures_are_put_in_words() -> None:
    verify = ssl.SSLCertVerificationError(1, "certificate verify failed")
    verify.verify_message = "unable to get local issuer certificate"
    wrapped = ConnectionError("connect failed")
    wrapped.__cause__ = verify
    assert tls_failure(wrapped) == (
        "certificate not trusted (unable to get local issuer certificate): give the CA that signed it "
        "(--tls-ca or CORRAL_TLS_CA)")
    assert tls_failure(ConnectionRefusedError(111, "refused")) is None


# ---------------------------------------------------------------------------- flags


@pytest.mark.parametrize("command", [["start"], ["controller"], ["worker"], ["gateway"]])
def test_every_server_takes_the_three_flags(command: list[str], files: TlsFiles) -> None:
    args = parse(*command, "--tls-cert", str(files.cert), "--tls-key", str(files.key), "--tls-ca", str(files.ca))
    assert tls_from_args(args) == TlsSettings(str(files.cert), str(files.key), str(files.ca))
    assert tls_from_args(parse(*command)) == TlsSettings()


@pytest.mark.parametrize("command", [["status"], ["model", "list"], ["key", "list"], ["audit"], ["chat", "m"]])
def test_management_commands_take_a_ca_only(command: list[str], files: TlsFiles,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    args = parse(*command, "--address", "https://127.0.0.1:8001", "--tls-ca", str(files.ca))
    trust = client_tls(args, "https://127.0.0.1:8001")
    assert trust is not None
    assert [dict(c["subject"][0])["commonName"] for c in trust.get_ca_certs()] == ["Corral test ca"]
    assert client_tls(parse(*command), "http://127.0.0.1:8001") is None  # plain HTTP: library defaults
    with pytest.raises(SystemExit):
        parse(*command, "--tls-cert", str(files.cert))
    assert "unrecognized arguments: --tls-cert" in capsys.readouterr().err


def test_the_ca_comes_from_the_environment_when_no_flag_gives_it(files: TlsFiles, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_TLS_CA", str(files.ca))
    assert tls_from_args(parse("status")).ca == str(files.ca)
    assert tls_from_args(parse("gateway", "--tls-ca", str(files.other_ca))).ca == str(files.other_ca)
    monkeypatch.setenv("CORRAL_TLS_CA", str(tmp_path / "gone.pem"))
    with pytest.raises(ConfigError) as info:
        client_tls(parse("status"), "http://127.0.0.1:8000")
    assert info.value.message == f"CORRAL_TLS_CA {tmp_path / 'gone.pem'}: no such file"
    assert tls_args.CA_ENV == core_tls.CA_ENV


def test_uvicorn_is_given_the_certificate_and_key(files: TlsFiles) -> None:
    tls = TlsSettings(str(files.cert), str(files.key), str(files.ca))
    config = make_server(object(), "127.0.0.1", 0, "info", tls=tls).config
    assert (config.ssl_certfile, config.ssl_keyfile) == (str(files.cert), str(files.key))
    plain = make_server(object(), "127.0.0.1", 0, "info", tls=TlsSettings(ca=str(files.ca))).config
    assert (plain.ssl_certfile, plain.ssl_keyfile) == (None, None)  # a CA alone serves plain HTTP


# ---------------------------------------------------------------------------- config keys


def test_server_keys_load_into_tls_settings(files: TlsFiles, tmp_path: Path) -> None:
    config = tmp_path / "corral.toml"
    config.write_text(f'[server]\ntls_cert = "{files.cert}"\ntls_key = "{files.key}"\ntls_ca = "{files.ca}"\n')
    assert load_settings(config).server.tls == TlsSettings(str(files.cert), str(files.key), str(files.ca))
    config.write_text("[server]\nport = 9000\n")
    assert load_settings(config).server.tls == TlsSettings()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[server]\nport = 9000\ntls_cert = "c.pem"\n',
         "corral.toml:3: server.tls_cert: needs tls_key too: a server presents a certificate and its private key"),
        ('[server]\ntls_key = "k.pem"\n', "corral.toml:2: server.tls_key: needs tls_cert too"),
        ('[server]\ntls_ca = ""\n', "corral.toml:2: server.tls_ca: String should have at least 1 character"),
        ("[server]\ntls_cert = 1\n", "corral.toml:2: server.tls_cert: Input should be a valid string"),
        ('[server]\ntls_certs = "c.pem"\n',
         "corral.toml:2: unknown key 'tls_certs' in [server] (did you mean 'tls_cert'?)"),
    ],
)
def test_bad_server_keys_name_the_line(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "corral.toml"
    config.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    assert info.value.message.startswith(f"{tmp_path}/{message}")


def test_corral_start_reads_the_keys_and_flags_override_them(files: TlsFiles, tmp_path: Path) -> None:
    config = tmp_path / "corral.toml"
    model = '[[models]]\nname = "m"\nkind = "llm"\nengine = "transformers"\nsource = "demo:tiny-llama"\n'
    config.write_text(f'[server]\ntls_cert = "{files.cert}"\ntls_key = "{files.key}"\n{model}')
    loaded = build_settings(parse("start", "--config", str(config))).server.tls
    assert loaded == TlsSettings(str(files.cert), str(files.key))
    overridden = build_settings(parse("start", "--config", str(config), "--tls-ca", str(files.ca))).server.tls
    assert overridden == TlsSettings(str(files.cert), str(files.key), str(files.ca))
    # a file named in the config is reported by its key, one named by a flag by its flag
    config.write_text(f'[server]\ntls_cert = "{tmp_path / "gone.pem"}"\ntls_key = "{files.key}"\n{model}')
    with pytest.raises(ConfigError) as info:
        build_settings(parse("start", "--config", str(config)))
    assert info.value.message == f"[server] tls_cert {tmp_path / 'gone.pem'}: no such file"
    with pytest.raises(ConfigError) as info:
        build_settings(parse("start", "--config", str(config), "--tls-cert", str(tmp_path / "flag.pem")))
    assert info.value.message == f"--tls-cert {tmp_path / 'flag.pem'}: no such file"
    with pytest.raises(ConfigError) as info:
        build_settings(parse("start", "--model", "demo:tiny-llama", "--tls-key", str(files.key)))
    assert info.value.message.startswith("--tls-key needs --tls-cert too")


# ---------------------------------------------------------------------------- advertised URLs


def test_a_tls_worker_advertises_https(files: TlsFiles) -> None:
    serving = TlsSettings(str(files.cert), str(files.key), str(files.ca))
    worker = parse("worker", "--controller", "https://127.0.0.1:8001", "--port", "8100")
    assert _advertise(worker, serving) == "https://127.0.0.1:8100"
    assert _advertise(worker, TlsSettings(ca=str(files.ca))) == "http://127.0.0.1:8100"
    bare = parse("worker", "--port", "8100", "--advertise-address", "10.0.0.11:8100")
    assert _advertise(bare, serving) == "https://10.0.0.11:8100"
    plain = parse("worker", "--advertise-address", "http://10.0.0.11:8100")
    with pytest.raises(ConfigError) as info:
        _advertise(plain, serving)
    assert info.value.message == ("--advertise-address http://10.0.0.11:8100: this worker serves HTTPS (--tls-cert): "
                                  "advertise an https:// URL")


def test_launched_workers_reach_a_tls_controller_over_https_and_serve_tls(files: TlsFiles,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    flags = ["--tls-cert", str(files.cert), "--tls-key", str(files.key), "--tls-ca", str(files.ca)]
    args = parse("controller", "--port", "8001", "--launcher", "local", *flags)
    local = _capacity(args, tls_from_args(args)).launcher
    assert local._url == "https://127.0.0.1:8001"
    command = local.command("launched-1", 9100)
    assert command[command.index("--controller") + 1] == "https://127.0.0.1:8001"
    assert [command[command.index(flag) + 1] for flag in ("--tls-cert", "--tls-key", "--tls-ca")] == [
        str(files.cert), str(files.key), str(files.ca)]
    args = parse("controller", "--port", "8001", "--launcher", "ray://10.1.2.3:6379", *flags)
    assert _capacity(args, tls_from_args(args)).launcher._url == "https://127.0.0.1:8001"
