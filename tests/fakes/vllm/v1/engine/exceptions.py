"""Fake of ``vllm.v1.engine.exceptions``."""


class EngineDeadError(Exception):
    """The engine was shut down or crashed; no request can be served."""
