"""Test-only fault injection for ``tests/integration/test_supervision.py``: never in
production code. Python imports this module at start-up when this folder is on
``PYTHONPATH``; it does nothing unless ``CORRAL_TEST_FAULTS`` names a trigger file, so
only the server that test launches is affected.

It makes the real transformers batcher (a decode step) and the real llama.cpp decoder (a
batch step) raise inside their loops while a poisoned sequence is in the running batch:

- a prompt containing ``FAULT-NOW``: at once;
- a prompt containing ``FAULT-ON-TRIGGER``: once the trigger file exists, so the test
  decides when (the batch full, requests queued behind it).
"""

from __future__ import annotations

import os

_NOW, _ON_TRIGGER = "FAULT-NOW", "FAULT-ON-TRIGGER"


def _install(trigger: str) -> None:
    from corral.engines.transformers import batcher, engine

    poisoned: dict[tuple[int, ...], str] = {}  # prompt token ids -> mode
    prompt_ids = engine.TransformersEngine._prompt_ids
    decode = batcher.ContinuousBatcher._decode

    def _prompt_ids(self, request):  # type: ignore[no-untyped-def]
        ids = prompt_ids(self, request)
        text = request.prompt if request.prompt is not None else "".join(m.content for m in request.messages or ())
        for mode in (_NOW, _ON_TRIGGER):
            if mode in text:
                poisoned[tuple(ids)] = mode
        return ids

    def _decode(self):  # type: ignore[no-untyped-def]
        for seq in self._running:
            mode = poisoned.get(tuple(seq.prompt_ids))
            if mode == _NOW or (mode == _ON_TRIGGER and os.path.exists(trigger)):
                raise RuntimeError(f"injected fault ({mode})")
        return decode(self)

    engine.TransformersEngine._prompt_ids = _prompt_ids  # type: ignore[method-assign]
    batcher.ContinuousBatcher._decode = _decode  # type: ignore[method-assign]


def _install_llamacpp(trigger: str) -> None:
    from corral.engines.llamacpp import decoder

    step = decoder.Decoder.step

    def _step(self):  # type: ignore[no-untyped-def]
        for job in self._jobs:  # the jobs whose sequences are in the batch this step decodes
            request = job.request
            text = request.prompt if request.prompt is not None else "".join(m.content for m in request.messages or ())
            if _NOW in text or (_ON_TRIGGER in text and os.path.exists(trigger)):
                raise RuntimeError(f"injected fault in the llama.cpp decoder ({request.request_id})")
        return step(self)

    decoder.Decoder.step = _step  # type: ignore[method-assign]


if os.environ.get("CORRAL_TEST_FAULTS"):
    _install(os.environ["CORRAL_TEST_FAULTS"])
    try:
        _install_llamacpp(os.environ["CORRAL_TEST_FAULTS"])
    except ImportError:  # the llamacpp extra is not installed: only the transformers faults
        pass
