"""Import: an existing pipeline's state brought in as jobs in their states.

The readers (`syncward.adapters.importer`) line by line, `Runtime.import_jobs`, the
``syncward import`` command, and the README's Kepler migration end to end: a legacy
SQLite table of finished KICs and a Redis list of pending records imported in three
commands, then a run of the manifest that redoes nothing imported as done. The store's
rules (conflicts, dry run, redelivery) are in the contract suite, on every backend.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from redis_helpers import QUICK, SharedRedis
from redis_helpers import shared_redis_fixture as shared_redis_fixture

from syncward import Context, Job, Runtime
from syncward.adapters.importer import Record, open_import, parse_line
from syncward.adapters.manifest import Rejection
from syncward.imports import ImportRecord
from syncward.jobs import JobState, job_key
from syncward.store import open_store

if TYPE_CHECKING:
    from syncward.adapters.importer import ImportItem



def items(tmp_path: Path, name: str, text: str | bytes, **kwargs: Any) -> list[ImportItem]:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    with open_import(str(path), **kwargs) as source:
        return list(source)


def reasons(found: list[ImportItem]) -> list[tuple[int, str]]:
    return [(r.line, r.reason) for r in found if isinstance(r, Rejection)]


# --- readers -----------------------------------------------------------------------------


def test_jsonl_canonical_records_and_bad_lines(tmp_path: Path) -> None:
    found = items(tmp_path, "x.jsonl", "\n".join([
        '{"identity": {"kic": 1}, "state": "succeeded", "result": {"a": 1}, "attempts": 2}',
        "",
        '{"identity": {"kic": 2}}',
        '{"identity": {"kic": 3}, "state": "done"}',
        '{"identity": {"kic": 4}, "status": "x"}',
        '{"identity": {"kic": 5}, "attempts": true}',
        '{"identity": {"kic": 6}, "result": NaN}',
        '{"identity": {"kic": 7}, "state": "leased"}',
        '{"state": "failed"}',
        "[1, 2]",
    ]) + "\n")
    good = [r for r in found if isinstance(r, Record)]
    assert [(r.line, r.record.identity, r.record.state) for r in good[:2]] == [
        (1, {"kic": 1}, "succeeded"), (3, {"kic": 2}, JobState.PLANNED)]
    assert good[0].record.result == {"a": 1} and good[0].record.attempts == 2
    # Unknown field and missing identity are refused by the reader; the others (state,
    # attempts, result) when the record becomes a job, so the import lists them.
    assert reasons(found) == [
        (5, "field 'status': unknown field (expected identity, state, result, error, "
            "attempts, payload, max_attempts)"),
        (9, "field 'identity': is missing"),
        (10, "expected a JSON object, got an array"),
    ]


async def test_bad_values_are_rejected_naming_field_and_line() -> None:
    lines = {
        4: ('{"identity": {"kic": 3}, "state": "done"}',
            "field 'state': unknown state 'done' (expected planned, succeeded, failed or "
            "skipped)"),
        6: ('{"identity": {"kic": 5}, "attempts": true}',
            "field 'attempts': must be an integer from 0 to 1000000, got True"),
        7: ('{"identity": {"kic": 6}, "result": NaN}', "field 'result': is not JSON-"),
        8: ('{"identity": {"kic": 7}, "state": "leased"}',
            "field 'state': a leased job cannot be imported"),
        9: ('{"identity": {"kic": 1.5}}', "field 'kic': must be str or int, got float 1.5"),
        10: ('{"identity": {"kic": 8}, "error": 5}', "field 'error': must be a string"),
    }
    async with Runtime(_never, store="memory://", syncer=QUICK) as rt:
        result = await rt.import_jobs(json.loads(text) for text, _ in lines.values())
    assert result.rejected == len(lines) and result.total_new == 0
    for (line, reason), (_, (_, expected)) in zip(result.rejected_listed, lines.items(),
                                                  strict=True):
        assert reason.startswith(expected), (line, reason)
    # A reader passes such a record on (it is well-formed); it is refused, with the
    # file's line, when it becomes a job.
    parsed = parse_line(4, lines[4][0])
    assert isinstance(parsed, Record) and parsed.line == 4


def test_flat_records_with_key_fields(tmp_path: Path) -> None:
    found = items(tmp_path, "legacy.jsonl", "\n".join([
        '{"kic": 757076, "status": "downloaded", "state": "succeeded", "attempts": 1}',
        '{"kic": 757099, "status": "pending"}',
        '{"kid": 1}',
    ]) + "\n", key=["kic"], state=JobState.FAILED)
    first, second = (r for r in found if isinstance(r, Record))
    assert first.record == ImportRecord(identity={"kic": 757076}, state="succeeded",
                                        attempts=1, payload={"status": "downloaded"})
    assert second.record.identity == {"kic": 757099}  # an int stays an int
    assert second.record.state is JobState.FAILED  # --state: for records that name none
    assert reasons(found) == [(3, "field 'kic': is missing (an identity field, --key)")]
    text = items(tmp_path, "legacy.jsonl", '{"kic": 757076}\n', key=["kic"], key_text=True)
    assert isinstance(text[0], Record) and text[0].record.identity == {"kic": "757076"}


def test_csv_with_reserved_columns(tmp_path: Path) -> None:
    found = items(tmp_path, "done.csv", "\n".join([
        "kic,state,attempts,result,error,path",
        "1,succeeded,2,\"{\"\"bytes\"\": 5}\",,/a",
        "2,,,,,/b",
        "3,done,,,,",
        "4,failed,x,,boom,",
        "5,failed,1,{oops,,",
        ",succeeded,,,,",
        "6,7",
    ]) + "\n", key=["kic"], state=JobState.SKIPPED)
    good = [r for r in found if isinstance(r, Record)]
    assert good[0] == Record(2, ImportRecord(identity={"kic": "1"}, state="succeeded",
                                             attempts=2, result={"bytes": 5},
                                             payload={"path": "/a"}))
    assert good[1].record.state is JobState.SKIPPED and good[1].record.attempts == 0
    assert good[2].record.state == "done"  # refused when it becomes a job
    assert [line for line, _ in reasons(found)] == [5, 6, 7, 8]
    assert reasons(found)[0] == (5, "field 'attempts': must be an integer, got 'x'")
    assert reasons(found)[1][1].startswith("field 'result': not valid JSON")


def test_undecodable_lines_keep_physical_numbers(tmp_path: Path) -> None:
    found = items(tmp_path, "x.jsonl", b'{"identity": {"n": 1}}\n\xff\xfe\n\n'
                                       b'{"identity": {"n": 2}}\n')
    assert [(type(i).__name__, i.line) for i in found] == [
        ("Record", 1), ("Rejection", 2), ("Record", 4)]


# --- the runtime -------------------------------------------------------------------------


async def _never(job: Job, ctx: Context) -> None:
    raise AssertionError(f"handler called for {job.identity}")


async def test_runtime_import_jobs_then_runs_only_the_planned(tmp_path: Path) -> None:
    ran: list[dict[str, Any]] = []

    async def handler(job: Job, ctx: Context) -> None:
        ran.append(dict(job.identity))

    async def records() -> Any:
        yield {"identity": {"n": 1}, "state": "succeeded", "result": {"ok": True}}
        yield ImportRecord(identity={"n": 2}, state=JobState.FAILED, error="gone", attempts=5)
        yield {"identity": {"n": 3}}
        yield {"identity": {"n": 4}, "state": "bogus"}

    db = f"sqlite:///{tmp_path / 'jobs.db'}"
    async with Runtime(handler, store=db, syncer=QUICK) as rt:
        rt.pause()
        dry = await rt.import_jobs(records(), dry_run=True)
        assert dry.dry_run and dry.new == {JobState.SUCCEEDED: 1, JobState.FAILED: 1,
                                           JobState.PLANNED: 1}
        assert await rt.store.counts() == dict.fromkeys(JobState, 0)
        result = await rt.import_jobs(records())
        assert (result.new, result.rejected) == (dry.new, 1)
        assert result.rejected_listed[0][0] == 4
        again = await rt.import_jobs(records())
        assert (again.total_new, again.unchanged, again.conflicts) == (0, 3, 0)
        rt.resume()
        with anyio.fail_after(10):
            await rt.join()
        assert ran == [{"n": 3}]
        assert rt.stats().counts == await rt.store.counts()
        assert rt.stats().counts[JobState.SUCCEEDED] == 2
        assert (await rt.submit([{"n": 1}])).duplicates == 1


# --- the command line --------------------------------------------------------------------


def syncward(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "syncward.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60, check=False)


def test_cli_import_dry_run_conflicts_and_bad_lines(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'jobs.db'}"
    (tmp_path / "done.csv").write_text("id,note\na,1\nb,2\n")
    (tmp_path / "more.jsonl").write_text("\n".join([
        '{"identity": {"id": "a"}, "state": "failed", "error": "x"}',
        '{"identity": {"id": "b"}}',
        '{"identity": {"id": "c"}, "state": "skipped"}',
        '{"identity": {"id": "d"}, "state": "done"}',
    ]) + "\n")
    dry = syncward(tmp_path, "import", "done.csv", "--state", "succeeded", "--db", db,
                   "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would import from done.csv: 2 new (succeeded 2), 0 unchanged" in dry.stdout
    first = syncward(tmp_path, "import", "done.csv", "--state", "succeeded", "--db", db)
    assert first.returncode == 0 and "imported from done.csv: 2 new" in first.stdout
    second = syncward(tmp_path, "import", "more.jsonl", "--db", db, "--json")
    assert second.returncode == 1
    out = json.loads(second.stdout)
    assert out["new"]["skipped"] == 1 and out["unchanged"] == 1 and out["conflicts"] == 1
    assert out["conflicts_listed"] == [{"key": job_key({"id": "a"}), "line": 1,
                                        "existing": "succeeded", "imported": "failed"}]
    assert second.stderr.splitlines()[0] == (
        "more.jsonl:4: field 'state': unknown state 'done' (expected planned, succeeded, "
        "failed or skipped)")
    assert "more.jsonl:1: conflict: job " in second.stderr

    async def state_of(ident: str) -> JobState:
        store = await open_store(db, readonly=True)
        try:
            row = await store.get_job(job_key({"id": ident}))
            assert row is not None
            return row.state
        finally:
            await store.aclose()

    assert anyio.run(state_of, "a") is JobState.SUCCEEDED  # never overwritten


def test_cli_import_refuses_a_store_in_use_and_bad_options(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'jobs.db'}"
    (tmp_path / "x.jsonl").write_text('{"identity": {"id": 1}}\n')

    async def hold() -> subprocess.CompletedProcess[str]:
        store = await open_store(db)
        try:
            return await anyio.to_thread.run_sync(syncward, tmp_path, "import", "x.jsonl",
                                                  "--db", db)
        finally:
            await store.aclose()

    busy = anyio.run(hold)
    assert busy.returncode == 2 and "in use" in busy.stderr, busy.stderr
    assert syncward(tmp_path, "import", "x.txt", "--db", db).returncode == 2
    assert syncward(tmp_path, "import", "missing.csv", "--db", db).returncode == 2
    nokey = syncward(tmp_path, "import", "x.csv", "--db", db)
    assert nokey.returncode == 2
    help_text = syncward(tmp_path, "import", "--help").stdout
    assert "Exit status:" in help_text and "conflicted" in help_text


# --- the README's Kepler migration, end to end --------------------------------------------

HANDLER = """\
import os
from pathlib import Path

async def download(job, ctx):
    with open(Path(os.environ["KEPLER_LOG"]), "a") as log:
        log.write(f"{job.identity['kic']}\\n")
    return {"path": f"kplr{int(job.identity['kic']):09d}.fits"}
"""


def test_kepler_migration_in_three_commands(tmp_path: Path, shared_redis: SharedRedis
                                            ) -> None:
    """The legacy pipeline: a SQLite table of finished KICs and a Redis list of pending
    download records. Three commands bring both in; the run redoes none of the finished."""
    finished = [757076, 757099, 757137, 757280]
    pending = [757450, 891901, 892010]
    never_seen = [892107]  # in the manifest only: new work
    legacy = sqlite3.connect(tmp_path / "legacy.db")
    legacy.execute("CREATE TABLE downloaded (kic INTEGER PRIMARY KEY, path TEXT)")
    legacy.executemany("INSERT INTO downloaded VALUES (?, ?)",
                       [(k, f"/data/kplr{k:09d}.fits") for k in finished])
    legacy.commit()
    legacy.close()
    records = shared_redis.key("kepler:download_records")
    client = shared_redis.client()
    try:
        client.rpush(records, *(json.dumps({"kic": k, "status": "pending", "worker": 2})
                                for k in pending))
        (tmp_path / "kics.txt").write_text("".join(f"{k}\n" for k in
                                                   finished + pending + never_seen))
        (tmp_path / "download.py").write_text(HANDLER)
        db = "sqlite:///kepler.db"
        redis_url = f"redis://127.0.0.1:6379/0?list={records}"
        # The three commands of the README.
        export = subprocess.run(
            [sys.executable, "-c", "import csv,sqlite3,sys; w=csv.writer(sys.stdout); "
             "w.writerow(['kic']); w.writerows(sqlite3.connect('legacy.db')"
             ".execute('SELECT kic FROM downloaded'))"],
            cwd=tmp_path, capture_output=True, text=True, check=True)
        (tmp_path / "done.csv").write_text(export.stdout)
        done = syncward(tmp_path, "import", "done.csv", "--key", "kic", "--state",
                        "succeeded", "--db", db)
        assert done.returncode == 0, done.stderr
        assert "4 new (succeeded 4)" in done.stdout
        todo = syncward(tmp_path, "import", redis_url, "--key", "kic", "--key-text",
                        "--db", db)
        assert todo.returncode == 0, todo.stderr
        assert "3 new (planned 3)" in todo.stdout
        assert client.llen(records) == len(pending)  # read, never popped
        run = subprocess.run(
            [sys.executable, "-m", "syncward.cli", "run", "kics.txt", "--key", "kic",
             "--handler", "download.py:download", "--db", db, "--no-progress"],
            cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
            env={**_env(), "KEPLER_LOG": str(tmp_path / "ran.log")})
        assert run.returncode == 0, run.stderr
    finally:
        client.close()
    ran = (tmp_path / "ran.log").read_text().split()
    assert sorted(ran) == sorted(str(k) for k in pending + never_seen)  # each once


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("SYNCWARD_")}
