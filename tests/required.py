"""Skip a test whose servers are missing, or fail it when the stack is required.

``scripts/test`` (and so CI) sets ``STREAMSCORE_STACK=1``: there every test that needs Kafka,
Redis, the Redis Cluster, Kafka's jars, Java, openssl or Prometheus must run, and a missing
one is a failure. A bare ``pytest`` on a laptop without servers skips them with the reason.
Every stack-dependent skip goes through ``skip_or_fail``.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

STACK_REQUIRED = os.environ.get("STREAMSCORE_STACK") == "1"


def skip_or_fail(reason: str) -> NoReturn:
    """Skip with ``reason``, or fail with it under ``STREAMSCORE_STACK=1``."""
    if STACK_REQUIRED:
        pytest.fail(f"{reason} (STREAMSCORE_STACK=1: the stack is required here)", pytrace=False)
    pytest.skip(reason)
