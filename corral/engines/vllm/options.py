"""Options of the vllm engine, validated at config load without importing vllm.

The named options are the ``AsyncEngineArgs`` fields most deployments set; anything else
goes through ``engine_args``, whose keys can only be checked against the installed vLLM
(at start, see ``corral.engines.vllm.engine``). ``None`` leaves vLLM's own default.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

# The named options, forwarded under the same AsyncEngineArgs field names.
NAMED_ARGS = (
    "tensor_parallel_size",
    "gpu_memory_utilization",
    "max_model_len",
    "quantization",
    "dtype",
    "enforce_eager",
    "max_num_seqs",
    "trust_remote_code",
    "seed",
)


class VLLMOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    tensor_parallel_size: int | None = Field(None, ge=1, description="GPUs the model is sharded over; default: vLLM's (1)")
    gpu_memory_utilization: float | None = Field(
        None, gt=0, le=1, description="share of each GPU's memory vLLM may take (weights + KV cache); default: vLLM's"
    )
    max_model_len: int | None = Field(
        None, ge=1, description="context window (prompt + completion tokens); default: the model's"
    )
    quantization: str | None = Field(None, min_length=1, description="quantization method (awq, gptq, fp8, ...)")
    dtype: str | None = Field(None, min_length=1, description="weights and activations dtype (auto, bfloat16, float16, ...)")
    enforce_eager: bool = Field(False, description="no CUDA graphs: less memory and faster start, slower decoding")
    max_num_seqs: int | None = Field(None, ge=1, description="sequences batched together per step; default: vLLM's")
    trust_remote_code: bool = Field(False, description="run the model repository's own Python code")
    seed: int | None = Field(None, ge=0, description="vLLM's engine seed, for requests that give none")
    engine_args: dict[str, Any] = Field(
        default_factory=dict,
        description="any other AsyncEngineArgs field, by name (checked against the installed vLLM at start)",
    )

    @model_validator(mode="after")
    def _no_shadowing(self) -> VLLMOptions:
        # one place per setting: a value given twice would silently win or lose
        for key in self.engine_args:
            if key == "model":
                raise ValueError("engine_args.model: the model's source is vLLM's model; set source instead")
            if key in NAMED_ARGS:
                raise ValueError(f"engine_args.{key}: set it as the option {key} instead")
        return self
