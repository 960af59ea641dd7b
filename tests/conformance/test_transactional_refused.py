"""Backends with no transaction to join (memory, Redis) refuse ``connection=``."""

from __future__ import annotations

import contextlib
import sqlite3

import pytest

import lmq

from .conftest import BackendSpec, _enabled
from .helpers import EMPTY
from .test_transactional import SQL_KINDS


@pytest.fixture(params=[b for b in _enabled() if b.kind not in SQL_KINDS], ids=lambda b: b.name)
def backend_spec(request: pytest.FixtureRequest) -> BackendSpec:
    spec: BackendSpec = request.param
    return spec


def test_a_connection_is_refused_and_nothing_is_stored(queue: lmq.Queue) -> None:
    with contextlib.closing(sqlite3.connect(":memory:")) as conn:
        with pytest.raises(lmq.ConfigError, match="needs an SQL backend"):
            queue.enqueue("ship", {"order_id": 1}, connection=conn)
        with pytest.raises(lmq.ConfigError, match="needs an SQL backend"):
            queue.enqueue_many([("ship", {"order_id": 2})], connection=conn)
    assert queue.counts() == EMPTY
