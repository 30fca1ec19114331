"""Fake of ``vllm.engine`` (see the ``vllm`` package docstring)."""
