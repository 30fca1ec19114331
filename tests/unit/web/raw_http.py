"""HTTP/1.1 over a raw asyncio connection, for tests that watch what a server does with
the connection itself (kept, closed, when)."""

from __future__ import annotations

import asyncio


async def read_answer(reader: asyncio.StreamReader, timeout: float = 10) -> tuple[bytes, bytes]:
    """One answer with a ``content-length``: its head (lowercased) and its body."""
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)).lower()
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.startswith(b"content-length"))
    return head, await asyncio.wait_for(reader.readexactly(length), timeout)


def header(head: bytes, name: bytes) -> bytes | None:
    """A header's value in a lowercased head."""
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key == name:
            return value.strip()
    return None
