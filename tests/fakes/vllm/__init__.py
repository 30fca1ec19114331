"""A FAKE of vLLM's public Python API, for Corral's tests. This is not vLLM.

vLLM has no CPU build, so Corral's ``vllm`` engine adapter is tested against this
package, which follows vLLM 0.33.0 (its source, file:line cited per rule; ``AsyncEngineArgs``,
``SamplingParams`` with ``RequestOutputKind``, ``RequestOutput``/``CompletionOutput``,
``AsyncLLM.from_engine_args``, ``generate`` as an async generator, ``abort``,
``get_tokenizer``, ``shutdown``) and "generates" deterministically without a model:
see ``vllm.v1.engine.async_llm``. It is importable only when ``tests/fakes`` is put on
``sys.path`` or ``PYTHONPATH``.
"""

from vllm.engine.arg_utils import AsyncEngineArgs, EngineArgs
from vllm.engine.async_llm_engine import AsyncLLMEngine
from vllm.outputs import CompletionOutput, RequestOutput
from vllm.sampling_params import RequestOutputKind, SamplingParams

__version__ = "0.0.0+corral.fake"

__all__ = [
    "AsyncEngineArgs",
    "AsyncLLMEngine",
    "CompletionOutput",
    "EngineArgs",
    "RequestOutput",
    "RequestOutputKind",
    "SamplingParams",
]
