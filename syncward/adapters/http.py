"""HTTP downloads as a crash-proof effect: `HttpFetcher.download(ctx, url, dest_dir)`.

A handler calls it with its `Context`; it walks the job through committed stages::

    HEAD_DONE -> RESUME_OK -> STREAMING -> FINALIZED -> INDEXED -> DEDUPED

The order is declared (`syncward.stages`) on `HttpFetcher.handler`, and a download never
commits a stage before the one its job has reached: a retried job resuming at STREAMING
keeps it while it asks again with a HEAD, and one at FINALIZED or later repeats nothing.
Each stage is committed together with the ledger record it stands on
(``ctx.effect_and_stage``, ``ctx.claim(..., stage=...)``), and a stage whose facts come
with the next one is passed over, so a fresh file costs five commits: the destination
claim, STREAMING (with the GET's headers), FINALIZED (with name, size and SHA-256),
DEDUPED (with the content claim) and the outcome (ten before: `python -m benchmarks.http`
measured 0.687 against 0.647, medians of five).

  * HEAD_DONE: size, ETag and range support, recorded in the operation ledger as the
    effect ``http.head`` (once per attempt: a later attempt asks again, the resource may
    have changed). They come from a HEAD request when the job may have a partial file to
    resume (an earlier attempt reached RESUME_OK or STREAMING) or with
    ``always_head=True``, committed with HEAD_DONE; on a fresh job they come from the GET's
    own response headers, which carry the same facts, and are committed with STREAMING
    between the GET's headers and its body: no round trip is spent on a HEAD whose answer
    could not change anything (it halves the requests per file).
  * RESUME_OK: the job's partial file for this ETag is kept and resumed (``Range`` +
    ``If-Range``), or started again from 0 when there is no strong ETag, no range support,
    or the ETag changed (a partial file is named after its ETag, see `_http_paths`). The
    choice is made again by every attempt, so it is passed over: a job recorded at
    RESUME_OK resumes like one at STREAMING.
  * STREAMING: the body goes to the partial file, hashed (SHA-256) as it arrives; when
    resuming, the existing prefix is hashed first. A server that answers a range request
    with 200 (If-Range no longer matches) restarts the file from 0. The partial file
    exists before STREAMING commits: an attempt that ends in between leaves it to the
    next attempt's sweep, or to `part_cleanup`.
  * FINALIZED: fsync, atomic rename (`os.replace`), fsync of the directory, recorded as
    the effect ``http.finalize`` with name, size and SHA-256, in one commit with the
    stage. A retried job whose FINALIZED stage committed never downloads again: it reads
    the record.
  * INDEXED, DEDUPED: the content hash is claimed (``ctx.claim("sha256", digest)``), in
    one commit with DEDUPED (INDEXED is passed over): the first job with these bytes owns
    them, and a later job with the same bytes removes its copy and ends skipped, naming
    the job that holds the first (`Skip`); the first job's result is a `Downloaded`. A
    retried job at DEDUPED reads the claim and does the same.

Failures are classified by `_http_status`: transport errors, timeouts, 408/425/429/5xx
and short bodies retry (Retry-After honoured; the partial file is kept for resume), other
4xx fail permanently. The file name comes from the job (an identity field or the URL's
last path segment) through `safe_name` and `dest_path`: it never leaves ``dest_dir``.
Each destination is claimed too (``ctx.claim("http.path", path)``), so two jobs whose
names sanitise to the same file cannot overwrite each other: the second fails.

Start-up clean-up: `part_cleanup(dest_dir)` (re-exported here) returns the ``(name,
hook)`` pair for ``Runtime(reconcile_hooks=...)`` that removes the partial files whose
job is finished or unknown; see `_http_reconcile` for why those of planned jobs stay.

One `httpx.AsyncClient` is shared by every download of a fetcher (connection pool limits
and timeouts from the ``limits``/``timeout`` value objects); pass ``client=`` to use your
own (the fetcher then leaves closing it to you).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio.to_thread
import httpx

from syncward.adapters._http_files import adopt_final, drop_file, finalize, parts_of, prepare_part
from syncward.adapters._http_paths import dest_path, name_from_url, safe_name
from syncward.adapters._http_reconcile import part_cleanup
from syncward.adapters._http_status import MAX_RETRY_AFTER
from syncward.adapters._http_transfer import head, transfer
from syncward.errors import Permanent, Skip
from syncward.stage_order import stages

if TYPE_CHECKING:
    from collections.abc import Callable
    from os import PathLike
    from types import TracebackType

    from syncward.actors.downloader import Context, Handler
    from syncward.jobs import Job

__all__ = [
    "DEFAULT_LIMITS",
    "DEFAULT_TIMEOUT",
    "Downloaded",
    "FetcherStatistics",
    "HttpFetcher",
    "HttpStage",
    "download",
    "part_cleanup",
]

DEFAULT_LIMITS = httpx.Limits(max_connections=64, max_keepalive_connections=64)
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=10.0, pool=None)


class HttpStage(enum.StrEnum):
    """The committed milestones of a download, in order."""

    HEAD_DONE = "HEAD_DONE"
    RESUME_OK = "RESUME_OK"
    STREAMING = "STREAMING"
    FINALIZED = "FINALIZED"
    INDEXED = "INDEXED"
    DEDUPED = "DEDUPED"


_ORDER = tuple(HttpStage)
_FINALIZED_OR_LATER = frozenset({HttpStage.FINALIZED, HttpStage.INDEXED, HttpStage.DEDUPED})
_MAY_HAVE_PART = frozenset({HttpStage.RESUME_OK, HttpStage.STREAMING})


@dataclass(frozen=True, slots=True)
class Downloaded:
    """A file in place: its ``path`` (absolute), size, SHA-256 and the ETag it came with.

    ``resumed_from`` is the offset the last transfer started at (0: the whole body;
    None: the file was adopted, not transferred, by this job's record).
    """

    url: str
    path: str
    size: int
    sha256: str
    etag: str | None
    resumed_from: int | None

    def as_dict(self) -> dict[str, Any]:
        return {"url": self.url, "path": self.path, "size": self.size, "sha256": self.sha256,
                "etag": self.etag, "resumed_from": self.resumed_from}


@dataclass(frozen=True, slots=True)
class FetcherStatistics:
    """Counters of one fetcher since it was created (this process only)."""

    heads: int
    gets: int
    bytes_received: int
    files: int
    resumed: int
    restarted: int
    duplicates: int


class HttpFetcher:
    """Downloads files for handlers over one shared `httpx.AsyncClient`.

    Use as ``async with HttpFetcher() as fetcher:``, then ``await fetcher.download(ctx,
    url, dest_dir)`` from handlers, or ``fetcher.handler(dest_dir)`` as the handler.
    ``on_progress(url, done, total)`` is called after each batch written to disk.
    ``keep_duplicates`` keeps the file of a job that ends skipped as a duplicate;
    ``always_head`` sends a HEAD before every GET (by default only before a resume);
    ``max_retry_after`` caps the waits servers ask for.
    """

    def __init__(self, *, client: httpx.AsyncClient | None = None,
                 limits: httpx.Limits = DEFAULT_LIMITS,
                 timeout: httpx.Timeout = DEFAULT_TIMEOUT,
                 on_progress: Callable[[str, int, int | None], None] | None = None,
                 keep_duplicates: bool = False,
                 always_head: bool = False,
                 max_retry_after: float = MAX_RETRY_AFTER) -> None:
        self._own_client = client is None
        self.client = client if client is not None else httpx.AsyncClient(
            limits=limits, timeout=timeout, headers={"User-Agent": "syncward"})
        self.on_progress = on_progress
        self.keep_duplicates = keep_duplicates
        self.always_head = always_head
        self.max_retry_after = max_retry_after
        self._counts = {f.name: 0 for f in dataclasses.fields(FetcherStatistics)}

    async def __aenter__(self) -> HttpFetcher:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the client if this fetcher created it."""
        if self._own_client:
            await self.client.aclose()

    def statistics(self) -> FetcherStatistics:
        return FetcherStatistics(**self._counts)

    def handler(self, dest_dir: str | PathLike[str], *, url_field: str = "url",
                name_field: str | None = None) -> Handler:
        """A ready handler: downloads ``payload[url_field]`` (or ``identity[url_field]``).

        The file is named after ``identity[name_field]`` when given, else after the URL.
        The job's result is `Downloaded.as_dict`. It declares the stage order (`HttpStage`).
        """
        @stages(*_ORDER)
        async def handle(job: Job, ctx: Context) -> dict[str, Any]:
            url = job.payload.get(url_field, job.identity.get(url_field))
            if not isinstance(url, str):
                raise Permanent(f"job has no {url_field!r} in its payload or identity")
            name = None if name_field is None else str(job.identity[name_field])
            return (await self.download(ctx, url, dest_dir, name=name)).as_dict()
        return handle

    # --- the stages --------------------------------------------------------------------

    async def download(self, ctx: Context, url: str, dest_dir: str | PathLike[str], *,
                       name: str | None = None) -> Downloaded:
        """Download ``url`` into ``dest_dir`` for ``ctx``'s job (see the module docstring).

        ``name`` (e.g. an identity field) names the file; by default the URL's last path
        segment does. Either way it is sanitised and checked to stay inside ``dest_dir``.
        Raises:
            Retry: a retryable failure (network, timeout, 408/425/429/5xx, short body).
            Permanent: another 4xx, an unsafe or already claimed destination.
            Skip: the content is a duplicate of another job's download.
            LeaseLost: the job's lease is gone (stop working on it).
        """
        job = ctx.job
        fname = safe_name(name if name is not None else name_from_url(url),
                          fallback=f"download-{job.key[:16]}")
        final = await anyio.to_thread.run_sync(dest_path, Path(dest_dir), fname)
        holder = await ctx.claim("http.path", str(final))
        if holder != job.key:
            raise Permanent(f"destination {final} already belongs to job {holder}")
        if job.stage in _FINALIZED_OR_LATER or (
                job.stage == HttpStage.STREAMING and await anyio.to_thread.run_sync(
                    _renamed_before, final, fname, job.key)):
            # Renamed by an earlier attempt (which may not have committed FINALIZED).
            record = await ctx.effect_and_stage("http.finalize", functools.partial(
                adopt_final, final, _record(url, fname, None, None)),
                _ahead(ctx, HttpStage.FINALIZED), path=fname)
        else:
            record = await self._fetch(ctx, url, final, fname)
        return await self._index(ctx, url, final, record)

    async def _fetch(self, ctx: Context, url: str, final: Path, fname: str) -> dict[str, Any]:
        job = ctx.job
        part: Path | None = None
        offset = 0
        info: dict[str, Any] = {"size": None, "etag": None}
        if self.always_head or job.stage in _MAY_HAVE_PART:
            info = await ctx.effect_and_stage("http.head", functools.partial(
                head, self.client, url, max_retry_after=self.max_retry_after),
                _ahead(ctx, HttpStage.HEAD_DONE), attempt=job.attempt)
            self._counts["heads"] += 1
            part, offset = await self._resume_point(ctx, final, fname, info)
            await _reach(ctx, HttpStage.STREAMING)

        async def on_headers(facts: dict[str, Any]) -> Path:
            """A fresh download: the GET's headers are the facts a HEAD would give; they
            are recorded with STREAMING, in one commit, once the partial file exists."""
            async def recorded() -> dict[str, Any]:
                return facts

            found, _ = await self._resume_point(ctx, final, fname, facts)
            await ctx.effect_and_stage("http.head", recorded,
                                       _ahead(ctx, HttpStage.STREAMING), attempt=job.attempt)
            info.update(facts)
            return found

        def progress(new: int, done: int, total: int | None) -> None:
            self._counts["bytes_received"] += new
            ctx.progress(done, total)
            if self.on_progress is not None:
                self.on_progress(url, done, total)

        self._counts["gets"] += 1
        got = await transfer(self.client, url, part, offset, validator=_strong(info["etag"]),
                             size=info["size"], max_retry_after=self.max_retry_after,
                             progress=progress, on_headers=on_headers)
        self._counts["resumed"] += got.started > 0
        self._counts["restarted"] += got.restarted
        part = got.path
        record = {**_record(url, fname, info["etag"], got.started), "sha256": got.sha256,
                  "size": got.size}
        committed: dict[str, Any] = await ctx.effect_and_stage(
            "http.finalize", functools.partial(finalize, part, final, record),
            _ahead(ctx, HttpStage.FINALIZED), path=fname)
        self._counts["files"] += 1
        if committed != record:  # an earlier run's record won: our copy is spare
            await anyio.to_thread.run_sync(drop_file, part)
        return committed

    async def _resume_point(self, ctx: Context, final: Path, fname: str,
                            info: dict[str, Any]) -> tuple[Path, int]:
        """The partial file and the offset to write from, for these facts (it exists from
        here on until it is renamed; the caller commits STREAMING next)."""
        job = ctx.job
        strong = _strong(info["etag"])
        return await anyio.to_thread.run_sync(functools.partial(
            prepare_part, final.parent, fname, job.key, strong,
            resumable=bool(info["ranges"]) and strong is not None, size=info["size"],
            sweep=job.stage is not None or job.attempt > 1))

    async def _index(self, ctx: Context, url: str, final: Path, record: dict[str, Any]
                     ) -> Downloaded:
        job = ctx.job
        digest = str(record["sha256"])
        holder = await ctx.claim("sha256", digest, stage=_ahead(ctx, HttpStage.DEDUPED))
        if holder != job.key:
            kept = self.keep_duplicates
            if not kept:
                await anyio.to_thread.run_sync(drop_file, final)
            self._counts["duplicates"] += 1
            raise Skip(f"duplicate of job {holder}: same SHA-256 ({digest[:16]}…); "
                       f"this copy {'kept' if kept else 'removed'}")
        return Downloaded(url=url, path=str(final), size=int(record["size"]), sha256=digest,
                          etag=record.get("etag"), resumed_from=record.get("resumed_from"))


async def download(ctx: Context, url: str, dest_dir: str | PathLike[str], *,
                   fetcher: HttpFetcher, name: str | None = None) -> Downloaded:
    """``fetcher.download(ctx, url, dest_dir, name=name)``: see `HttpFetcher.download`."""
    return await fetcher.download(ctx, url, dest_dir, name=name)


# --- helpers -----------------------------------------------------------------------------


def _ahead(ctx: Context, stage: HttpStage) -> HttpStage | None:
    """``stage`` unless the job has reached it or a later one (stages never go back)."""
    current = ctx.current_stage
    if current in _ORDER and _ORDER.index(HttpStage(current)) >= _ORDER.index(stage):
        return None
    return stage


async def _reach(ctx: Context, stage: HttpStage) -> None:
    """Commit ``stage`` unless the job has reached it or a later one."""
    if _ahead(ctx, stage) is not None:
        await ctx.stage(stage)


def _strong(etag: Any) -> str | None:
    """The ETag if it can validate a range (a strong one), else None."""
    return etag if isinstance(etag, str) and not etag.startswith("W/") else None


def _record(url: str, fname: str, etag: Any, started: int | None) -> dict[str, Any]:
    return {"url": url, "name": fname, "etag": etag, "resumed_from": started}


def _renamed_before(final: Path, fname: str, key: str) -> bool:
    """Whether the final file exists and this job has no partial file left for it."""
    return final.exists() and not parts_of(final.parent, fname, key)
