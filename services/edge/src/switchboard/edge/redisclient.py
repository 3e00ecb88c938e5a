"""The edge's Redis clients (also used by the ``keys`` command, so kept free of the web app)."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from switchboard.edge.settings import EdgeSettings

__all__ = ["redis_client"]

_POOL_WAIT = 5.0
"""Seconds a command waits for a free pooled connection."""


def redis_client(settings: EdgeSettings, *, listener: bool = False) -> Redis:
    """A Redis client with short timeouts and strings for replies.

    Commands queue for one of ``EDGE_REDIS_MAX_CONNECTIONS`` pooled connections (for up to
    five seconds) rather than open one per request. A command is retried once, at once, only
    after a *connection* error (a pooled socket that died with a Redis restart): never after
    a timeout, when a script may have run. The pub/sub ``listener`` client never retries, so
    that a lost connection is noticed.
    """
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=4 if listener else settings.edge_redis_max_connections,
        timeout=_POOL_WAIT,
        decode_responses=True,
        socket_connect_timeout=settings.edge_redis_timeout,
        socket_timeout=None if listener else settings.edge_redis_timeout,
        retry=Retry(NoBackoff(), 0 if listener else 1, supported_errors=(RedisConnectionError,)),
    )
    return Redis.from_pool(pool)
