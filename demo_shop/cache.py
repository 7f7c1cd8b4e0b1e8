"""The demo shop's cache backend: Django's Redis cache, keeping its Redis client.

Django's ``RedisCacheClient`` builds a ``redis.Redis`` client (about 170 response callbacks
registered) for every cache call, around a connection pool it keeps; that was a tenth of a
cached similar list's Python. The client is as thread-safe as the pool, so one per pool does.
"""

from __future__ import annotations

from typing import Any

from django.core.cache.backends.redis import RedisCache as DjangoRedisCache
from django.core.cache.backends.redis import RedisCacheClient


class KeptClientRedisCacheClient(RedisCacheClient):
    """``RedisCacheClient`` with one Redis client per connection pool, made on first use."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._clients: dict[int, Any] = {}

    def get_client(self, key: Any = None, *, write: bool = False) -> Any:
        """The kept client of the pool Django's client would use for ``key``."""
        pool = self._get_connection_pool(write)
        client = self._clients.get(id(pool))
        if client is None:
            client = self._clients[id(pool)] = self._client(connection_pool=pool)
        return client


class RedisCache(DjangoRedisCache):
    """``django.core.cache.backends.redis.RedisCache`` with `KeptClientRedisCacheClient`."""

    def __init__(self, server: str | list[str], params: dict[str, Any]) -> None:
        super().__init__(server, params)
        self._class = KeptClientRedisCacheClient
