"""JSON responses serialised with orjson."""

from __future__ import annotations

import orjson
from starlette.responses import Response


def json_response(status: int, body: object, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)
