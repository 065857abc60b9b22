"""The Redis sources' per-entry path (decode, key) gives what the general path gives.

The hot path takes short cuts: `syncward.jobs` keys a plain ASCII identity without
normalising it and with a prebuilt C encoder, and the decoders read the usual JSON text
with ``raw_decode``. These tests hold each short cut to the general path it skips: the
same key and canonical text byte for byte, the same value, the same reason when refused.
No Redis needed.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncward import jobs
from syncward.adapters._redis_base import (
    _DECODER,
    Decoded,
    Malformed,
    decode_fields,
    decode_item,
)
from syncward.errors import InvalidJob


def general_key(identity: Any) -> tuple[str, str] | str:
    """``keyed_identity`` by the general path (every field normalised, json.dumps), or
    the refusal's message."""
    try:
        mapping = jobs._canon_mapping(identity, what="identity")
    except InvalidJob as exc:
        return str(exc)
    canonical = json.dumps(mapping, sort_keys=True, separators=(",", ":"),
                           ensure_ascii=False)
    return hashlib.sha256(b"syncward.job.v1\n" + canonical.encode()).hexdigest(), canonical


def fast_key(identity: Any) -> tuple[str, str] | str:
    try:
        return jobs.keyed_identity(identity)
    except InvalidJob as exc:
        return str(exc)


names = st.one_of(st.text(max_size=6), st.text(alphabet="abcxyz_", min_size=1, max_size=6))
values = st.one_of(
    st.text(max_size=8), st.text(alphabet="abc 0\"\\\n\t/", max_size=8),
    st.integers(), st.integers(min_value=-(1 << 2100), max_value=1 << 2100),
    st.booleans(), st.floats(), st.none(), st.lists(st.integers(), max_size=1))


@given(st.dictionaries(names, values, max_size=5))
def test_keyed_identity_is_the_general_path_byte_for_byte(identity: dict[str, Any]) -> None:
    assert fast_key(identity) == general_key(identity)


@pytest.mark.parametrize("identity", [
    {"id": 1}, {"b": "x", "a": 2}, {"e\u0301": 1}, {"id": "e\u0301"}, {"é": "é"},
    {"id": True}, {"id": 1.0}, {"": 1}, {"id": "\ud800"}, {"id": (1 << 2000) - 1},
    {"id": 1 << 2000}, {"id": -(1 << 2000)}, {"id": 10 ** 5000}, {"q": 'say "hi"\n'},
])
def test_keyed_identity_at_the_edges_of_the_short_cut(identity: dict[str, Any]) -> None:
    assert fast_key(identity) == general_key(identity)


def test_a_mapping_that_is_not_a_dict_takes_the_general_path() -> None:
    class Frozen(dict[str, Any]):
        pass

    assert fast_key(Frozen(id="e\u0301")) == general_key({"id": "e\u0301"})


def general_decode(text: str, what: str) -> Any:
    """The value `json.JSONDecoder.decode` gives, or the reason the source reports."""
    try:
        value = _DECODER.decode(text)
    except ValueError as exc:
        return Malformed(f"{what} is not valid JSON: {exc}")
    if not isinstance(value, dict):
        return Malformed(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


TEXTS = ['{"id":1}', '{"id": 1, "k": "v"}', ' {"id":1}', '{"id":1} ', '{"id":1}\n',
         '{"id":1} x', '{"id":1}{"id":2}', "", " ", "NaN", '{"id": NaN}',
         '{"id": -Infinity}', "[1]", '"s"', "1", "{", '{"id":1,}', "\ufeff{}", "{}"]


@pytest.mark.parametrize("text", TEXTS)
def test_a_stream_field_decodes_as_the_general_decoder(text: str) -> None:
    expected = general_decode(text, "identity")
    got = decode_fields({b"identity": text.encode()})
    if isinstance(expected, Malformed):
        assert got == expected
    else:
        assert got == Decoded(expected, {}, "{}")


@pytest.mark.parametrize("text", TEXTS)
def test_a_payload_field_decodes_as_the_general_decoder(text: str) -> None:
    expected = general_decode(text, "payload")
    got = decode_fields({"identity": '{"id":1}', "payload": text})
    if isinstance(expected, Malformed):
        assert got == expected
    else:
        assert got == Decoded({"id": 1}, expected, text)  # the payload text as given


@pytest.mark.parametrize(("text", "expected"), [
    ('{"identity": {"id": 1}}', Decoded({"id": 1}, {}, "{}")),
    (' {"identity": {"id": 1}, "payload": {"a": [1]}}\n',
     Decoded({"id": 1}, {"a": [1]}, '{"a": [1]}')),
    ('{"identity": {"id": 1}} junk', Malformed(
        "item is not valid JSON: Extra data: line 1 column 25 (char 24)")),
    ('{"identity": {"id": 1}, "x": 1, "a": 2}', Malformed(
        "unknown field(s) 'a', 'x': expected 'identity' and optional 'payload'")),
    ('{"payload": {}}', Malformed("no 'identity' field")),
    ('{"identity": [1]}', Malformed("identity must be a JSON object, got list")),
    ('{"identity": {"id": 1}, "payload": 3}', Malformed(
        "payload must be a JSON object, got int")),
    ('{"identity": {"id": NaN}}', Malformed("item is not valid JSON: NaN is not JSON")),
])
def test_a_list_item_decodes_or_is_refused_with_its_reason(text: str, expected: Any) -> None:
    assert decode_item(text.encode()) == expected


@pytest.mark.parametrize(("fields", "reason"), [
    ({b"identity": b'{"id":1}', b"zz": b"", b"\xff": b""},
     "unknown field(s) '\\\\xff', 'zz': expected 'identity' and optional 'payload'"),
    ({"identity": '{"id":1}', "extra": "x"},
     "unknown field(s) 'extra': expected 'identity' and optional 'payload'"),
    ({b"payload": b"{}"}, "no 'identity' field"),
    ({b"identity": b"\xff"}, "identity is not valid UTF-8 (byte 0)"),
])
def test_a_stream_entry_is_refused_with_its_reason(fields: Any, reason: str) -> None:
    assert decode_fields(fields) == Malformed(reason)


def test_an_entry_nested_too_deeply_is_refused_not_raised() -> None:
    """A poison entry (JSON nested past the interpreter's recursion limit) is dead-lettered
    with its reason: raising would crash the source, which would read it again."""
    deep = "[" * 100_000 + "]" * 100_000
    item = decode_item('{"identity": {"n": 1}, "payload": ' + deep + "}")
    entry = decode_fields({b"identity": b'{"n": 1}', b"payload": deep.encode()})
    assert item == Malformed("item is nested too deeply to decode")
    assert entry == Malformed("payload is nested too deeply to decode")
