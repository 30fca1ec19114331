"""The vllm engine: vLLM's ``AsyncLLM`` (or ``AsyncLLMEngine``) running in this process,
serving chat and text completion with vLLM's own continuous batching and KV cache."""
