"""A throwaway certificate authority for TLS tests, made with the ``openssl`` CLI.

``make_tls_files(folder)`` writes a CA, a server certificate signed by it for
``127.0.0.1`` and ``localhost`` with its private key, an encrypted copy of that key,
and a second CA that signed nothing (what a client trusting the wrong CA has). EC P-256
keys: each takes milliseconds, so unit tests can afford them too.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

ENCRYPTED_KEY_PASSPHRASE = "not-a-real-passphrase"


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path
    encrypted_key: Path  # ``key`` under ENCRYPTED_KEY_PASSPHRASE
    other_ca: Path  # a CA that signed nothing here

    def server_flags(self) -> list[str]:
        """What a Corral server process is given to serve HTTPS and trust its peers."""
        return ["--tls-cert", str(self.cert), "--tls-key", str(self.key), "--tls-ca", str(self.ca)]

    def context(self) -> ssl.SSLContext:
        """A client context trusting only the test CA."""
        return ssl.create_default_context(cafile=str(self.ca))


def _openssl(*args: str) -> None:
    done = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {done.stderr}")


def _ca(folder: Path, name: str) -> tuple[Path, Path]:
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN=Corral test {name}",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return cert, key


def make_tls_files(folder: Path) -> TlsFiles:
    if shutil.which("openssl") is None:
        pytest.fail("the openssl CLI is needed to make a throwaway CA: run ./scripts/install-system-deps.sh "
                    "(or apt-get install openssl)")
    folder.mkdir(parents=True, exist_ok=True)
    ca, ca_key = _ca(folder, "ca")
    other_ca, _ = _ca(folder, "other-ca")
    key, csr, cert = folder / "server.key", folder / "server.csr", folder / "server.pem"
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(csr), "-subj", "/CN=localhost")
    ext = folder / "server.ext"
    # what strict verifiers (Python 3.13's default VERIFY_X509_STRICT) want of a leaf
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\n"
                   "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
                   "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
             "-out", str(cert), "-days", "2", "-extfile", str(ext))
    encrypted = folder / "server-encrypted.key"
    _openssl("pkey", "-in", str(key), "-aes256", "-passout", f"pass:{ENCRYPTED_KEY_PASSPHRASE}", "-out", str(encrypted))
    return TlsFiles(ca=ca, cert=cert, key=key, encrypted_key=encrypted, other_ca=other_ca)
