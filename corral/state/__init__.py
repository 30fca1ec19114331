"""Desired-state stores (see ``corral.core.state``)."""
