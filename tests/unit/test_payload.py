"""Payload encoding: JSON objects only, refused values name their key path."""

from __future__ import annotations

import decimal
import json
import math
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import pytest

import lmq
from lmq.exceptions import PayloadError, PayloadValueError
from lmq.payload import MalformedPayload, decode_payload, encode_payload, loads_lenient


def test_none_is_an_empty_object() -> None:
    assert encode_payload(None) == "{}"


def test_encodes_compact_json_keeping_unicode() -> None:
    text = encode_payload({"sku": "Ä-1", "n": 2, "ok": True, "tags": ["a"], "x": None})
    assert text == '{"sku":"Ä-1","n":2,"ok":true,"tags":["a"],"x":null}'


def test_tuples_become_lists_and_any_mapping_is_accepted() -> None:
    text = encode_payload(MappingProxyType({"pair": (1, 2)}))
    assert json.loads(text) == {"pair": [1, 2]}


@pytest.mark.parametrize("payload", [[1, 2], "text", 3, (("a", 1),), {1, 2}])
def test_non_dict_payloads_are_refused(payload: Any) -> None:
    with pytest.raises(TypeError, match="payload must be a JSON object") as info:
        encode_payload(payload)
    assert isinstance(info.value, PayloadError)
    assert isinstance(info.value, lmq.LmqError)


@pytest.mark.parametrize("key", [1, None, 1.5, True, ("a", "b")])
def test_non_str_top_level_keys_are_refused(key: Any) -> None:
    with pytest.raises(TypeError, match="keys must be strings") as info:
        encode_payload({"fine": 1, key: "v"})
    assert repr(key) in str(info.value)


@pytest.mark.parametrize(
    "value",
    [
        {1, 2},
        frozenset(),
        datetime(2024, 1, 1, tzinfo=UTC),
        object(),
        b"bytes",
        decimal.Decimal("1.5"),
        1j,
        ValueError("x"),
    ],
    ids=["set", "frozenset", "datetime", "object", "bytes", "decimal", "complex", "exception"],
)
def test_values_json_cannot_hold_raise_type_error_naming_the_key(value: Any) -> None:
    with pytest.raises(TypeError) as info:
        encode_payload({"ok": 1, "bad": value})
    assert isinstance(info.value, PayloadError)
    assert "'bad'" in str(info.value)
    assert type(value).__name__ in str(info.value)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nan_and_infinity_raise_value_error_naming_the_key(value: float) -> None:
    with pytest.raises(ValueError, match="'price'") as info:
        encode_payload({"price": value})
    assert isinstance(info.value, PayloadValueError)
    assert not isinstance(info.value, TypeError)


@pytest.mark.parametrize(
    ("payload", "path"),
    [
        ({"order": {"items": [{"sku": "x", "when": datetime.now(UTC)}]}}, "order.items[0].when"),
        ({"a": {"b": [1, 2, math.nan]}}, "a.b[2]"),
        ({"rows": [[1], [2, {3}]]}, "rows[1][1]"),
        ({"a": {"b": {"c": object()}}}, "a.b.c"),
    ],
)
def test_nested_values_are_named_by_their_path(payload: dict[str, Any], path: str) -> None:
    with pytest.raises((TypeError, ValueError)) as info:
        encode_payload(payload)
    assert repr(path) in str(info.value)


def test_nested_non_json_key_is_named() -> None:
    with pytest.raises(TypeError) as info:
        encode_payload({"a": {("x", 1): "v"}})
    assert "a." in str(info.value)
    assert "('x', 1)" in str(info.value)


def test_circular_reference_is_refused_with_type_or_value_error() -> None:
    loop: dict[str, Any] = {"n": 1}
    loop["self"] = loop
    with pytest.raises((TypeError, ValueError)) as info:
        encode_payload({"outer": loop})
    assert "'outer" in str(info.value)


def test_circular_list_is_refused_with_type_or_value_error() -> None:
    items: list[Any] = [1]
    items.append(items)
    with pytest.raises((TypeError, ValueError)) as info:
        encode_payload({"items": items})
    assert "'items" in str(info.value)


def test_long_values_are_shortened_in_the_message() -> None:
    with pytest.raises(TypeError) as info:
        encode_payload({"big": {"x" * 500}})
    assert len(str(info.value)) < 300


def test_refused_payload_stores_nothing() -> None:
    with lmq.Queue("memory://") as queue:
        for bad in ({"s": {1}}, {"f": math.inf}, {1: 2}, [1]):
            with pytest.raises((TypeError, ValueError)):
                queue.enqueue("t", bad)  # type: ignore[arg-type]
        assert queue.counts() == {"pending": 0, "processing": 0, "done": 0, "dead": 0}


# --- decoding -----------------------------------------------------------------------------


@pytest.mark.parametrize("text", [None, "", "null"])
def test_decode_empty_is_no_arguments(text: str | None) -> None:
    assert decode_payload(text) == {}


def test_decode_object_from_text_or_bytes() -> None:
    assert decode_payload('{"a": 1}') == {"a": 1}
    assert decode_payload(b'{"a": [1, "x"]}') == {"a": [1, "x"]}


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("not json", "not valid JSON"),
        ("{'a': 1}", "not valid JSON"),
        ('{"a": 1', "not valid JSON"),
        ("[1, 2]", "got list"),
        ('"text"', "got str"),
        ("42", "got int"),
        ("true", "got bool"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
def test_decode_malformed_rows_says_why(text: str | bytes, why: str) -> None:
    with pytest.raises(MalformedPayload, match=why):
        decode_payload(text)


def test_decode_message_of_a_huge_row_is_short() -> None:
    with pytest.raises(MalformedPayload) as info:
        decode_payload("[" + "1," * 10_000 + "1]")
    assert len(str(info.value)) < 300


def test_loads_lenient_shows_malformed_text_as_it_is() -> None:
    assert loads_lenient('{"a": 1}') == {"a": 1}
    assert loads_lenient("oops") == "oops"
    assert loads_lenient(b"\xffoops") == "\ufffdoops"
    assert loads_lenient(None) is None


def test_round_trip() -> None:
    payload = {"id": 7, "name": "ü", "nested": {"list": [1.5, None, False]}}
    assert decode_payload(encode_payload(payload)) == payload


def test_shared_but_not_circular_values_are_fine() -> None:
    shared = [1, 2]
    assert json.loads(encode_payload({"a": shared, "b": {"c": shared}})) == {
        "a": [1, 2],
        "b": {"c": [1, 2]},
    }


def test_circular_reference_is_a_value_error_naming_the_path() -> None:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    with pytest.raises(ValueError, match="circular") as info:
        encode_payload({"outer": loop})
    assert "'outer.self'" in str(info.value)


def test_absurdly_deep_nesting_is_a_value_error() -> None:
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(ValueError, match="nested too deeply"):
        encode_payload({"deep": deep})
