"""Shared test set-up: every test runs offline against models built locally."""

from __future__ import annotations

import os

# Model hubs are unreachable in CI; every model the tests use is built or shipped locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
