"""JSON payloads: encode at enqueue (refusing what JSON can't hold), decode in the worker.

Payloads are JSON objects passed to handlers as keyword arguments.  Never pickle.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any

from .exceptions import PayloadError, PayloadValueError


def _refuse(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _make_encoder() -> Callable[[Any], str]:
    """Compact JSON without NaN: the C encoder made once, not once per call as
    ``json.dumps`` does (that setup is most of the cost of encoding a small payload)."""
    c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
    if c_make_encoder is None:  # pragma: no cover - CPython always has it
        return json.JSONEncoder(allow_nan=False, separators=(",", ":"), ensure_ascii=False).encode
    # markers=None skips the circular-reference check; a cycle ends in RecursionError
    c_encode = c_make_encoder(
        None, _refuse, json.encoder.encode_basestring, None, ":", ",", False, False, False
    )
    join = "".join

    def encode(value: Any) -> str:
        return join(c_encode(value, 0))

    return encode


_encode = _make_encoder()


def encode_payload(payload: Mapping[str, Any] | None) -> str:
    """Return the payload as compact JSON text, or raise naming the offending key.

    Raises ``TypeError`` (``PayloadError``) for a value JSON cannot hold (a set, a
    datetime, an object...) or a non-string key, and ``ValueError``
    (``PayloadValueError``) for NaN or infinity.  Nothing is stored in either case.
    """
    if payload is None:
        return "{}"
    if type(payload) is not dict and not isinstance(payload, Mapping):
        raise PayloadError(
            f"payload must be a JSON object (a dict of keyword arguments), "
            f"not {type(payload).__name__}"
        )
    for key in payload:
        if type(key) is not str:
            raise PayloadError(
                f"payload key {key!r} is a {type(key).__name__}; keys must be strings "
                "(they become the handler's keyword arguments)"
            )
    try:
        return _encode(payload if type(payload) is dict else dict(payload))
    except RecursionError:
        try:
            path = _find_cycle(payload, "", set())
        except RecursionError:
            path = None
        if path is None:
            raise PayloadValueError("payload is nested too deeply for JSON") from None
        where = f"payload key {path!r}" if path else "payload"
        raise PayloadValueError(f"{where} refers back to itself (circular)") from None
    except (TypeError, ValueError) as exc:
        _raise_naming_key(payload, exc)
        raise  # pragma: no cover - _raise_naming_key always raises


def _raise_naming_key(payload: Any, exc: Exception) -> None:
    found = _find_bad(payload, "")
    if found is None:  # pragma: no cover - json failed for a reason we did not find
        raise PayloadError(f"payload is not JSON-serialisable: {exc}") from None
    path, value, is_value_error = found
    where = f"payload key {path!r}" if path else "payload"
    if is_value_error and isinstance(value, (Mapping, list, tuple)):
        raise PayloadValueError(
            f"{where} refers back to a value that contains it (a circular reference), "
            "which JSON cannot hold"
        ) from None
    if is_value_error:
        raise PayloadValueError(f"{where} holds {value!r}, which JSON cannot hold") from None
    raise PayloadError(
        f"{where} holds a {type(value).__name__} ({_short(value)}), which JSON cannot hold"
    ) from None


def _find_bad(
    value: Any, path: str, parents: frozenset[int] = frozenset()
) -> tuple[str, Any, bool] | None:
    """``(path, value, is_value_error)`` of the first value JSON refuses, or None.

    ``parents`` holds the ids of the containers above ``value``: one of them met again
    is a circular reference (a container merely shared by two keys is fine).
    """
    if value is None or isinstance(value, (str, bool, int)):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else (path, value, True)
    if isinstance(value, (Mapping, list, tuple)):
        if id(value) in parents:
            return (path, value, True)
        parents = parents | {id(value)}
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, (str, int, float, bool)) and k is not None:
                return (f"{path}.{k!r}" if path else repr(k), k, False)
            found = _find_bad(v, f"{path}.{k}" if path else str(k), parents)
            if found:
                return found
        return None
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            found = _find_bad(v, f"{path}[{i}]", parents)
            if found:
                return found
        return None
    return (path, value, False)


def _find_cycle(value: Any, path: str, seen: set[int]) -> str | None:
    """The path of the first container that holds one of its own ancestors."""
    if isinstance(value, Mapping):
        items: Any = ((f"{path}.{k}" if path else str(k), v) for k, v in value.items())
    elif isinstance(value, (list, tuple)):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    if id(value) in seen:
        return path
    seen.add(id(value))
    try:
        for sub_path, v in items:
            found = _find_cycle(v, sub_path, seen)
            if found is not None:
                return found
    finally:
        seen.discard(id(value))
    return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class MalformedPayload(Exception):
    """A stored payload that is not a JSON object (written by another program)."""


_scan_once = json.JSONDecoder().scan_once  # type: ignore[attr-defined]  # set in __init__, not in typeshed


def decode_payload(text: str | bytes | None) -> dict[str, Any]:
    """Decode a stored payload for a handler, or raise ``MalformedPayload`` saying why."""
    if type(text) is str and text[:1] == "{":
        # fast path for compact JSON objects (what lmq and PHP's json_encode write):
        # the scanner without json.loads' whitespace regexes
        try:
            value, end = _scan_once(text, 0)
        except (StopIteration, ValueError):
            pass
        else:
            if end == len(text):
                return value  # type: ignore[no-any-return]
    if text is None or text == "":
        return {}
    try:
        value = json.loads(text)
    except (ValueError, TypeError) as exc:
        raise MalformedPayload(f"payload is not valid JSON ({exc}): {_short(text)}") from None
    if value is None:
        return {}
    if type(value) is not dict:
        raise MalformedPayload(
            f"payload must be a JSON object of keyword arguments, got {type(value).__name__}: "
            f"{_short(text)}"
        )
    return value


def loads_lenient(text: str | bytes | None) -> Any:
    """Decode for display: malformed text is shown as it is rather than failing."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except (ValueError, TypeError):
        return text if isinstance(text, str) else text.decode("utf-8", "replace")
