"""Configuration: load and validate ``corral.toml`` into ``corral.core.spec`` dataclasses.

See ``corral.config.loader`` (``load_settings``, ``validate_model_spec``).
"""
