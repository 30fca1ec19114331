"""The openai-compatible engine: any server speaking the OpenAI API (vLLM, SGLang, TGI,
llama.cpp, ``transformers serve``, Ollama, LM Studio) attached as an instance."""
