"""``lmq.logfile``: the JSON formatter and the queued, rotation-aware file handler."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from lmq.cli.common import MaskingFormatter, setup_logging
from lmq.logfile import JsonFileHandler, JsonFormatter, add_json_log


def record(level: int = logging.INFO, msg: str = "hello %s", *args: Any, **extra: Any) -> Any:
    rec = logging.LogRecord("lmq.worker", level, __file__, 1, msg, args or ("x",), None)
    rec.__dict__.update(extra)
    return rec


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def handler(tmp_path: Path) -> Iterator[JsonFileHandler]:
    h = JsonFileHandler(str(tmp_path / "w.jsonl"))
    h.setFormatter(JsonFormatter())
    try:
        yield h
    finally:
        h.close()


def test_formatter_fields_and_masking() -> None:
    rec = record(
        logging.WARNING,
        "lost %s",
        "postgresql://app:hunter2@db/app",
        event="backend_lost",
        task_id=7,
        error="ValueError: redis://:pw@r:6379/0 refused",
        urls=["mysql://u:pw2@h/d", 3],
        duration=0.25,
    )
    data = json.loads(JsonFormatter().format(rec))
    assert data["event"] == "backend_lost" and data["level"] == "warning"
    assert data["logger"] == "lmq.worker" and data["task_id"] == 7 and data["duration"] == 0.25
    assert data["message"] == "lost postgresql://app:***@db/app"
    assert data["error"] == "ValueError: redis://:***@r:6379/0 refused"
    assert data["urls"] == ["mysql://u:***@h/d", 3]
    ts = datetime.fromisoformat(data["ts"])
    assert ts.tzinfo is not None and ts.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert abs(ts.timestamp() - rec.created) < 0.001
    for standard in ("args", "msg", "pathname", "lineno", "thread", "process"):
        assert standard not in data


def test_formatter_masks_tracebacks() -> None:
    try:
        raise RuntimeError("connect postgresql://a:secret@h/d failed")
    except RuntimeError:
        rec = logging.LogRecord("lmq", logging.ERROR, "", 0, "boom", (), sys.exc_info())
    data = json.loads(JsonFormatter().format(rec))
    assert "secret" not in data["exception"] and "a:***@h" in data["exception"]


def test_console_formatter_masks() -> None:
    rec = record(logging.INFO, "worker started: %s", "postgresql://app:hunter2@db/app")
    text = MaskingFormatter("%(message)s").format(rec)
    assert text == "worker started: postgresql://app:***@db/app"


def test_debug_lines_queue_until_flush_info_lines_keep_order(
    handler: JsonFileHandler, tmp_path: Path
) -> None:
    path = tmp_path / "w.jsonl"
    handler.handle(record(logging.DEBUG, "claimed %s", 1, event="claimed"))
    handler.handle(record(logging.DEBUG, "succeeded %s", 1, event="succeeded"))
    assert path.read_text() == ""  # queued: the flusher thread writes them
    handler.handle(record(logging.INFO, "stopping %s", "now", event="worker_stopping"))
    assert [e["event"] for e in lines(path)] == ["claimed", "succeeded", "worker_stopping"]
    handler.handle(record(logging.DEBUG, "claimed %s", 2, event="claimed"))
    handler.flush()
    assert [e["event"] for e in lines(path)][-1] == "claimed"


def test_flusher_thread_writes_within_the_interval(
    handler: JsonFileHandler, tmp_path: Path
) -> None:
    handler.handle(record(logging.DEBUG, event="claimed"))
    deadline = time.monotonic() + 5
    while not (tmp_path / "w.jsonl").read_text() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [e["event"] for e in lines(tmp_path / "w.jsonl")] == ["claimed"]


def test_reopens_after_a_move_and_after_a_delete(handler: JsonFileHandler, tmp_path: Path) -> None:
    path, moved = tmp_path / "w.jsonl", tmp_path / "w.jsonl.1"
    handler.handle(record(logging.INFO, event="one"))
    path.rename(moved)
    handler.handle(record(logging.DEBUG, event="two"))  # queued after the move
    handler.flush()
    handler.handle(record(logging.INFO, event="three"))
    assert [e["event"] for e in lines(moved)] == ["one"]
    assert [e["event"] for e in lines(path)] == ["two", "three"]
    path.unlink()
    handler.handle(record(logging.WARNING, event="four"))
    assert [e["event"] for e in lines(path)] == ["four"]


def test_close_writes_what_is_queued(tmp_path: Path) -> None:
    h = JsonFileHandler(str(tmp_path / "w.jsonl"))
    h.setFormatter(JsonFormatter())
    h.handle(record(logging.DEBUG, event="claimed"))
    h.close()
    assert [e["event"] for e in lines(tmp_path / "w.jsonl")] == ["claimed"]
    h.handle(record(logging.INFO, event="late"))  # after close: dropped, no error
    h._flusher.join(2)
    assert not h._flusher.is_alive()


def test_log_file_gets_debug_while_the_console_stays_at_info(tmp_path: Path) -> None:
    lmq_logger = logging.getLogger("lmq")
    saved = (lmq_logger.level, list(lmq_logger.handlers), lmq_logger.propagate)
    try:
        setup_logging(0)
        [console] = lmq_logger.handlers
        handler = add_json_log(str(tmp_path / "w.jsonl"))
        assert console.level == logging.INFO
        assert logging.getLogger("lmq.worker").isEnabledFor(logging.DEBUG)  # Worker._debug
        logging.getLogger("lmq.worker").debug("claimed", extra={"event": "claimed"})
        handler.flush()
        assert [e["event"] for e in lines(tmp_path / "w.jsonl")] == ["claimed"]
        handler.close()
    finally:
        for h in lmq_logger.handlers:
            if h not in saved[1]:
                h.close()
        lmq_logger.setLevel(saved[0])
        lmq_logger.handlers[:] = saved[1]
        lmq_logger.propagate = saved[2]
        vars(logging.getLogger("lmq.worker")).pop("findCaller", None)
