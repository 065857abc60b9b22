"""The manifest reader: formats, physical line numbers, reasons, and reading as a stream."""

from __future__ import annotations

import io
import tracemalloc
from itertools import islice
from pathlib import Path

import pytest

from syncward.adapters.manifest import (
    Entry,
    ManifestFormat,
    ManifestItem,
    Rejection,
    detect_format,
    open_manifest,
)
from syncward.errors import ConfigError


def read(path: Path, **kwargs: object) -> list[ManifestItem]:
    with open_manifest(str(path), **kwargs) as m:  # type: ignore[arg-type]
        return list(m)


def write(tmp_path: Path, name: str, data: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def entries(items: list[ManifestItem]) -> list[tuple[int, dict[str, object], dict[str, object]]]:
    return [(i.line, dict(i.spec.identity), dict(i.spec.payload))
            for i in items if isinstance(i, Entry)]


def rejections(items: list[ManifestItem]) -> list[tuple[int, str]]:
    return [(i.line, i.reason) for i in items if isinstance(i, Rejection)]


# --- txt -----------------------------------------------------------------------------------


def test_txt_skips_comments_and_blank_lines_and_keeps_physical_line_numbers(
        tmp_path: Path) -> None:
    path = write(tmp_path, "m.txt", "# header comment\na\n\n  b  \n   # indented comment\nc\r\n")
    assert entries(read(path)) == [(2, {"id": "a"}, {}), (4, {"id": "b"}, {}),
                                   (6, {"id": "c"}, {})]


def test_txt_key_names_the_identity_field(tmp_path: Path) -> None:
    path = write(tmp_path, "m.txt", "x\n")
    assert entries(read(path, key=["url"])) == [(1, {"url": "x"}, {})]
    with pytest.raises(ConfigError, match="one identity field"):
        read(path, key=["a", "b"])


def test_an_undecodable_line_is_rejected_alone(tmp_path: Path) -> None:
    path = write(tmp_path, "m.txt", b"\xef\xbb\xbfa\nb\xff\nc\n")  # a BOM, then bad UTF-8
    items = read(path)
    assert entries(items) == [(1, {"id": "a"}, {}), (3, {"id": "c"}, {})]
    assert rejections(items) == [(2, "not valid UTF-8 (byte 1)")]
    assert [type(i) for i in items] == [Entry, Rejection, Entry]  # file order


# --- csv -----------------------------------------------------------------------------------


def test_csv_identity_from_key_columns_and_payload_from_the_rest(tmp_path: Path) -> None:
    path = write(tmp_path, "m.csv", "host,path,size\nexample.org, /a ,10\n\nexample.org,/b,20\n")
    assert entries(read(path, key=["host", "path"])) == [
        (2, {"host": "example.org", "path": "/a"}, {"size": "10"}),
        (4, {"host": "example.org", "path": "/b"}, {"size": "20"}),
    ]


def test_csv_bad_rows_are_rejected_with_reasons(tmp_path: Path) -> None:
    path = write(tmp_path, "m.csv",
                 'id,name\n1,a\n2\n ,b\n3,c,extra\n4,"multi\nline"\n5,e\n6,"x"y\n7,g\n')
    items = read(path)
    assert entries(items) == [(2, {"id": "1"}, {"name": "a"}),
                              (6, {"id": "4"}, {"name": "multi\nline"}),
                              (8, {"id": "5"}, {"name": "e"}),
                              (10, {"id": "7"}, {"name": "g"})]
    reasons = rejections(items)
    assert [line for line, _ in reasons] == [3, 4, 5, 9]
    assert reasons[0][1] == "expected 2 columns, got 1"
    assert reasons[1][1] == "empty identity column 'id'"
    assert reasons[2][1] == "expected 2 columns, got 3"
    assert reasons[3][1].startswith("cannot parse csv")


@pytest.mark.parametrize(("text", "message"), [
    ("", "needs a header"),
    ("name,size\na,1\n", "no column 'id'"),
    ("id,id\n1,2\n", "repeats column"),
])
def test_csv_file_problems_refuse_the_manifest(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        read(write(tmp_path, "m.csv", text))


# --- jsonl ---------------------------------------------------------------------------------


def test_jsonl_lines_and_their_reasons(tmp_path: Path) -> None:
    lines = [
        '{"identity": {"id": 1}, "payload": {"url": "u"}}',
        "not json",
        '{"identity": {"id": 1.5}}',
        "[1, 2]",
        '{"payload": {}}',
        '{"identity": "x"}',
        '{"identity": {"id": 2}, "payload": []}',
        '{"identity": {"id": 3}, "extra": true}',
        '{"identity": {}}',
        "",
        '{"identity": {"id": "two", "n": 2}}',
        '{"identity": {"id": 4}, "priority": 60}',
        '{"identity": {"id": 5}, "priority": 1.5}',
        '{"identity": {"id": 6}, "priority": true}',
    ]
    items = read(write(tmp_path, "m.jsonl", "\n".join(lines) + "\n"))
    assert entries(items) == [(1, {"id": 1}, {"url": "u"}), (11, {"id": "two", "n": 2}, {}),
                              (12, {"id": 4}, {})]
    assert [i.spec.priority for i in items if isinstance(i, Entry)] == [0, 0, 60]
    assert rejections(items) == [
        (2, "not valid JSON: Expecting value: line 1 column 1 (char 0)"),
        (3, "invalid job: field 'id': must be str or int, got float 1.5 "
            "(floats are not exact identities)"),
        (4, "expected a JSON object, got an array"),
        (5, 'no "identity" field'),
        (6, '"identity" must be an object, got a string'),
        (7, '"payload" must be an object, got an array'),
        (8, "unknown field(s) 'extra': expected \"identity\" and optional \"payload\", "
            "\"priority\""),
        (9, "invalid job: identity is empty"),
        (13, '"priority" must be an integer from -1000000000 to 1000000000, got 1.5'),
        (14, '"priority" must be an integer from -1000000000 to 1000000000, got True'),
    ]
    assert next(i for i in items if isinstance(i, Rejection)).raw == "not json"


def test_key_does_not_apply_to_jsonl(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not apply"):
        read(write(tmp_path, "m.jsonl", ""), key=["id"])


# --- sources and formats -------------------------------------------------------------------


def test_format_from_extension_or_explicit() -> None:
    assert detect_format("a/b.TXT") is ManifestFormat.TXT
    assert detect_format("b.csv") is ManifestFormat.CSV
    assert detect_format("b.ndjson") is ManifestFormat.JSONL
    assert detect_format("-") is ManifestFormat.TXT
    assert detect_format("b.data", "csv") is ManifestFormat.CSV
    with pytest.raises(ConfigError, match=r"from its extension \.data"):
        detect_format("b.data")
    with pytest.raises(ConfigError, match="unknown manifest format 'xml'"):
        detect_format("b.txt", "xml")


def test_stdin_and_unreadable_files(tmp_path: Path) -> None:
    stdin = io.BytesIO(b'{"identity": {"id": 7}}\n')
    with open_manifest("-", fmt="jsonl", stdin=stdin) as m:
        assert entries(list(m)) == [(1, {"id": 7}, {})]
    with pytest.raises(ConfigError, match=r"cannot read manifest .*No such file"):
        open_manifest(str(tmp_path / "absent.txt"))
    with pytest.raises(ConfigError, match="cannot read manifest"):
        open_manifest(str(tmp_path), fmt="txt")  # a directory


class _CountingReader(io.RawIOBase):
    """An endless binary stream of numbered lines that counts how many were read."""

    def __init__(self, header: bytes = b"") -> None:
        self.header = header
        self.lines = 0

    def readline(self, size: int | None = -1) -> bytes:
        if self.header:
            line, self.header = self.header, b""
            return line
        self.lines += 1
        return f"{self.lines},x\n".encode()


@pytest.mark.parametrize(("fmt", "header"), [("txt", b""), ("csv", b"id,payload\n")])
def test_the_manifest_is_read_as_a_stream(fmt: str, header: bytes) -> None:
    source = _CountingReader(header)
    with open_manifest("-", fmt=fmt, stdin=source) as m:  # type: ignore[arg-type]
        first = list(islice(m, 3))
    assert len(first) == 3
    assert source.lines <= 4  # an endless source: only what was asked for was read


def test_memory_does_not_grow_with_the_file(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    with path.open("w") as fh:
        for i in range(5_000):
            fh.write(f"item-{i}\n")
    tracemalloc.start()
    try:
        n = 0
        with open_manifest(str(path)) as m:
            for item in m:
                n += isinstance(item, Entry)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == 5_000
    assert peak < 200_000  # bytes; holding the entries takes over 2 MB


# --- the command line's feed: a reader thread handing chunks to the loop ----------------


async def test_feed_hands_over_big_chunks_of_a_file_in_order(tmp_path: Path) -> None:
    from syncward.cli.feed import ManifestFeed

    path = write(tmp_path, "m.txt", "".join(f"{i}\n" for i in range(2500)) + "\xff\n")
    sizes, lines = [], []
    async with ManifestFeed(open_manifest(str(path)), chunk=1000) as feed:
        async for chunk in feed.chunks():
            sizes.append(len(chunk))
            lines.extend(item.line for item in chunk)
    assert lines == list(range(1, 2502))
    assert max(sizes) <= 1000 and sum(sizes) == 2501


async def test_feed_hands_over_lines_as_they_trickle_in() -> None:
    import os

    import anyio

    from syncward.cli.feed import ManifestFeed

    read_fd, write_fd = os.pipe()
    source = os.fdopen(read_fd, "rb")
    manifest = open_manifest("-", stdin=source, close_stdin=True)
    with anyio.fail_after(5):
        async with ManifestFeed(manifest, chunk=1000) as feed:
            chunks = feed.chunks()
            os.write(write_fd, b"a\nb\n")
            got = await chunks.__anext__()
            while len(got) < 2:  # the two lines may come as one chunk or two
                got += await chunks.__anext__()
            assert [item.spec.identity for item in got] == [{"id": "a"}, {"id": "b"}]
            os.write(write_fd, b"c\n")
            os.close(write_fd)
            rest = [item async for chunk in chunks for item in chunk]
    assert [item.line for item in rest] == [3]
    assert source.closed  # the reader thread closed what it was given


def test_a_csv_priority_column_is_the_priority_not_payload(tmp_path: Path) -> None:
    text = "id,prio,url\na,10,u1\nb,,u2\nc,x,u3\nd,-3,u4\n"
    with open_manifest(str(write(tmp_path, "m.csv", text)), priority_column="prio") as m:
        items = list(m)
    good = [i for i in items if isinstance(i, Entry)]
    assert [(e.spec.identity["id"], e.spec.priority, dict(e.spec.payload)) for e in good] == [
        ("a", 10, {"url": "u1"}), ("b", 0, {"url": "u2"}), ("d", -3, {"url": "u4"})]
    assert rejections(items) == [
        (4, "column 'prio': the priority must be an integer from -1000000000 to 1000000000, "
            "got 'x'")]


def test_a_priority_column_must_be_a_csv_column_and_not_the_identity(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--priority-column 'p' is not a column"):
        open_manifest(str(write(tmp_path, "m.csv", "id\na\n")), priority_column="p")
    with pytest.raises(ConfigError, match="--priority-column 'id' is an identity column"):
        open_manifest(str(write(tmp_path, "n.csv", "id\na\n")), priority_column="id")
    with pytest.raises(ConfigError, match=r"applies to \.csv manifests"):
        open_manifest(str(write(tmp_path, "m.txt", "a\n")), priority_column="p")
