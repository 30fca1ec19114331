"""The Ollama API front-end (``/api/...``)."""
