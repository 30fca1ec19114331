"""Fake of ``vllm.v1.engine`` (see the ``vllm`` package docstring)."""
