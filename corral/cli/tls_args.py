"""``--tls-cert``, ``--tls-key`` and ``--tls-ca``: defined here once for every command
that serves (``start``, ``controller``, ``worker``, ``gateway``: all three) or calls a
Corral server (``status``, ``model``, ``key``, ``audit``, ``chat``: ``--tls-ca`` only),
and read back into one checked ``TlsSettings``.

What a process trusts comes from ``--tls-ca``, else ``[server] tls_ca`` of its config
file, else ``CORRAL_TLS_CA``, else the system's trust store.

Standard library only at import (``corral.core.tls`` is imported by the functions that
read the flags), as the other ``*_args`` modules: ``corral --help`` stays fast.
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import ssl

    from corral.core.tls import TlsSettings

CA_ENV = "CORRAL_TLS_CA"  # = corral.core.tls.CA_ENV (a unit test keeps them equal)


def add_tls_arguments(p: argparse.ArgumentParser, *, serving: bool) -> None:
    """``serving``: the command runs a server (it takes a certificate and key too)."""
    if serving:
        p.add_argument("--tls-cert", metavar="FILE",
                       help="serve HTTPS with this PEM certificate (chain); needs --tls-key")
        p.add_argument("--tls-key", metavar="FILE", help="the unencrypted PEM private key of --tls-cert")
    what = "other Corral processes'" if serving else "the server's"
    p.add_argument("--tls-ca", metavar="FILE",
                   help=f"PEM CA file that {what} certificates are verified against "
                        f"(default: {CA_ENV}, else the system's trust store)")


def tls_from_args(args: argparse.Namespace, base: TlsSettings | None = None) -> TlsSettings:
    """The flags over ``base`` (a config file's ``[server]`` keys) over ``CORRAL_TLS_CA``,
    checked; an error names where the faulty value came from."""
    from corral.core.tls import CONFIG_KEYS, FLAGS, TlsNames, TlsSettings, check_tls

    base = base or TlsSettings()
    cert, key, ca = getattr(args, "tls_cert", None), getattr(args, "tls_key", None), getattr(args, "tls_ca", None)
    env_ca = os.environ.get(CA_ENV) or None
    # a value is named where it came from; a missing one by the flag that would give it
    names = TlsNames(
        cert=CONFIG_KEYS.cert if base.cert and not cert else FLAGS.cert,
        key=CONFIG_KEYS.key if base.key and not key else FLAGS.key,
        ca=FLAGS.ca if ca or not (base.ca or env_ca) else (CONFIG_KEYS.ca if base.ca else CA_ENV),
    )
    tls = TlsSettings(cert=cert or base.cert, key=key or base.key, ca=ca or base.ca or env_ca)
    return check_tls(tls, names)


def client_tls(args: argparse.Namespace, address: str) -> ssl.SSLContext | None:
    """What a management command verifies ``address`` with: the CA of ``--tls-ca`` or
    ``CORRAL_TLS_CA`` (checked even for an http:// address: a wrong path is an error
    either way), else the system's trust store; ``None`` for http:// without a CA,
    which spares a short command the system store's loading (about 0.1 s)."""
    from corral.core.tls import client_context

    tls = tls_from_args(args)
    if tls.ca is None and not address.lower().startswith("https://"):
        return None
    return client_context(tls.ca)
