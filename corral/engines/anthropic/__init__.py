"""The anthropic engine: Claude models through Anthropic's native Messages API, translated
to and from Corral's internal types."""
