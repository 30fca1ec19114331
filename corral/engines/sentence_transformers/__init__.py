"""The sentence-transformers engine: embeddings, micro-batching concurrent requests."""
