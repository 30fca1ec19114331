"""OpenAI-compatible API: request models (pydantic, validated strictly at the wire) and
response/chunk builders (plain dicts serialised with orjson, for speed)."""
