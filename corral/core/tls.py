"""TLS of a Corral process: what it serves with and what it trusts.

``TlsSettings`` holds three file paths: the certificate and private key a server
presents (``--tls-cert``/``--tls-key``, ``[server] tls_cert``/``tls_key``) and the CA
file its outbound cluster hops verify other Corral processes against (``--tls-ca``,
``[server] tls_ca``). ``check_tls`` validates them once at start, with a message naming
the flag or key at fault; ``client_context`` builds the one ``ssl.SSLContext`` a process
hands to every client it makes (httpx for the control plane, aiohttp for the hot path),
so that every hop verifies the same way.

Only paths live here, never file contents: a private key is read by OpenSSL (in
``check_tls`` and by uvicorn), never by Corral's own code, so it cannot reach a log or
an error message.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass

from corral.core.errors import ConfigError


@dataclass(frozen=True)
class TlsNames:
    """What the user called each setting, for error messages: a flag or a config key."""

    cert: str
    key: str
    ca: str


FLAGS = TlsNames(cert="--tls-cert", key="--tls-key", ca="--tls-ca")
CONFIG_KEYS = TlsNames(cert="[server] tls_cert", key="[server] tls_key", ca="[server] tls_ca")
CA_ENV = "CORRAL_TLS_CA"  # the CA file when no --tls-ca is given (every command reads it)


@dataclass(frozen=True)
class TlsSettings:
    cert: str | None = None  # PEM certificate chain this process serves with
    key: str | None = None  # PEM private key of ``cert`` (unencrypted: servers start unattended)
    ca: str | None = None  # PEM CA certificates other Corral processes' certificates are checked against

    @property
    def serving(self) -> bool:
        """Whether this process's own server speaks HTTPS."""
        return self.cert is not None and self.key is not None

    @property
    def scheme(self) -> str:
        """The scheme of the URLs this process advertises for itself."""
        return "https" if self.serving else "http"


def _readable(name: str, path: str) -> None:
    if os.path.isdir(path):
        raise ConfigError(f"{name} {path}: is a directory, not a PEM file")
    try:
        with open(path, "rb") as f:
            f.read(1)
    except FileNotFoundError:
        raise ConfigError(f"{name} {path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{name} {path}: cannot read it ({exc.strerror or exc})") from None


def _no_password() -> bytes:
    # Called by OpenSSL only for an encrypted key; without this it would prompt on the
    # terminal, and a service has nobody to answer.
    raise ConfigError("encrypted")


def check_tls(tls: TlsSettings, names: TlsNames = FLAGS) -> TlsSettings:
    """``tls`` if its files are usable, else ``ConfigError`` naming the flag or key at
    fault: one of cert and key without the other, a file missing or unreadable, a file
    that is not PEM, a key that does not match its certificate or is encrypted."""
    if (tls.cert is None) != (tls.key is None):
        given, missing = (names.cert, names.key) if tls.cert is not None else (names.key, names.cert)
        raise ConfigError(f"{given} needs {missing} too: a server presents a certificate and its private key together")
    if tls.cert is not None and tls.key is not None:
        _readable(names.cert, tls.cert)
        _readable(names.key, tls.key)
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            server.load_cert_chain(tls.cert, tls.key, password=_no_password)
        except ConfigError:
            raise ConfigError(f"{names.key} {tls.key}: the private key is encrypted; give an unencrypted key "
                              "(a server starts without anyone to type a passphrase)") from None
        except ssl.SSLError as exc:
            if exc.reason == "KEY_VALUES_MISMATCH":
                raise ConfigError(f"{names.key} {tls.key}: not the private key of {names.cert} {tls.cert}") from None
            raise ConfigError(
                f"{names.cert} {tls.cert} / {names.key} {tls.key}: not a PEM certificate and private key "
                f"({exc.reason or exc})"
            ) from None
    if tls.ca is not None:
        _readable(names.ca, tls.ca)
        client_context(tls.ca, names.ca)
    return tls


def client_context(ca: str | None, name: str = FLAGS.ca) -> ssl.SSLContext:
    """The context every outbound hop of a process uses: certificates and host names
    verified against ``ca`` when given (that file only: a private CA should not be mixed
    with the public ones), else against the system's trust store."""
    try:
        return ssl.create_default_context(cafile=ca)
    except FileNotFoundError:
        raise ConfigError(f"{name} {ca}: no such file") from None
    except ssl.SSLError as exc:
        raise ConfigError(f"{name} {ca}: no PEM CA certificate in it ({exc.reason or exc})") from None
    except OSError as exc:
        raise ConfigError(f"{name} {ca}: cannot read it ({exc.strerror or exc})") from None


def tls_failure(exc: BaseException) -> str | None:
    """Words for a TLS failure behind ``exc`` (HTTP clients wrap the ``ssl`` error in
    their own connect error), or ``None`` when it is not one: what a log line or the
    CLI says instead of a bare "ConnectError"."""
    seen: BaseException | None = exc
    for _ in range(8):  # a bounded walk: chains are short, and could in theory loop
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLCertVerificationError):
            # aiohttp's certificate error is one too, without the attribute: its cause has it
            why = getattr(seen, "verify_message", None)
            if why is None and (seen.__cause__ or seen.__context__) is not None:
                seen = seen.__cause__ or seen.__context__
                continue
            return f"certificate not trusted ({why or seen}): give the CA that signed it (--tls-ca or {CA_ENV})"
        if isinstance(seen, ssl.SSLError):
            hint = " (is it serving plain http?)" if seen.reason == "WRONG_VERSION_NUMBER" else ""
            return f"TLS handshake failed ({seen.reason or seen}){hint}"
        seen = seen.__cause__ or seen.__context__
    return None
