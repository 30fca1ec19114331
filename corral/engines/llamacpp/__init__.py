"""The llama.cpp engine (llama-cpp-python): chat and text completion from a GGUF file,
concurrent requests decoded together in one ``llama_batch`` (one sequence per request)
on a dedicated thread. ``gguf_export`` writes a GGUF from a small
HF Llama folder (the demo model) without llama.cpp's converter script."""
