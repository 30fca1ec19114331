"""The transformers engine: chat and text completion with a dynamic (continuous) batcher."""
