"""Job keys and op keys: canonical, deterministic, typed, and frozen by vectors.

A job's key is its permanent name in every store, so these tests pin both the properties
(order, Unicode normal form, types) and the exact bytes (``vectors/job_keys.json``).
"""

from __future__ import annotations

import hashlib
import json
import math
import unicodedata
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncward.errors import InvalidJob
from syncward.jobs import JobSpec, canonical_identity, job_key, op_key

VECTORS = json.loads((Path(__file__).parent / "vectors" / "job_keys.json").read_text("ascii"))


def nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def nfd(text: str) -> str:
    return unicodedata.normalize("NFD", text)


# Field names and string values as a producer might send them: already NFC, so that two
# distinct names never collapse into one (that case has its own test).
names = st.text(min_size=1, max_size=12).map(nfc).filter(bool)
scalars = st.one_of(st.text(max_size=30), st.integers())
identities = st.dictionaries(names, scalars, min_size=1, max_size=6)
# op_key takes its context as keyword arguments, so two names are taken by its signature.
contexts = st.dictionaries(
    names.filter(lambda n: n not in ("kind", "job_key")), scalars, min_size=1, max_size=6
)
# Unicode with combining marks, so NFC and NFD really differ.
accented = st.text(
    alphabet=st.sampled_from(
        "aeiouAEIOUcnsz \u00e9\u00e8\u00ea\u00f1\u00e7\u00c5\u00fc\u0301\u0308"
    ),
    min_size=1,
    max_size=12,
)

HEX64 = set("0123456789abcdef")


def is_hex_key(key: str) -> bool:
    return len(key) == 64 and set(key) <= HEX64


# --- job_key: properties -------------------------------------------------------------


@given(identities, st.randoms(use_true_random=False))
def test_field_order_does_not_change_the_key(identity: dict[str, Any], rnd: Any) -> None:
    items = list(identity.items())
    rnd.shuffle(items)
    shuffled = dict(items)
    assert job_key(shuffled) == job_key(identity)
    assert canonical_identity(shuffled) == canonical_identity(identity)


@given(identities)
def test_key_is_deterministic_hex_sha256(identity: dict[str, Any]) -> None:
    key = job_key(identity)
    assert is_hex_key(key)
    assert job_key(dict(identity)) == key
    assert JobSpec(identity=identity).key == key


@given(st.dictionaries(accented.map(nfc), accented, min_size=1, max_size=4))
def test_nfc_and_nfd_spellings_are_one_job(identity: dict[str, str]) -> None:
    composed = {nfc(k): nfc(v) for k, v in identity.items()}
    decomposed = {nfd(k): nfd(v) for k, v in identity.items()}
    assert job_key(composed) == job_key(decomposed) == job_key(identity)
    assert canonical_identity(decomposed) == canonical_identity(composed)


def test_nfc_and_nfd_example() -> None:
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    assert composed != decomposed
    assert job_key({composed: composed}) == job_key({decomposed: decomposed})
    assert canonical_identity({decomposed: 1}) == '{"caf\u00e9":1}'


@given(st.integers())
def test_string_and_int_are_different_jobs(n: int) -> None:
    assert job_key({"id": str(n)}) != job_key({"id": n})


@given(identities, identities)
def test_different_identities_have_different_keys(a: dict[str, Any], b: dict[str, Any]) -> None:
    if canonical_identity(a) != canonical_identity(b):
        assert job_key(a) != job_key(b)
    else:
        assert job_key(a) == job_key(b)


def test_canonical_form_is_compact_sorted_utf8() -> None:
    text = canonical_identity({"b": "\u00e9\U0001f680", "a": 1, "c": 'q"uote'})
    assert text == '{"a":1,"b":"\u00e9\U0001f680","c":"q\\"uote"}'


# --- job_key: refusals ---------------------------------------------------------------


BAD_VALUES = [
    pytest.param(1.5, id="float"),
    pytest.param(1.0, id="integral-float"),
    pytest.param(math.nan, id="nan"),
    pytest.param(math.inf, id="inf"),
    pytest.param(True, id="true"),
    pytest.param(False, id="false"),
    pytest.param(None, id="none"),
    pytest.param({"a": 1}, id="nested-dict"),
    pytest.param({}, id="empty-dict"),
    pytest.param([1, 2], id="list"),
    pytest.param((1,), id="tuple"),
    pytest.param(b"bytes", id="bytes"),
    pytest.param(Decimal("1.5"), id="decimal"),
    pytest.param("lone \ud800 surrogate", id="lone-surrogate"),
    pytest.param(10**5000, id="int-beyond-digit-limit"),
]


@pytest.mark.parametrize("value", BAD_VALUES)
def test_bad_value_is_refused_naming_the_field(value: object) -> None:
    with pytest.raises(InvalidJob) as info:
        job_key({"good": "x", "bad_field": value, "also_good": 2})
    assert info.value.field == "bad_field"
    assert "bad_field" in str(info.value)


def test_nan_is_named_as_nan() -> None:
    with pytest.raises(InvalidJob, match="NaN"):
        job_key({"x": math.nan})


@given(identities, st.sampled_from([1.5, math.nan, True, None, [1], {"k": "v"}]))
def test_any_bad_field_is_the_one_named(identity: dict[str, Any], bad: object) -> None:
    name = "zz-offending"
    with pytest.raises(InvalidJob) as info:
        canonical_identity({**identity, name: bad})
    assert info.value.field == name


@pytest.mark.parametrize("identity", [{}, None, [("a", 1)], "a=1", 7])
def test_empty_or_non_mapping_identity_is_refused(identity: Any) -> None:
    with pytest.raises(InvalidJob):
        job_key(identity)


@pytest.mark.parametrize(
    "name",
    [1, None, b"name", ("a",), "", "\udc00"],
    ids=repr,
)
def test_bad_field_name_is_refused_and_shown(name: Any) -> None:
    with pytest.raises(InvalidJob) as info:
        job_key({"ok": 1, name: "v"})
    assert repr(name) in str(info.value)


def test_names_equal_after_normalisation_are_refused() -> None:
    with pytest.raises(InvalidJob) as info:
        job_key({"caf\u00e9": 1, "cafe\u0301": 2})
    assert info.value.field == "caf\u00e9"


# --- op_key --------------------------------------------------------------------------


@given(st.text(min_size=1, max_size=10), contexts)
def test_op_key_is_deterministic(kind: str, context: dict[str, Any]) -> None:
    jk = job_key({"id": 1})
    assert op_key(kind, jk, **context) == op_key(kind, jk, **context)
    assert is_hex_key(op_key(kind, jk, **context))


@given(contexts, st.randoms(use_true_random=False))
def test_op_key_context_order_is_irrelevant(context: dict[str, Any], rnd: Any) -> None:
    items = list(context.items())
    rnd.shuffle(items)
    jk = job_key({"id": 1})
    assert op_key("fetch", jk, **dict(items)) == op_key("fetch", jk, **context)


def test_op_keys_differ_by_kind_job_and_context() -> None:
    a, b = job_key({"id": 1}), job_key({"id": 2})
    keys = {
        op_key("fetch", a),
        op_key("upload", a),
        op_key("fetch", b),
        op_key("fetch", a, url="u1"),
        op_key("fetch", a, url="u2"),
        op_key("fetch", a, url="u1", attempt=1),
        op_key("fetch", a, attempt=1),
        op_key("fetch", a, attempt="1"),
    }
    assert len(keys) == 8


@given(contexts, st.text(min_size=1, max_size=10))
def test_a_job_key_is_never_an_op_key(identity: dict[str, Any], kind: str) -> None:
    jk = job_key(identity)
    assert jk != op_key(kind, jk)
    assert jk != op_key(kind, jk, **identity)
    # The domain tags are what keeps them apart, even for identical encoded bytes.
    body = canonical_identity(identity).encode()
    assert jk != hashlib.sha256(body).hexdigest()
    assert jk == hashlib.sha256(b"syncward.job.v1\n" + body).hexdigest()


@pytest.mark.parametrize(
    ("kind", "jk", "context", "field"),
    [
        ("", "ab", {}, "kind"),
        ("fetch", "", {}, "job_key"),
        ("fetch", "ab", {"attempt": 1.0}, "attempt"),
        ("fetch", "ab", {"url": None}, "url"),
        ("fetch", "ab", {"flag": True}, "flag"),
        ("fe\ud800tch", "ab", {}, "kind"),
    ],
)
def test_op_key_refusals(kind: str, jk: str, context: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidJob) as info:
        op_key(kind, jk, **context)
    assert info.value.field == field


# --- frozen vectors ------------------------------------------------------------------


@pytest.mark.parametrize("vector", VECTORS["job_keys"], ids=lambda v: v["canonical"][:30])
def test_job_key_vectors(vector: dict[str, Any]) -> None:
    assert canonical_identity(vector["identity"]) == vector["canonical"]
    assert job_key(vector["identity"]) == vector["key"]


@pytest.mark.parametrize("vector", VECTORS["op_keys"], ids=lambda v: v["kind"])
def test_op_key_vectors(vector: dict[str, Any]) -> None:
    assert op_key(vector["kind"], vector["job_key"], **vector["context"]) == vector["key"]


def test_vectors_cover_what_they_claim() -> None:
    ids = [v["identity"] for v in VECTORS["job_keys"]]
    assert len(ids) >= 12
    assert any(any(isinstance(x, int) and abs(x) >= 2**64 for x in i.values()) for i in ids)
    assert any(len(i) >= 4 for i in ids)
    assert any(any(isinstance(x, str) and not x.isascii() for x in i.values()) for i in ids)
    # one vector checked by hand, independently of job_key's code path
    first = VECTORS["job_keys"][0]
    expected = hashlib.sha256(b'syncward.job.v1\n{"kic":8462852}').hexdigest()
    assert first["identity"] == {"kic": 8462852}
    assert first["key"] == expected
