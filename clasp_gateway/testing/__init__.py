"""Helpers for testing the gateway and its plugins, inside or outside this repository.

:mod:`.processes`: a real Redis (the machine's, or a ``redis-server`` of our own) with
a fresh key prefix per test, and gateways run as real ``clasp serve`` processes (for
anything that must hold across workers or replicas). Nothing here imports pytest.
"""

from __future__ import annotations

from .processes import (
    GatewayProcess,
    GatewayProcesses,
    RedisNamespace,
    RedisServer,
    free_port,
    redis_answers,
    redis_server,
)

__all__ = [
    "GatewayProcess", "GatewayProcesses", "RedisNamespace", "RedisServer", "free_port", "redis_answers",
    "redis_server",
]
