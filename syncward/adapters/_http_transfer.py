"""The network half of a download: one HEAD, one (ranged) GET streamed into a partial file.

No stages and no ledger here (`syncward.adapters.http` walks those); this module turns
HTTP exchanges into facts (`head`) or into bytes on disk (`transfer`), and failures into
handler signals through `_http_status`. Chunks are handed to the writer thread a batch
(`BATCH` bytes) at a time, so writing and hashing run beside the event loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio.to_thread
import httpx

from syncward.adapters._http_files import PartWriter, empty_file
from syncward.adapters._http_status import check_status, transport_signal
from syncward.errors import Permanent, Retry

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

__all__ = ["BATCH", "HEADERS", "Transfer", "facts", "head", "transfer"]

BATCH = 1 << 20
HEADERS = {"Accept-Encoding": "identity"}  # bytes as stored: Content-Length is the file's

@dataclass(frozen=True, slots=True)
class Transfer:
    """What a GET left in the partial file ``path``: the whole body, hashed.

    ``started`` is the offset the body started at (0 unless resumed); ``restarted`` says
    a resume was asked for and the server sent the whole (changed) file instead.
    """

    path: Path
    sha256: str
    size: int
    started: int
    restarted: bool


async def head(client: httpx.AsyncClient, url: str, *, max_retry_after: float
               ) -> dict[str, Any]:
    """``{"size", "etag", "ranges"}`` of ``url`` (JSON, for the ledger).

    A server without HEAD (405, 501) gives ``{"size": None, "etag": None, "ranges":
    False}``: the download then starts from 0 and learns the size from the GET.
    Raises:
        Retry, Permanent: see `_http_status`.
    """
    what = f"HEAD {url}"
    try:
        resp = await client.head(url, headers=HEADERS, follow_redirects=True)
    except httpx.HTTPError as exc:
        raise transport_signal(exc, what=what) from exc
    if resp.status_code in (405, 501):
        return {"size": None, "etag": None, "ranges": False}
    check_status(resp, what=what, max_retry_after=max_retry_after)
    return facts(resp)


def facts(resp: httpx.Response) -> dict[str, Any]:
    """``{"size", "etag", "ranges"}`` from a HEAD or a full (200) GET response."""
    return {"size": _int(resp.headers.get("content-length")),
            "etag": resp.headers.get("etag"),
            "ranges": "bytes" in resp.headers.get("accept-ranges", "").lower()}


async def transfer(client: httpx.AsyncClient, url: str, part: Path | None, offset: int, *,
                   validator: str | None, size: int | None, max_retry_after: float,
                   progress: Callable[[int, int, int | None], None],
                   on_headers: Callable[[dict[str, Any]], Awaitable[Path]] | None = None,
                   ) -> Transfer:
    """Fill ``part`` from ``offset`` (its bytes before it are kept and hashed first).

    A resume sends ``Range`` and ``If-Range: validator``; a 200 answer restarts from 0.
    A partial file already of the announced ``size`` needs no request at all.
    Without ``part`` (a fresh download, offset 0), ``on_headers(facts)`` is awaited once
    the response's headers are in and returns the partial file to write to.
    ``progress(new_bytes, done, total)`` is called after each batch is on disk.
    Raises:
        Retry: network errors, timeouts, 408/425/429/5xx, a body shorter or longer than
            announced (the partial file is kept: the next attempt resumes it).
        Permanent: other statuses.
    """
    if part is not None and size is not None and offset == size and offset > 0:
        writer = await anyio.to_thread.run_sync(PartWriter.open, part, offset)
        writer.close()
        return Transfer(part, writer.hasher.hexdigest(), writer.size, offset, restarted=False)
    headers = dict(HEADERS)
    if offset and validator is not None:
        headers.update({"Range": f"bytes={offset}-", "If-Range": validator})
    what = f"GET {url}"
    try:
        async with client.stream("GET", url, headers=headers, follow_redirects=True) as resp:
            try:
                start, total = _body_range(resp, offset, what, max_retry_after)
            except _StartAgain as again:
                if part is not None:
                    await anyio.to_thread.run_sync(empty_file, part)
                raise Retry(str(again)) from None
            if part is None:
                assert on_headers is not None, "give part or on_headers"
                part = await on_headers(facts(resp))
            writer = await anyio.to_thread.run_sync(PartWriter.open, part, start)
            try:
                await _receive(resp, writer, total, what, progress)
            finally:
                writer.close()
    except httpx.HTTPError as exc:
        raise transport_signal(exc, what=what) from exc
    if total is not None and writer.size != total:
        raise Retry(f"{what}: body of {writer.size} bytes, expected {total}")
    return Transfer(part, writer.hasher.hexdigest(), writer.size, start,
                    restarted=bool(offset) and start == 0)


class _StartAgain(Exception):
    """The partial file does not fit the server's answer: empty it, then retry."""


def _body_range(resp: httpx.Response, offset: int, what: str, max_retry_after: float
                ) -> tuple[int, int | None]:
    """Where the body starts and how long the whole file is (None: unknown)."""
    if resp.status_code == 206 and offset:
        start, total = _content_range(resp.headers.get("content-range"))
        if start != offset:
            raise _StartAgain(f"{what}: asked for bytes from {offset}, got Content-Range "
                              f"{resp.headers.get('content-range')!r}; starting again")
        return offset, total
    if resp.status_code == 416:
        raise _StartAgain(f"{what}: range from byte {offset} not satisfiable; starting again")
    check_status(resp, what=what, max_retry_after=max_retry_after)
    if resp.status_code != 200:
        raise Permanent(f"{what}: unexpected HTTP {resp.status_code} for a download")
    return 0, _int(resp.headers.get("content-length"))


async def _receive(resp: httpx.Response, writer: PartWriter, total: int | None, what: str,
                   progress: Callable[[int, int, int | None], None]) -> None:
    batch: list[bytes] = []
    pending = 0

    async def flush() -> None:
        nonlocal batch, pending
        await anyio.to_thread.run_sync(writer.write, batch)
        progress(pending, writer.size, total)
        batch, pending = [], 0

    try:
        async for chunk in resp.aiter_raw():
            batch.append(chunk)
            pending += len(chunk)
            if pending >= BATCH:
                await flush()
    except httpx.HTTPError as exc:
        if batch:
            await flush()
        raise Retry(f"{what}: body ended after {writer.size} of {total or '?'} bytes "
                    f"({type(exc).__name__}: {exc}); partial file kept for resume") from exc
    if batch:
        await flush()


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, complete length) of ``bytes a-b/n``; None where absent or ``*``."""
    if value is None or not value.startswith("bytes "):
        return None, None
    span, _, length = value[6:].partition("/")
    return _int(span.partition("-")[0]), _int(length) if length != "*" else None
