"""A local archive of Kepler light curves over HTTP/1.1, with faults by seed and rate.

In-process, inside an event loop (anyio/asyncio)::

    from syncward.testing.archive import ArchiveConfig, ArchiveServer

    async with ArchiveServer(ArchiveConfig(files=20, fault_rate=0.2)) as archive:
        archive.url, archive.catalogue, archive.file_url(name), archive.sha256(name)

or from synchronous code, served from a thread: ``url = archive.start()`` ...
``archive.stop()``. As a program of its own: ``python examples/archive_server.py --files
100 --seed 0 --fault-rate 0.2 [--port 0]`` (a thin script over this module).

What it serves: N files named like Kepler long-cadence light curves,
``/pub/kepler/lightcurves/0119/011904151/kplr011904151-2009131105131_llc.fits`` (MAST's
layout), deterministic from the seed: KIC ids, sizes (log-uniform between ``min_size`` and
``max_size``) and bytes (a FITS-like header block, then pseudo-random data). HEAD and GET,
single ``Range`` requests (206, 416), ``If-Range``, strong ETags, keep-alive.

Faults:
  * permanent: ``missing`` files are listed in the catalogue but always answer 404;
    ``duplicates`` files have exactly the bytes of another file under their own name;
  * transient, drawn per request from ``(seed, file name, n-th request for it)`` with
    probability ``fault_rate``, at most ``max_faults_per_file`` per file (so a client
    with a few attempts always gets every file): 500, 429 with ``Retry-After``, a slow
    body, a connection reset mid-body, a truncated body (Content-Length larger than what
    is sent, then the connection is closed). HEAD requests draw only 500 and 429;
  * scripted, for tests: ``archive.script(name, Fault.STALL, at=n)`` applies a fault to
    the next GET of that file (before any random draw) and returns an ``anyio.Event``
    set once it has fired (for body faults: once the first ``at`` bytes are sent).
    ``Fault.STALL`` sends ``at`` bytes and then nothing until the client goes away.
  * versions: ``archive.mutate(name)`` changes a file's bytes and ETag (a new version).

``archive.requests`` logs every request (method, file, Range, If-Range, status, fault).
``archive.expected()`` says what a correct client ends with.

Why it lives in ``syncward.testing``: it is a test double for download handlers — the
server side of `syncward.adapters.http`, misbehaving on purpose — which is what that
package is for (helpers for testing syncward and the handlers users write for it), and
``syncward demo`` needs it from an installed wheel, which ships the package but not
``examples/``. A ``syncward.demo`` package was rejected: the demo is one user of the
server among several (our tests, the Kepler example, the HTTP benchmark, users' own
tests), and the command itself belongs with the other commands in ``syncward.cli``.
It is not re-exported from ``syncward.testing`` (import ``syncward.testing.archive``), so
importing the testing helpers stays as light as it was. It needs nothing beyond anyio.

Design notes: an anyio TCP listener with a small hand-written HTTP/1.1 loop rather than
``http.server``, so that the server runs in the caller's event loop (tests synchronise
with it through events instead of sleeps) and faults can be exact about bytes on the
wire. A reset is an abortive close (SO_LINGER 0); a truncation is a graceful one (FIN)
after the partial body, so the client sees a clean end of stream before Content-Length.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import json
import math
import random
import socket
import struct
import sys
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.from_thread
from anyio.abc import SocketAttribute, SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

__all__ = ["ArchiveConfig", "ArchiveFile", "ArchiveServer", "Fault", "RequestRecord"]

_MAX_HEAD = 16 * 1024
_CHUNK = 256 * 1024
_SLOW_CHUNK = 16 * 1024
_BLOCK = 2880  # a FITS block
_TIMESTAMP = "2009131105131"  # Kepler quarter 1, long cadence
_KIC_RANGE = (757_076, 12_935_144)  # the KIC ids of Kepler targets span about this


class Fault(enum.StrEnum):
    ERROR_500 = "500"
    TOO_MANY = "429"
    SLOW = "slow"
    RESET = "reset"
    TRUNCATE = "truncate"
    STALL = "stall"  # scripted only


RANDOM_FAULTS = (Fault.ERROR_500, Fault.TOO_MANY, Fault.SLOW, Fault.RESET, Fault.TRUNCATE)
_HEAD_FAULTS = frozenset({Fault.ERROR_500, Fault.TOO_MANY})
_BODY_FAULTS = frozenset({Fault.RESET, Fault.TRUNCATE, Fault.STALL})


@dataclass(frozen=True, slots=True, kw_only=True)
class ArchiveConfig:
    """What the archive serves and how it misbehaves. ``None`` counts are derived from
    ``files``: about 1 in 25 missing and 1 in 20 duplicates, at least one each from 10
    files on."""

    files: int = 40
    seed: int = 0
    kic_ids: tuple[int, ...] | None = None  # instead of ``files`` ids drawn from the seed
    min_size: int = 4 * 1024
    max_size: int = 3 * 1024 * 1024
    missing: int | None = None
    duplicates: int | None = None
    fault_rate: float = 0.0
    faults: tuple[Fault, ...] = RANDOM_FAULTS
    max_faults_per_file: int = 2
    retry_after: float = 1.0
    slow_seconds: float = 0.5  # how long a slow body takes in all
    host: str = "127.0.0.1"
    port: int = 0


@dataclass(frozen=True, slots=True)
class ArchiveFile:
    """One entry of the catalogue. ``duplicate_of`` names the file whose bytes it has."""

    name: str
    kic: int
    path: str
    size: int
    missing: bool
    duplicate_of: str | None


@dataclass(frozen=True, slots=True)
class RequestRecord:
    method: str
    target: str
    name: str | None
    range: str | None
    if_range: str | None
    status: int
    fault: Fault | None


@dataclass(slots=True)
class _Planned:
    kind: Fault
    at: float | int | None = None  # bytes (int) or a fraction of the body (float)
    retry_after: float | None = None
    fired: anyio.Event | None = None


@dataclass(slots=True)
class _Request:
    method: str
    target: str
    version: str
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def keep_alive(self) -> bool:
        conn = self.headers.get("connection", "").lower()
        return conn != "close" and (self.version == "HTTP/1.1" or conn == "keep-alive")


def light_curve_name(kic: int) -> str:
    return f"kplr{kic:09d}-{_TIMESTAMP}_llc.fits"


def light_curve_path(kic: int) -> str:
    """MAST's layout: ``/pub/kepler/lightcurves/<first 4 digits>/<9 digits>/<name>``."""
    k9 = f"{kic:09d}"
    return f"/pub/kepler/lightcurves/{k9[:4]}/{k9}/{light_curve_name(kic)}"


class ArchiveServer:
    """The archive. See the module docstring; ``url`` is set while it is serving."""

    def __init__(self, config: ArchiveConfig | None = None) -> None:
        self.config = config = config or ArchiveConfig()
        self.catalogue = _catalogue(config)
        self.requests: list[RequestRecord] = []
        self.url = ""
        self._by_path = {f.path: f for f in self.catalogue}
        self._by_name = {f.name: f for f in self.catalogue}
        self._versions: Counter[str] = Counter()
        self._content: dict[tuple[str, int], tuple[bytes, str]] = {}
        self._scripts: dict[str, deque[_Planned]] = {}
        self._seen: Counter[str] = Counter()
        self._faulted: Counter[str] = Counter()
        self._extra: dict[str, bytes] = {}
        self._stack: contextlib.AsyncExitStack | None = None
        self._thread: Any = None

    # --- what it serves ---------------------------------------------------------------

    def file_url(self, name: str) -> str:
        return self.url + self._by_name[name].path

    def content(self, name: str) -> bytes:
        """The current bytes of file ``name`` (a duplicate's are its original's)."""
        return self._load(self._by_name[name])[0]

    def sha256(self, name: str) -> str:
        return hashlib.sha256(self.content(name)).hexdigest()

    def etag(self, name: str) -> str:
        return self._load(self._by_name[name])[1]

    def mutate(self, name: str) -> None:
        """Publish a new version of ``name``: other bytes, another ETag."""
        self._versions[name] += 1

    def put(self, target: str, data: bytes) -> None:
        """Serve ``data`` at the exact raw request target ``target`` (for odd URLs)."""
        self._extra[target] = data

    def script(self, name: str, kind: Fault, *, at: float | int | None = None,
               retry_after: float | None = None) -> anyio.Event:
        """Apply ``kind`` to the next GET of ``name``; the event is set once it fired.

        ``at``: bytes sent before a body fault (an int) or a fraction of the body (a
        float); default half. Call from the event loop the server runs in.
        """
        planned = _Planned(kind, at, retry_after, anyio.Event())
        self._scripts.setdefault(name, deque()).append(planned)
        assert planned.fired is not None
        return planned.fired

    def expected(self) -> dict[str, Any]:
        """What a correct client ends with.

        ``downloaded``: files it gets (neither missing nor in a duplicate pair);
        ``missing``: files that fail with 404; ``duplicates``: (original, copy) pairs of
        which one is downloaded and the other skipped (which one is a race).
        """
        paired = {f.duplicate_of for f in self.catalogue} | {
            f.name for f in self.catalogue if f.duplicate_of is not None}
        return {
            "downloaded": [f.name for f in self.catalogue
                           if not f.missing and f.name not in paired],
            "missing": [f.name for f in self.catalogue if f.missing],
            "duplicates": [(f.duplicate_of, f.name) for f in self.catalogue
                           if f.duplicate_of is not None],
        }

    def gets(self, name: str) -> list[RequestRecord]:
        """The GET requests logged for file ``name``, in order."""
        return [r for r in self.requests if r.name == name and r.method == "GET"]

    def _load(self, f: ArchiveFile) -> tuple[bytes, str]:
        source = f.duplicate_of or f.name
        version = self._versions[source] + self._versions[f.name]
        cached = self._content.get((source, version))
        if cached is None:
            original = self._by_name[source]
            data = _make_content(self.config.seed, original, version)
            etag = f'"{hashlib.sha256(data).hexdigest()[:24]}"'
            cached = self._content[(source, version)] = (data, etag)
        return cached

    # --- running ----------------------------------------------------------------------

    async def __aenter__(self) -> ArchiveServer:
        stack = contextlib.AsyncExitStack()
        await stack.__aenter__()
        try:
            listener = await anyio.create_tcp_listener(
                local_host=self.config.host, local_port=self.config.port)
            await stack.enter_async_context(listener)
            tg = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(tg.cancel_scope.cancel)  # runs first on exit: stop serving
            port = listener.extra(SocketAttribute.local_port)
            self.url = f"http://{self.config.host}:{port}"
            tg.start_soon(listener.serve, self._connection)
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        return self

    async def __aexit__(self, *exc: object) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()

    def start(self) -> str:
        """Serve from a thread of its own (its own event loop); returns the base URL."""
        portal_cm = anyio.from_thread.start_blocking_portal()
        portal = portal_cm.__enter__()
        try:
            serving = portal.wrap_async_context_manager(self)
            serving.__enter__()
        except BaseException:
            portal_cm.__exit__(*sys.exc_info())
            raise
        self._thread = (portal_cm, serving)
        return self.url

    def stop(self) -> None:
        """Stop a server started with `start`."""
        if self._thread is not None:
            portal_cm, serving = self._thread
            self._thread = None
            try:
                serving.__exit__(None, None, None)
            finally:
                portal_cm.__exit__(None, None, None)

    # --- HTTP -------------------------------------------------------------------------

    async def _connection(self, stream: SocketStream) -> None:
        reader = BufferedByteReceiveStream(stream)
        try:
            while True:
                try:
                    head = await reader.receive_until(b"\r\n\r\n", _MAX_HEAD)
                except (anyio.IncompleteRead, anyio.EndOfStream, anyio.BrokenResourceError,
                        anyio.ClosedResourceError, anyio.DelimiterNotFound, OSError):
                    return
                request = _parse(head)
                if request is None:
                    await _send_simple(stream, 400, b"bad request\n", keep_alive=False)
                    return
                if not await self._respond(stream, reader, request):
                    return
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            return  # the client went away mid-response
        finally:
            await stream.aclose()

    async def _respond(self, stream: SocketStream, reader: BufferedByteReceiveStream,
                       req: _Request) -> bool:
        """Answer one request; whether the connection may serve another."""
        keep = req.keep_alive
        target = req.target.split("?", 1)[0]
        if req.method not in ("GET", "HEAD"):
            self._log(req, None, 405, None)
            await _send_simple(stream, 405, b"method not allowed\n", keep_alive=keep,
                               extra={"Allow": "GET, HEAD"})
            return keep
        if target == "/index.json":
            body = json.dumps([{"name": f.name, "path": f.path} for f in self.catalogue]
                              ).encode()
            self._log(req, None, 200, None)
            await _send_simple(stream, 200, body, keep_alive=keep, head=req.method == "HEAD",
                               extra={"Content-Type": "application/json"})
            return keep
        if req.target in self._extra:
            data = self._extra[req.target]
            self._log(req, None, 200, None)
            await _send_simple(stream, 200, data, keep_alive=keep, head=req.method == "HEAD")
            return keep
        f = self._by_path.get(target)
        if f is None or f.missing:
            self._log(req, f.name if f else None, 404, None)
            await _send_simple(stream, 404, b"not found\n", keep_alive=keep,
                               head=req.method == "HEAD")
            return keep
        return await self._serve_file(stream, reader, req, f, keep)

    async def _serve_file(self, stream: SocketStream, reader: BufferedByteReceiveStream,
                          req: _Request, f: ArchiveFile, keep: bool) -> bool:
        fault = self._pick_fault(f.name, req.method)
        kind = fault.kind if fault else None
        if kind in (Fault.ERROR_500, Fault.TOO_MANY):
            assert fault is not None
            status = 500 if kind is Fault.ERROR_500 else 429
            self._log(req, f.name, status, kind)
            extra = {}
            if kind is Fault.TOO_MANY:
                after = fault.retry_after if fault.retry_after is not None \
                    else self.config.retry_after
                extra["Retry-After"] = f"{after:g}"
            _fire(fault)
            await _send_simple(stream, status, b"try again\n", keep_alive=keep,
                               head=req.method == "HEAD", extra=extra)
            return keep
        data, etag = self._load(f)
        status, start, end = _range(req, len(data), etag)
        headers = {"Content-Type": "application/fits", "ETag": etag, "Accept-Ranges": "bytes"}
        if status == 416:
            self._log(req, f.name, 416, None)
            await _send_simple(stream, 416, b"", keep_alive=keep,
                               extra={**headers, "Content-Range": f"bytes */{len(data)}"})
            return keep
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
        self._log(req, f.name, status, kind)
        await stream.send(_head_bytes(status, end - start, headers, keep_alive=keep))
        if req.method == "HEAD":
            return keep
        body = memoryview(data)[start:end]
        if fault is None:
            await _send_body(stream, body)
            return keep
        return await self._faulty_body(stream, reader, body, fault, keep)

    async def _faulty_body(self, stream: SocketStream, reader: BufferedByteReceiveStream,
                           body: memoryview, fault: _Planned, keep: bool) -> bool:
        if fault.kind is Fault.SLOW:
            pieces = max(1, math.ceil(len(body) / _SLOW_CHUNK))
            pause = self.config.slow_seconds / pieces
            for i in range(0, len(body), _SLOW_CHUNK):
                if i:
                    await anyio.sleep(pause)
                piece = body[i:i + _SLOW_CHUNK]
                await stream.send(piece)  # type: ignore[arg-type]  # as in _send_body
            # Fired once the last byte is sent: the client may finish its job (and the
            # test look at this event) before a pause after it would end.
            _fire(fault)
            return keep
        at = fault.at if fault.at is not None else 0.5
        cut = at if isinstance(at, int) else int(len(body) * at)
        cut = max(0, min(cut, len(body) - 1))
        await _send_body(stream, body[:cut])
        if fault.kind is Fault.RESET:
            _fire(fault)
            raw = stream.extra(SocketAttribute.raw_socket)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False  # aclose() aborts: with SO_LINGER 0 that is an RST
        with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            if fault.kind is Fault.TRUNCATE:
                _fire(fault)  # before the FIN: the client may retry and finish at once
                await stream.send_eof()  # FIN after the partial body
            else:  # STALL: nothing more until the client gives up
                _fire(fault)
            while True:
                await reader.receive()
        return False

    def _pick_fault(self, name: str, method: str) -> _Planned | None:
        queue = self._scripts.get(name)
        if queue and method == "GET":
            return queue.popleft()
        n = self._seen[name]
        self._seen[name] += 1
        cfg = self.config
        if cfg.fault_rate <= 0 or self._faulted[name] >= cfg.max_faults_per_file:
            return None
        rng = random.Random(f"{cfg.seed}:{name}:{n}")
        if rng.random() >= cfg.fault_rate:
            return None
        kinds = [k for k in cfg.faults if method == "GET" or k in _HEAD_FAULTS]
        if not kinds:
            return None
        self._faulted[name] += 1
        kind = rng.choice(kinds)
        return _Planned(kind, at=rng.uniform(0.1, 0.9) if kind in _BODY_FAULTS else None)

    def _log(self, req: _Request, name: str | None, status: int, fault: Fault | None) -> None:
        self.requests.append(RequestRecord(
            method=req.method, target=req.target, name=name, range=req.headers.get("range"),
            if_range=req.headers.get("if-range"), status=status, fault=fault))


# --- content -----------------------------------------------------------------------------


def _catalogue(cfg: ArchiveConfig) -> list[ArchiveFile]:
    rng = random.Random(f"archive:{cfg.seed}")
    if cfg.kic_ids is not None:
        kics = list(dict.fromkeys(cfg.kic_ids))
    else:
        kics = sorted(rng.sample(range(*_KIC_RANGE), cfg.files))
    n = len(kics)
    missing = cfg.missing if cfg.missing is not None else (max(1, n // 25) if n >= 10 else 0)
    dups = cfg.duplicates if cfg.duplicates is not None else (max(1, n // 20) if n >= 10 else 0)
    if missing + 2 * dups > n:
        raise ValueError(f"{n} files cannot hold {missing} missing and {dups} duplicates")
    order = rng.sample(range(n), n)
    missing_at = set(order[:missing])
    dup_at = order[missing:missing + dups]
    originals = order[missing + dups:missing + 2 * dups]
    lo, hi = math.log(cfg.min_size), math.log(max(cfg.min_size, cfg.max_size))
    files = []
    for i, kic in enumerate(kics):
        source = None
        if i in dup_at:
            source = light_curve_name(kics[originals[dup_at.index(i)]])
        files.append(ArchiveFile(name=light_curve_name(kic), kic=kic, path=light_curve_path(kic),
                                 size=int(math.exp(rng.uniform(lo, hi))),
                                 missing=i in missing_at, duplicate_of=source))
    return files


def _make_content(seed: int, f: ArchiveFile, version: int) -> bytes:
    cards = [("SIMPLE", "T"), ("BITPIX", "8"), ("NAXIS", "0"), ("EXTEND", "T"),
             ("TELESCOP", "'Kepler  '"), ("OBJECT", f"'KIC {f.kic}'"), ("KEPLERID", str(f.kic)),
             ("QUARTER", "1"), ("VERSION", str(version))]
    header = "".join(f"{k:<8}= {v:>20}".ljust(80) for k, v in cards) + "END".ljust(80)
    block = header.ljust(_BLOCK).encode()[:f.size]
    rng = random.Random(f"content:{seed}:{f.name}:{version}")
    return block + rng.randbytes(f.size - len(block))


# --- wire format -------------------------------------------------------------------------

_REASONS = {200: "OK", 206: "Partial Content", 400: "Bad Request", 404: "Not Found",
            405: "Method Not Allowed", 416: "Range Not Satisfiable",
            429: "Too Many Requests", 500: "Internal Server Error"}


def _parse(head: bytes) -> _Request | None:
    try:
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ")
    except ValueError:
        return None
    req = _Request(method, target, version)
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            req.headers[name.strip().lower()] = value.strip()
    return req


def _range(req: _Request, size: int, etag: str) -> tuple[int, int, int]:
    """(status, start, end) for the request's Range header (one range only)."""
    value = req.headers.get("range")
    if_range = req.headers.get("if-range")
    if value is None or (if_range is not None and if_range != etag):
        return 200, 0, size
    unit, _, spec = value.partition("=")
    if unit.strip() != "bytes" or "," in spec:
        return 200, 0, size
    first, _, last = spec.strip().partition("-")
    try:
        if first:
            start = int(first)
            end = min(size, int(last) + 1) if last else size
        else:
            start, end = max(0, size - int(last)), size
    except ValueError:
        return 200, 0, size
    if start >= size or start >= end:
        return 416, 0, 0
    return 206, start, end


def _head_bytes(status: int, length: int, headers: dict[str, str], *, keep_alive: bool
                ) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}",
             f"Content-Length: {length}", f"Connection: {'keep-alive' if keep_alive else 'close'}",
             *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _send_simple(stream: SocketStream, status: int, body: bytes, *, keep_alive: bool,
                       head: bool = False, extra: dict[str, str] | None = None) -> None:
    data = _head_bytes(status, len(body), extra or {}, keep_alive=keep_alive)
    await stream.send(data if head else data + body)


async def _send_body(stream: SocketStream, body: memoryview) -> None:
    for i in range(0, len(body), _CHUNK):
        # A slice of the file's bytes, not a copy: anyio's socket streams write any
        # buffer, though their signature says bytes.
        await stream.send(body[i:i + _CHUNK])  # type: ignore[arg-type]


def _fire(fault: _Planned) -> None:
    if fault.fired is not None:
        fault.fired.set()
