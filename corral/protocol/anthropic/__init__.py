"""Anthropic Messages API: request models (pydantic, strict at the wire) and response,
stream-event and error builders (plain dicts and bytes, serialised with orjson)."""
