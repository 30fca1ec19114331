"""The reference: a bare aiohttp pass-through proxy (no auth, metrics, records or routing).

What any gateway costs at the least: one pooled client session, bodies read whole,
answers passed through (streams byte for byte as they arrive). Same event loop as
Corral (uvloop). ``python benchmarks/bare_proxy.py --port P --upstream http://H:P``.
"""

from __future__ import annotations

import argparse
import asyncio

import aiohttp
import uvloop
from aiohttp import web

HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}


async def main(port: int, upstream: str) -> None:
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False)

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def proxy(request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        body = await request.read()
        async with session.request(request.method, upstream + request.path_qs, data=body, headers=headers) as up:
            out = {k: v for k, v in up.headers.items() if k.lower() not in HOP}
            if up.headers.get("content-length") is not None:  # whole answers in one write
                return web.Response(body=await up.read(), status=up.status, headers=out)
            resp = web.StreamResponse(status=up.status, headers=out)
            await resp.prepare(request)
            async for chunk in up.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
            return resp

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_route("*", "/{tail:.*}", proxy)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    try:
        await asyncio.Event().wait()  # until SIGTERM ends the process
    finally:
        await session.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main(args.port, args.upstream.rstrip("/")))
