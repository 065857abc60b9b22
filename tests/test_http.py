"""The HTTP download effect against the real local archive server (no mocked transport).

Synchronisation is by events: the server's scripted faults return an event set when they
fire, and the fetcher's ``on_progress`` reports bytes on disk; no sleeps.
"""

from __future__ import annotations

import email.utils
import hashlib
import os
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from syncward import Context, Job, JobSpec, JobState, Retry, RetryPolicy, Runtime, job_key
from syncward.actors.syncer import SyncerConfig
from syncward.adapters._http_files import PartWriter
from syncward.adapters._http_paths import (
    dest_path,
    name_from_url,
    parse_part_name,
    part_name,
    safe_name,
)
from syncward.adapters._http_status import retry_after
from syncward.adapters._http_transfer import transfer
from syncward.adapters.http import HttpFetcher, HttpStage, part_cleanup
from syncward.errors import Permanent
from syncward.jobs import canonical_identity
from syncward.messages import LeaseOrder, NewJob, Outcome, OutcomeKind, Submit
from syncward.store import JobRow, open_store
from syncward.testing import FakeClock
from syncward.testing.archive import ArchiveConfig, ArchiveServer, Fault

QUICK = SyncerConfig(max_delay=0.001, idle_poll=0.02)
FAST_RETRY = RetryPolicy(base=0.01, cap=0.05, jitter=False)
MiB = 1 << 20


# --- helpers -----------------------------------------------------------------------------


def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/jobs.db"


async def get_job(tmp_path: Path, identity: dict[str, str | int]) -> JobRow:
    """The job of ``identity``, read through the store's reader (it must exist)."""
    store = await open_store(db(tmp_path), readonly=True)
    try:
        job = await store.get_job(job_key(identity))
    finally:
        await store.aclose()
    assert job is not None, f"no job for {identity}"
    return job


async def job_row(tmp_path: Path, name: str) -> dict[str, Any]:
    job = await get_job(tmp_path, {"file": name})
    return {"state": job.state.value, "attempts": job.attempts, "stage": job.stage,
            "error": job.last_error, "result": job.result,
            "next_attempt_at": job.next_attempt_at}


def spec(archive: Any, name: str) -> JobSpec:
    return JobSpec({"file": name}, {"url": archive.file_url(name)})


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def parts(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if parse_part_name(p.name)) if out.exists() else []


def runtime(handler: Any, tmp_path: Path, out: Path, **kw: Any) -> Runtime:
    kw.setdefault("retry", FAST_RETRY)
    kw.setdefault("concurrency", 4)
    return Runtime(handler, store=db(tmp_path), syncer=QUICK,
                   reconcile_hooks=[part_cleanup(out)], **kw)


def progress_event(url: str, at_least: int) -> tuple[anyio.Event, Any]:
    """An event set once ``url`` has ``at_least`` bytes on disk, and the callback."""
    reached = anyio.Event()

    def on_progress(u: str, done: int, total: int | None) -> None:
        if u == url and done >= at_least:
            reached.set()

    return reached, on_progress


# --- names and paths ---------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "expected"), [
    ("kplr011904151-2009131105131_llc.fits", "kplr011904151-2009131105131_llc.fits"),
    ("../../etc/passwd", "_.._etc_passwd"),
    ("/etc/passwd", "_etc_passwd"),
    ("..", "fallback"),
    (".", "fallback"),
    ("", "fallback"),
    ("...hidden", "hidden"),
    ("a\\b", "a_b"),
    ("bell\x07\x1b[31m.fits", "bell__[31m.fits"),
    ("tab\tnew\nline\x7f", "tab_new_line_"),
    ("rlo\u202etxt.exe", "rlo_txt.exe"),
    ("%2e%2e%2fx", "%2e%2e%2fx"),  # names are not decoded: literal, harmless
    ("  spaced .fits ", "spaced .fits"),
])
def test_safe_name(raw: str, expected: str) -> None:
    assert safe_name(raw, fallback="fallback") == expected


@pytest.mark.parametrize(("url", "expected"), [
    ("http://h/pub/a/kplr1_llc.fits?x=1#f", "kplr1_llc.fits"),
    ("http://h/files/../../etc/passwd", "passwd"),
    ("http://h//etc/passwd", "passwd"),
    ("http://h/files/..%2f..%2fetc%2fpasswd", "_.._etc_passwd"),
    ("http://h/files/%2e%2e%2f%2e%2e%2fetc%2fpasswd", "_.._etc_passwd"),
    ("http://h/files/%2e%2e", "fallback"),
    ("http://h/files/%252e%252e", "%2e%2e"),  # decoded once only
    ("http://h/files/a%00b%07.fits", "a_b_.fits"),
    ("http://h/files/", "fallback"),
    ("http://h", "fallback"),
])
def test_name_from_url_is_safe(url: str, expected: str) -> None:
    assert safe_name(name_from_url(url), fallback="fallback") == expected


def test_long_names_are_cut_keeping_the_extension() -> None:
    name = safe_name("é" * 300 + ".fits", fallback="x")
    assert name.endswith(".fits") and len(name.encode()) <= 150


def test_dest_path_refuses_what_resolves_outside(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "evil").symlink_to(tmp_path / "elsewhere")
    assert dest_path(out, "ok.fits") == out.resolve() / "ok.fits"
    for bad in ("evil", "..", "../x", "/etc/passwd", "a/b"):
        with pytest.raises(Permanent, match="unsafe destination"):
            dest_path(out, bad)


def test_part_names_round_trip() -> None:
    key = job_key({"file": "x"})
    name = part_name("x.fits", key, '"etag"')
    assert name.startswith(".x.fits.") and name.endswith(".part")
    assert parse_part_name(name) == ("x.fits", key, name.split(".")[-2])
    assert part_name("x.fits", key, '"other"') != name
    assert parse_part_name("x.fits.part") is None and parse_part_name(".x.part") is None


def test_retry_after_seconds_and_http_dates() -> None:
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 120, usegmt=True)
    assert retry_after("5", now=now) == 5
    assert retry_after("0.05", now=now) == 0.05
    assert retry_after(date, now=now) == pytest.approx(120)
    assert retry_after(email.utils.formatdate(now - 60, usegmt=True), now=now) == 0
    assert retry_after("999999", now=now) == 3600
    assert retry_after("soon", now=now) is None
    assert retry_after(None) is None and retry_after("  ") is None


# --- end to end --------------------------------------------------------------------------


@pytest.mark.parametrize("always_head", [False, True])
async def test_downloads_every_file_dedupes_duplicates_and_fails_404s(
        tmp_path: Path, always_head: bool) -> None:
    out = tmp_path / "out"
    config = ArchiveConfig(files=12, seed=3, max_size=256 * 1024, missing=1, duplicates=1)
    with anyio.fail_after(20):
        async with ArchiveServer(config) as archive, HttpFetcher(always_head=always_head
                                                                 ) as fetcher:
            async with runtime(fetcher.handler(out), tmp_path, out) as rt:
                await rt.submit(spec(archive, f.name) for f in archive.catalogue)
                await rt.join()
            expected = archive.expected()
            checksums = {f.name: archive.sha256(f.name) for f in archive.catalogue
                         if not f.missing}
            methods = {f.name: [r.method for r in archive.requests if r.name == f.name]
                       for f in archive.catalogue}
    (missing,) = expected["missing"]
    ((original, copy),) = expected["duplicates"]
    assert checksums[original] == checksums[copy]
    states = {name: await job_row(tmp_path, name) for name in checksums}
    lost = await job_row(tmp_path, missing)
    assert (lost["state"], lost["attempts"]) == ("failed", 1)
    method = "HEAD" if always_head else "GET"
    assert f"Permanent: {method} " in lost["error"] and "HTTP 404" in lost["error"]
    assert methods[missing] == [method]
    pair = {states[original]["state"], states[copy]["state"]}
    assert pair == {"succeeded", "skipped"}
    first, second = (original, copy) if states[original]["state"] == "succeeded" else (copy,
                                                                                        original)
    assert f"duplicate of job {job_key({'file': first})}" in states[second]["error"]
    assert not (out / second).exists()
    for name, row in states.items():
        # Every file fetched exactly once; a HEAD first only when asked for.
        assert methods[name] == (["HEAD", "GET"] if always_head else ["GET"])
        if name == second:
            continue
        assert (row["state"], row["attempts"], row["stage"]) == ("succeeded", 1, "DEDUPED")
        assert row["result"]["sha256"] == checksums[name] == sha256(out / name)
        assert row["result"]["path"] == str(out.resolve() / name)
    assert parts(out) == []


async def test_every_fault_kind_ends_in_the_right_state(tmp_path: Path) -> None:
    out = tmp_path / "out"
    config = ArchiveConfig(files=6, seed=5, min_size=64 * 1024, max_size=512 * 1024,
                           missing=0, duplicates=0, slow_seconds=0.1)
    with anyio.fail_after(20):
        async with ArchiveServer(config) as archive, HttpFetcher() as fetcher:
            names = [f.name for f in archive.catalogue]
            plan = {names[0]: (Fault.ERROR_500, {}),
                    names[1]: (Fault.TOO_MANY, {"retry_after": 0}),
                    names[2]: (Fault.SLOW, {}),
                    names[3]: (Fault.RESET, {"at": 20_000}),
                    names[4]: (Fault.TRUNCATE, {"at": 30_000})}
            fired = {name: archive.script(name, kind, **kw) for name, (kind, kw) in plan.items()}
            async with runtime(fetcher.handler(out), tmp_path, out) as rt:
                await rt.submit(spec(archive, name) for name in names)
                await rt.join()
            assert {n: e.is_set() for n, e in fired.items()} == {n: True for n in fired}
            gets = {name: archive.gets(name) for name in names}
            etags = {name: archive.etag(name) for name in names}
            checksums = {name: archive.sha256(name) for name in names}
    attempts = {name: (await job_row(tmp_path, name))["attempts"] for name in names}
    assert attempts == {names[0]: 2, names[1]: 2, names[2]: 1, names[3]: 2, names[4]: 2,
                        names[5]: 1}
    for name in names:
        row = await job_row(tmp_path, name)
        assert row["state"] == "succeeded", row
        assert sha256(out / name) == checksums[name] == row["result"]["sha256"]
    # The truncated body was resumed from exactly what had arrived.
    truncated = gets[names[4]]
    assert [(g.status, g.range, g.if_range) for g in truncated] == [
        (200, None, None), (206, "bytes=30000-", etags[names[4]])]
    assert (await job_row(tmp_path, names[4]))["result"]["resumed_from"] == 30_000
    # A reset loses what was in flight; whatever reached the disk was resumed.
    reset = gets[names[3]]
    assert len(reset) == 2 and reset[1].status in (200, 206)
    assert reset[1].range is None or reset[1].range.startswith("bytes=")
    assert parts(out) == []


async def test_retry_after_is_honoured(tmp_path: Path) -> None:
    out = tmp_path / "out"
    clock = FakeClock()
    retried: list[tuple[float, float | None]] = []
    config = ArchiveConfig(files=1, seed=1, max_size=64 * 1024, missing=0, duplicates=0)
    with anyio.fail_after(10):
        async with ArchiveServer(config) as archive, HttpFetcher() as fetcher:
            (f,) = archive.catalogue
            fired = archive.script(f.name, Fault.TOO_MANY, retry_after=30)
            download = fetcher.handler(out)

            async def handler(job: Job, ctx: Context) -> Any:
                try:
                    return await download(job, ctx)
                except Retry as exc:
                    retried.append((clock.now(), exc.after))
                    raise

            async with runtime(handler, tmp_path, out, clock=clock) as rt:
                await rt.submit([spec(archive, f.name)])
                await fired.wait()
                # The 429 is committed: planned again, due Retry-After seconds later.
                await rt.wait(lambda s: bool(retried) and s.counts[JobState.PLANNED] == 1)
                row = await job_row(tmp_path, f.name)
                ((failed_at, after),) = retried
                assert after == 30
                assert row["next_attempt_at"] == pytest.approx(failed_at + 30)
                assert "HTTP 429" in row["error"] and "Retry-After 30s" in row["error"]
                clock.advance(30)
                await rt.join()
            assert len(archive.gets(f.name)) == 2
    assert (await job_row(tmp_path, f.name))["state"] == "succeeded"


async def _crash_mid_stream(tmp_path: Path, archive: Any, out: Path, name: str) -> int:
    """Run the job until 1 MiB of ``name`` is on disk, then kill the runtime."""
    stalled = archive.script(name, Fault.STALL, at=MiB + 300_000)
    reached, on_progress = progress_event(archive.file_url(name), MiB)
    async with HttpFetcher(on_progress=on_progress) as fetcher:
        async with runtime(fetcher.handler(out), tmp_path, out) as rt:
            await rt.submit([spec(archive, name)])
            await stalled.wait()
            await reached.wait()
            rt.kill()
    (part,) = parts(out)
    return part.stat().st_size


async def test_resume_after_a_crash_continues_from_the_partial_file(tmp_path: Path) -> None:
    out = tmp_path / "out"
    config = ArchiveConfig(files=1, seed=2, min_size=2 * MiB, max_size=3 * MiB, missing=0,
                           duplicates=0)
    with anyio.fail_after(20):
        async with ArchiveServer(config) as archive:
            (f,) = archive.catalogue
            kept = await _crash_mid_stream(tmp_path, archive, out, f.name)
            assert MiB <= kept < MiB + 300_000
            assert (await job_row(tmp_path, f.name))["stage"] == HttpStage.STREAMING
            async with HttpFetcher() as fetcher:
                async with runtime(fetcher.handler(out), tmp_path, out) as rt:
                    adapters = rt.reconcile_report.adapters  # type: ignore[union-attr]
                    await rt.join()
            gets = archive.gets(f.name)
            etag, checksum = archive.etag(f.name), archive.sha256(f.name)
    assert adapters["http.parts"]["kept"] == 1 and adapters["http.parts"]["removed"] == []
    assert [(g.status, g.range, g.if_range) for g in gets] == [
        (200, None, None), (206, f"bytes={kept}-", etag)]
    row = await job_row(tmp_path, f.name)
    assert (row["state"], row["attempts"]) == ("succeeded", 2)
    assert row["result"]["resumed_from"] == kept
    assert sha256(out / f.name) == checksum == row["result"]["sha256"]
    assert parts(out) == []


async def test_a_changed_etag_restarts_from_zero(tmp_path: Path) -> None:
    out = tmp_path / "out"
    config = ArchiveConfig(files=1, seed=2, min_size=2 * MiB, max_size=3 * MiB, missing=0,
                           duplicates=0)
    with anyio.fail_after(20):
        async with ArchiveServer(config) as archive:
            (f,) = archive.catalogue
            old_etag = archive.etag(f.name)
            await _crash_mid_stream(tmp_path, archive, out, f.name)
            archive.mutate(f.name)
            assert archive.etag(f.name) != old_etag
            async with HttpFetcher() as fetcher:
                async with runtime(fetcher.handler(out), tmp_path, out) as rt:
                    await rt.join()
                assert fetcher.statistics().resumed == 0
            gets = archive.gets(f.name)
            checksum = archive.sha256(f.name)
    assert [(g.status, g.range) for g in gets] == [(200, None), (200, None)]
    row = await job_row(tmp_path, f.name)
    assert row["state"] == "succeeded" and row["result"]["resumed_from"] == 0
    assert sha256(out / f.name) == checksum == row["result"]["sha256"]
    assert parts(out) == []  # the partial file of the old version is gone too


async def test_if_range_mismatch_during_resume_restarts_the_body(tmp_path: Path) -> None:
    config = ArchiveConfig(files=1, seed=4, max_size=128 * 1024, missing=0, duplicates=0)
    part = tmp_path / "x.part"
    old = b"old version bytes" * 100
    part.write_bytes(old)
    async with ArchiveServer(config) as archive, httpx.AsyncClient() as client:
        (f,) = archive.catalogue
        got = await transfer(client, archive.file_url(f.name), part, len(old),
                             validator='"stale-etag"', size=None, max_retry_after=60,
                             progress=lambda *a: None)
        checksum, size = archive.sha256(f.name), len(archive.content(f.name))
        (request,) = archive.gets(f.name)
    assert (request.status, request.range, request.if_range) == (
        200, f"bytes={len(old)}-", '"stale-etag"')
    assert got.restarted and got.started == 0
    assert (got.sha256, got.size) == (checksum, size) == (sha256(part), part.stat().st_size)


async def test_an_unsatisfiable_resume_empties_the_partial_file(tmp_path: Path) -> None:
    config = ArchiveConfig(files=1, seed=4, max_size=64 * 1024, missing=0, duplicates=0)
    part = tmp_path / "x.part"
    async with ArchiveServer(config) as archive, httpx.AsyncClient() as client:
        (f,) = archive.catalogue
        size = len(archive.content(f.name))
        part.write_bytes(b"x" * (size + 10))  # longer than the file: a range beyond it
        with pytest.raises(Retry, match="not satisfiable; starting again"):
            await transfer(client, archive.file_url(f.name), part, size + 10,
                           validator=archive.etag(f.name), size=None, max_retry_after=60,
                           progress=lambda *a: None)
        (request,) = archive.gets(f.name)
    assert (request.status, part.stat().st_size) == (416, 0)


async def test_a_job_whose_finalized_stage_committed_never_downloads_again(
        tmp_path: Path) -> None:
    out = tmp_path / "out"
    config = ArchiveConfig(files=1, seed=6, max_size=256 * 1024, missing=0, duplicates=0)

    class CrashAfterFinalized:
        """The job's context, crashing the first attempt once FINALIZED is committed."""

        def __init__(self, ctx: Context) -> None:
            self._ctx = ctx

        def __getattr__(self, name: str) -> Any:
            return getattr(self._ctx, name)

        async def stage(self, name: str) -> None:
            await self._ctx.stage(name)
            self._crash_at(name)

        async def effect_and_stage(self, kind: str, fn: Any, stage: str | None, /,
                                   **context: Any) -> Any:
            result = await self._ctx.effect_and_stage(kind, fn, stage, **context)
            self._crash_at(stage)
            return result

        def _crash_at(self, stage: str | None) -> None:
            if stage == HttpStage.FINALIZED and self._ctx.job.attempt == 1:
                raise RuntimeError("crash right after FINALIZED")

    with anyio.fail_after(20):
        async with ArchiveServer(config) as archive, HttpFetcher() as fetcher:
            (f,) = archive.catalogue
            download = fetcher.handler(out)

            async def handler(job: Job, ctx: Context) -> Any:
                return await download(job, CrashAfterFinalized(ctx))  # type: ignore[arg-type]

            async with runtime(handler, tmp_path, out) as rt:
                await rt.submit([spec(archive, f.name)])
                await rt.join()
            gets = archive.gets(f.name)
            checksum = archive.sha256(f.name)
    row = await job_row(tmp_path, f.name)
    assert (row["state"], row["attempts"]) == ("succeeded", 2)
    assert len(gets) == 1
    assert row["result"]["sha256"] == checksum == sha256(out / f.name)


async def test_traversal_attempts_stay_inside_dest_dir(tmp_path: Path) -> None:
    out = tmp_path / "box" / "out"
    config = ArchiveConfig(files=1, seed=7, max_size=8 * 1024, missing=0, duplicates=0)
    cases: list[tuple[str, str | None, str]] = [  # (URL path, name, expected file name)
        ("/files/..%2f..%2fetc%2fpasswd", None, "_.._etc_passwd"),
        ("/files/%2e%2e%2f%2e%2e%2fetc%2fshadow", None, "_.._etc_shadow"),
        ("//etc/hosts", None, "hosts"),
        ("/files/../../etc/group", None, "group"),
        ("/files/%2e%2e", None, "download-"),
        ("/files/bell%07%0a%1b.fits", None, "bell___.fits"),
        ("/x/1", "../../etc/motd", "_.._etc_motd"),
        ("/x/2", "/etc/issue", "_etc_issue"),
        ("/x/3", "..", "download-"),
        ("/x/4", "tab\there\x1f.fits", "tab_here_.fits"),
    ]

    async def handler(job: Job, ctx: Context) -> Any:
        got = await fetcher.download(ctx, job.payload["url"], out, name=job.payload["name"])
        return got.as_dict()

    with anyio.fail_after(20):
        async with ArchiveServer(config) as archive, HttpFetcher() as fetcher:
            for i, (path, _, _) in enumerate(cases):
                archive.put(httpx.URL(archive.url + path).raw_path.decode(),
                            f"case {i}\n".encode())
            async with runtime(handler, tmp_path, out) as rt:
                await rt.submit(JobSpec({"case": i}, {"url": archive.url + path, "name": name})
                                for i, (path, name, _) in enumerate(cases))
                await rt.join()
                report = await rt.report()
    assert report.counts[JobState.SUCCEEDED] == report.total == len(cases), report.failures
    results = {i: (await get_job(tmp_path, {"case": i})).result for i in range(len(cases))}
    for i, (_, _, expected) in enumerate(cases):
        path = Path(results[i]["path"])
        assert path.parent == out.resolve()
        assert path.name.startswith(expected) if expected.endswith("-") else (
            path.name == expected)
        assert path.read_bytes() == f"case {i}\n".encode()
    everything = {p.relative_to(tmp_path) for p in tmp_path.rglob("*")}
    assert {p for p in everything if p.parts[0] == "box"} == {
        Path("box"), Path("box/out"), *(Path("box/out") / Path(r["path"]).name
                                        for r in results.values())}


async def test_two_jobs_for_one_file_name_cannot_overwrite_each_other(tmp_path: Path) -> None:
    out = tmp_path / "out"
    config = ArchiveConfig(files=1, seed=8, max_size=8 * 1024, missing=0, duplicates=0)
    with anyio.fail_after(20):
        async with ArchiveServer(config) as archive, HttpFetcher() as fetcher:
            archive.put("/a/same.fits", b"first")
            archive.put("/b/same.fits", b"second")
            async with runtime(fetcher.handler(out), tmp_path, out, concurrency=1) as rt:
                await rt.submit([JobSpec({"id": 1}, {"url": archive.url + "/a/same.fits"})])
                await rt.join()
                await rt.submit([JobSpec({"id": 2}, {"url": archive.url + "/b/same.fits"})])
                await rt.join()
                report = await rt.report()
    ((error,),) = [(f.error,) for f in report.failures]
    assert "already belongs to job " + job_key({"id": 1}) in error
    assert (out / "same.fits").read_bytes() == b"first"


async def test_part_cleanup_removes_only_orphaned_partial_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    store = await open_store(db(tmp_path))
    try:
        ids = ({"file": "planned"}, {"file": "done"})
        jobs = tuple(NewJob(key=job_key(i), identity=canonical_identity(i), payload="{}",
                            max_attempts=3) for i in ids)
        now = time.time()
        await store.apply([Submit(jobs[1:])], now=now)
        (leased,) = (await store.apply([], now=now, lease=LeaseOrder(
            1, "w", "boot", 60.0))).leased
        await store.apply([Outcome(leased.id, leased.fence, OutcomeKind.SUCCEEDED,
                                   result="null"), Submit(jobs[:1])], now=now)
        files = {
            "planned": out / part_name("planned", job_key(ids[0]), '"e"'),
            "done": out / part_name("done", job_key(ids[1]), '"e"'),
            "unknown": out / part_name("x", job_key({"file": "gone"}), None),
            "not ours": out / ".notes.part",
            "final": out / "planned",
        }
        for path in files.values():
            path.write_bytes(b"x")
        name, hook = part_cleanup(out)
        dry = await hook(store, dry_run=True)
        assert all(p.exists() for p in files.values())
        real = await hook(store, dry_run=False)
    finally:
        await store.aclose()
    assert name == "http.parts"
    orphans = sorted([files["done"].name, files["unknown"].name])
    assert sorted(dry["removed"]) == sorted(real["removed"]) == orphans
    assert (real["removed_count"], real["kept"], dry["dry_run"]) == (2, 1, True)
    assert {k for k, p in files.items() if p.exists()} == {"planned", "not ours", "final"}


def test_part_writer_hashes_the_kept_prefix(tmp_path: Path) -> None:
    path = tmp_path / "p"
    path.write_bytes(b"abcdefXXXX")
    writer = PartWriter.open(path, 6)
    writer.write([b"ghi", b"jk"])
    writer.close()
    assert path.read_bytes() == b"abcdefghijk"
    assert writer.hasher.hexdigest() == hashlib.sha256(b"abcdefghijk").hexdigest()
    assert writer.size == 11 and os.path.getsize(path) == 11


def test_archive_server_serves_from_a_thread_for_synchronous_code() -> None:
    archive = ArchiveServer(ArchiveConfig(files=3, seed=9, max_size=16 * 1024))
    url = archive.start()
    try:
        with httpx.Client(base_url=url) as client:
            index = client.get("/index.json").json()
            name, path = index[0]["name"], index[0]["path"]
            full = client.get(path)
            part = client.get(path, headers={"Range": "bytes=10-19"})
            stale = client.get(path, headers={"Range": "bytes=10-", "If-Range": '"old"'})
            beyond = client.get(path, headers={"Range": f"bytes={len(full.content)}-"})
            head = client.head(path)
    finally:
        archive.stop()
    assert [f["name"] for f in index] == [f.name for f in archive.catalogue]
    assert full.status_code == 200 and full.content == archive.content(name)
    assert full.headers["etag"] == archive.etag(name) == head.headers["etag"]
    assert head.headers["content-length"] == str(len(full.content))
    assert (part.status_code, part.content) == (206, full.content[10:20])
    assert part.headers["content-range"] == f"bytes 10-19/{len(full.content)}"
    assert (stale.status_code, stale.content) == (200, full.content)
    assert beyond.status_code == 416
