"""``corral start``'s ASGI app built from a config file, for ASGI servers other than
uvicorn (``granian --factory benchmarks.asgi_app:standalone``): the HTTP-floor
experiment of ``benchmarks/servers.py``. The config path is read from
``CORRAL_BENCH_CONFIG`` when the server calls the factory."""

from __future__ import annotations

import os

from starlette.applications import Starlette


def standalone() -> Starlette:
    from corral.cli.main import _parser
    from corral.cli.start import build_settings
    from corral.standalone import Standalone

    args = _parser().parse_args(["start", "--config", os.environ["CORRAL_BENCH_CONFIG"]])
    return Standalone(build_settings(args), lambda message: None, None).app
