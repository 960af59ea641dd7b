"""redis-py connections whose handshake is bounded by the connect timeout.

redis-py applies ``socket_connect_timeout`` to the TCP connect only; the handshake that
follows (CLIENT SETINFO / SETNAME, AUTH, SELECT) waits ``socket_timeout``, which must be
long enough for a bulk enqueue script.  A port that accepts connections but never answers
(a hung or wrong server) would then hold a one-shot command for ``socket_timeout``.  These
classes run the handshake under the connect timeout, so such a server fails within it.
"""

from __future__ import annotations

from typing import Any

import redis


class _BoundedHandshake:
    _sock: Any
    socket_timeout: float | None
    socket_connect_timeout: float | None

    def on_connect_check_health(self, check_health: bool = True) -> None:
        sock = self._sock
        if sock is not None:
            sock.settimeout(self.socket_connect_timeout)
        try:
            super().on_connect_check_health(check_health=check_health)  # type: ignore[misc]
        finally:
            if self._sock is not None:
                self._sock.settimeout(self.socket_timeout)


class Connection(_BoundedHandshake, redis.Connection):
    pass


class SSLConnection(_BoundedHandshake, redis.SSLConnection):
    pass


def pool_from_url(url: str, **options: Any) -> redis.ConnectionPool:
    """``ConnectionPool.from_url`` with the bounded-handshake connection classes."""
    scheme = url.split("://", 1)[0].lower()
    cls = SSLConnection if scheme == "rediss" else Connection
    return redis.ConnectionPool.from_url(url, connection_class=cls, **options)
