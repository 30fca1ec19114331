"""Observability: metrics, request records, traces, reports."""
