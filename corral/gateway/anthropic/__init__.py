"""The Anthropic Messages front-end (``/v1/messages``)."""
