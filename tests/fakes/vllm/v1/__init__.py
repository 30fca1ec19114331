"""Fake of ``vllm.v1`` (see the ``vllm`` package docstring)."""
