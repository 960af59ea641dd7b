"""Wake-ups for idle Redis workers: a SUBSCRIBE on the prefix's channel.

The enqueue script PUBLISHes one message per batch on ``{prefix}queue:wake`` (and so do
retries, releases and re-queues that make a task ready at once).  :class:`RedisWake`
keeps its own connection subscribed in a daemon thread and calls the callback for each
message.  When the connection drops (server restart, ``CLIENT KILL``), it reconnects with
a backoff of 0.1 s doubling to 2 s and, once subscribed again, calls the callback (work
may have arrived while it was away).  ``stop()`` returns within about half a second.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .connection import pool_from_url

log = logging.getLogger("lmq.backends.redis")

_POLL = 0.25  # longest blocking read, so stop() is noticed quickly


class RedisWake:
    """``start(callback)`` calls ``callback`` (from its own thread) after publishes."""

    announces_work = True  # only enqueues, retries and releases publish: claim at once

    def __init__(
        self,
        url: str,
        channel: str,
        connect_timeout: float = 5.0,
        client_name: str | None = None,
    ) -> None:
        self.channel = channel
        self._pool = pool_from_url(
            url,
            socket_connect_timeout=connect_timeout,
            socket_timeout=15.0,
            socket_keepalive=True,
            health_check_interval=10,  # PING now and then: a dead link is noticed
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
            max_connections=2,
            client_name=client_name,
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reconnects = 0  # how many times the subscription was re-established

    def start(self, callback: Callable[[], None]) -> None:
        self._thread = threading.Thread(
            target=self._run, args=(callback,), name="lmq-redis-wake", daemon=True
        )
        self._thread.start()

    def _run(self, callback: Callable[[], None]) -> None:
        delay, lost = 0.1, False
        while not self._stop.is_set():
            pubsub: Any = None
            try:
                pubsub = redis.Redis(connection_pool=self._pool).pubsub()  # type: ignore[no-untyped-call]
                pubsub.subscribe(self.channel)
                while not self._stop.is_set():
                    msg = pubsub.get_message(timeout=_POLL)
                    if msg is None:
                        continue
                    kind = msg.get("type")
                    if kind == "message":
                        callback()
                    elif kind == "subscribe":
                        delay = 0.1
                        if lost:  # back after a drop: something may have been missed
                            lost = False
                            self.reconnects += 1
                            log.info("redis wake-ups: subscribed again to %s", self.channel)
                            callback()
            except (redis.RedisError, OSError, ValueError) as exc:
                if self._stop.is_set():
                    break
                if not lost:
                    log.info("redis wake-ups: connection lost (%s); reconnecting", exc)
                lost = True
                self._stop.wait(delay)
                delay = min(delay * 2, 2.0)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        pubsub.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.5)
        with contextlib.suppress(Exception):
            self._pool.disconnect()
