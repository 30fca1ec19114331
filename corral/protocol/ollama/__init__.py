"""Ollama's API wire types (``/api/...``): pydantic request models and response builders."""
