"""Both client factories of ``corral.net`` verify an HTTPS peer with the context they
are given (the process's ``--tls-ca``): the control plane's httpx client and the hot
path's aiohttp session, against a tiny TLS server on loopback whose certificate comes
from a throwaway CA."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator

import aiohttp
import httpx
import pytest

from corral.core.tls import client_context, tls_failure
from corral.net.client import make_http_client
from corral.net.pool import PoolSettings, describe, make_session
from tests.services.tls import TlsFiles, make_tls_files

ANSWER = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture
async def https_url(files: TlsFiles) -> AsyncIterator[str]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(files.cert), str(files.key))

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(ANSWER)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass  # a client that refused our certificate hangs up mid-handshake
        finally:
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    yield f"https://127.0.0.1:{port}/health"
    server.close()


async def test_the_httpx_client_verifies_against_the_ca(https_url: str, files: TlsFiles) -> None:
    async with make_http_client(None, ssl_context=client_context(str(files.ca))) as client:
        assert (await client.get(https_url)).text == "ok"
    async with make_http_client(None, ssl_context=client_context(str(files.other_ca))) as client:
        with pytest.raises(httpx.ConnectError) as info:
            await client.get(https_url)
    assert (tls_failure(info.value) or "").startswith("certificate not trusted")


async def test_the_hot_path_session_verifies_against_the_ca(https_url: str, files: TlsFiles) -> None:
    session = make_session(PoolSettings(), ssl_context=client_context(str(files.ca)))
    try:
        async with session.get(https_url) as resp:
            assert await resp.text() == "ok"
    finally:
        await session.close()
    session = make_session(PoolSettings(), ssl_context=client_context(str(files.other_ca)))
    try:
        with pytest.raises(aiohttp.ClientConnectorCertificateError) as info:
            await session.get(https_url)
    finally:
        await session.close()
    assert describe(info.value).startswith("CertificateError:")
    assert (tls_failure(info.value) or "").startswith("certificate not trusted")
