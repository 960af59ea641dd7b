"""The Redis backend (``lmq[redis]``): Lua scripts for every state change, pub/sub wake-ups.

See :mod:`lmq.backends.redis.backend` for URLs, options, the key layout and durability.
"""

from .backend import RedisBackend
from .wake import RedisWake

__all__ = ["RedisBackend", "RedisWake"]
