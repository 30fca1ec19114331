"""Corral: one stable, observable, OpenAI-compatible endpoint in front of many models and engines."""

__version__ = "0.1.0"
