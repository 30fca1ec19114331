"""The OpenAI-compatible front-end: wire requests in, pipeline calls, wire responses out."""
