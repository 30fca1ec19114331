"""The llama.cpp engine (llama-cpp-python): chat and text completion from a GGUF file,
one request at a time on a dedicated thread. ``gguf_export`` writes a GGUF from a small
HF Llama folder (the demo model) without llama.cpp's converter script."""
