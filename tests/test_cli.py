"""The command line, run as a user runs it: a subprocess on real files.

Handlers come from ``tests/cli_handlers.py`` (loaded by path, as ``--handler`` allows).
Waits for a condition poll with a deadline; fixed sleeps are only used where a real
process must be given time to act after a signal.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import pytest
from click.testing import CliRunner

from syncward.cli import cli
from syncward.errors import StoreError
from syncward.jobs import JobState, job_key, op_key
from syncward.store import JobRow, StoreReader, open_store

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

T = TypeVar("T")

HANDLERS = Path(__file__).resolve().parent / "cli_handlers.py"
STATES = ("planned", "leased", "succeeded", "failed", "skipped")


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SYNCWARD_", "CLI_TEST"))}
    env.update(CLI_TEST_DIR=str(tmp_path), SYNCWARD_DB=f"sqlite:///{tmp_path / 'jobs.db'}",
               **extra)
    return env


def syncward(tmp_path: Path, *args: str, stdin: str | bytes | None = None,
             timeout: float = 20, **extra: str) -> subprocess.CompletedProcess[str]:
    data = stdin.decode() if isinstance(stdin, bytes) else stdin
    return subprocess.run([sys.executable, "-m", "syncward.cli", *args], cwd=tmp_path,
                          env=env_for(tmp_path, **extra), input=data, capture_output=True,
                          text=True, timeout=timeout, check=False)


_started: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _reap_processes() -> Iterator[None]:
    """A process a failed test left running is killed and waited for."""
    yield
    while _started:
        proc = _started.pop()
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def start(tmp_path: Path, *args: str, stdin: int | None = None, **extra: str
          ) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-m", "syncward.cli", *args], cwd=tmp_path,
                            env=env_for(tmp_path, **extra), stdin=stdin,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _started.append(proc)
    return proc


def invoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *args: str
           ) -> subprocess.CompletedProcess[str]:
    """In-process, for commands refused before any work starts (fast; same exit and output)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # a handler load may extend it
    result = CliRunner().invoke(cli, list(args), env=env_for(tmp_path), catch_exceptions=False)
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


def handler(name: str) -> str:
    return f"{HANDLERS}:{name}"


def read(tmp_path: Path, fn: Callable[[StoreReader], Awaitable[T]], *,
         name: str = "jobs.db") -> T:
    """``fn`` on the store as another process sees it: opened read-only, through the
    `StoreReader` protocol, and closed again.

    Raises:
        StoreError: the store does not exist (yet), or has no schema (yet).
    """
    async def go() -> T:
        store = await open_store(f"sqlite:///{tmp_path / name}", readonly=True)
        try:
            return await fn(store)
        finally:
            await store.aclose()

    return anyio.run(go)


async def all_jobs(store: StoreReader) -> list[JobRow]:
    """Every job, by id. (One read per state: call it when nothing is writing.)"""
    jobs = [job for state in JobState for job in await store.jobs_in_state(state)]
    return sorted(jobs, key=lambda job: job.id)


def state_counts(tmp_path: Path) -> dict[str, int]:
    """Jobs by state, read-only (all 0 while the store is still being created)."""
    counts = dict.fromkeys(STATES, 0)
    if not (tmp_path / "jobs.db").exists():
        return counts
    try:
        by_state = read(tmp_path, lambda store: store.counts())
    except StoreError:  # no schema yet
        return counts
    counts.update({state.value: n for state, n in by_state.items()})
    return counts


def effects(tmp_path: Path) -> Counter[str]:
    log = tmp_path / "effects.log"
    return Counter(log.read_text().split()) if log.exists() else Counter()


def wait_for(condition: Any, *, timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def leased(tmp_path: Path) -> int:
    return state_counts(tmp_path)["leased"]


def one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    """Exit 2, nothing on stdout, one line on stderr naming the problem, no traceback."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("syncward: error")]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def check_report_shape(report: dict[str, Any]) -> None:
    """The documented shape of ``report --json``, keys and types."""
    assert list(report) == ["counts", "total", "failures", "rejected", "manifest",
                            "stats_drift"]
    assert list(report["counts"]) == list(STATES)
    assert all(type(n) is int for n in report["counts"].values())
    assert type(report["total"]) is int and report["total"] == sum(report["counts"].values())
    assert len(report["failures"]) == report["counts"]["failed"]
    for failure in report["failures"]:
        assert set(failure) == {"key", "identity", "attempts", "error"}
        assert isinstance(failure["key"], str) and len(failure["key"]) == 64
        assert isinstance(failure["identity"], dict) and type(failure["attempts"]) is int
        assert failure["error"] is None or isinstance(failure["error"], str)
    for rejected in report["rejected"]:
        assert set(rejected) == {"line", "reason"}
        assert type(rejected["line"]) is int and isinstance(rejected["reason"], str)
    manifest = report["manifest"]
    if manifest is not None:
        assert list(manifest) == ["entries", "distinct", "missing", "not_terminal"]
        assert type(manifest["entries"]) is int and type(manifest["distinct"]) is int
        assert type(manifest["not_terminal"]) is int and isinstance(manifest["missing"], list)
        assert all(isinstance(identity, dict) for identity in manifest["missing"])
    assert type(report["stats_drift"]) is int and report["stats_drift"] == 0


def run_json(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(result.stdout)  # exactly one object on stdout
    check_report_shape(report)
    return report


# --- help ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("command", "needles"), [
    ((), ["run", "status", "report", "reconcile", "retry", "Exit status"]),
    (("run",), ["SOURCE", "--handler", "--db", "--concurrency", "--max-attempts",
                "--lease-seconds", "--job-timeout", "--key", "--strict", "--no-progress",
                "--json", "--loop", "--grace", ".jsonl", "Exit status"]),
    (("status",), ["--db", "--json", "leases"]),
    (("report",), ["--db", "--run", "--manifest", "--json", "stats_drift"]),
    (("reconcile",), ["--db", "--dry-run", "--json"]),
    (("retry",), ["--db", "--state", "--key"]),
    (("cancel",), ["KEY", "--db", "--state", "--json", "Exits 1"]),
])
def test_every_command_has_complete_help(command: tuple[str, ...], needles: list[str]) -> None:
    result = CliRunner().invoke(cli, [*command, "--help"])
    assert result.exit_code == 0
    for needle in needles:
        assert needle in result.output


# --- formats, exit 0 and 1 -----------------------------------------------------------------


def test_txt_manifest_runs_and_json_is_the_report(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "m.txt").write_text("# the manifest\na\n\nb\n  c  \na\n")
    result = syncward(tmp_path, "run", "m.txt", "--handler", handler("ok"), "--json")
    assert result.returncode == 0, result.stderr
    report = run_json(result)
    assert report["counts"]["succeeded"] == 3
    assert report["manifest"] == {"entries": 4, "distinct": 3, "missing": [], "not_terminal": 0}
    again = invoke(tmp_path, monkeypatch, "report", "--json", "--run", "1")
    latest = invoke(tmp_path, monkeypatch, "report", "--json")
    assert json.loads(again.stdout) == json.loads(latest.stdout) == report


def test_csv_manifest_with_key_and_payload_columns(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("host,path,size\nexample.org,/a,1\nexample.org,/b,2\n")
    db = f"sqlite:///{tmp_path / 'other.db'}"
    result = syncward(tmp_path, "run", "m.csv", "--handler", handler("ok"), "--db", db,
                      "--key", "host,path", "--loop", "asyncio", "--json")
    assert result.returncode == 0, result.stderr
    assert run_json(result)["counts"]["succeeded"] == 2
    identity = {"host": "example.org", "path": "/a"}
    stored = read(tmp_path, lambda store: store.get_job(job_key(identity)), name="other.db")
    assert stored is not None and stored.identity == identity
    assert stored.payload == {"size": "1"}


def test_jsonl_manifest(tmp_path: Path) -> None:
    (tmp_path / "m.jsonl").write_text('{"identity": {"id": 1}, "payload": {"u": "x"}}\n'
                                      '{"identity": {"id": 2}}\n')
    result = syncward(tmp_path, "run", "m.jsonl", "--handler", handler("ok"), "--json")
    assert result.returncode == 0, result.stderr
    assert run_json(result)["manifest"]["entries"] == 2
    jobs = read(tmp_path, all_jobs)
    assert [job.payload for job in jobs] == [{"u": "x"}, {}]


def test_stdin_manifest(tmp_path: Path) -> None:
    result = syncward(tmp_path, "run", "-", "--handler", handler("ok"), "--json",
                      stdin="x\ny\n# no\n")
    assert result.returncode == 0, result.stderr
    assert run_json(result)["manifest"]["entries"] == 2
    jsonl = syncward(tmp_path, "run", "-", "--format", "jsonl", "--handler", handler("ok"),
                     "--json", stdin='{"identity": {"id": "z"}}\n')
    assert jsonl.returncode == 0, jsonl.stderr
    assert run_json(jsonl)["counts"]["succeeded"] == 3


def test_sigint_while_stdin_stays_open_exits_promptly(tmp_path: Path) -> None:
    proc = start(tmp_path, "run", "-", "--handler", handler("ok"), "--json",
                 stdin=subprocess.PIPE)
    assert proc.stdin is not None
    proc.stdin.write("a\nb\n")
    proc.stdin.flush()  # and left open: the reader is blocked in a read of stdin
    wait_for(lambda: state_counts(tmp_path)["succeeded"] == 2, what="two jobs done")
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=5)  # with stdin still open (communicate would close it first)
    out, err = proc.communicate(timeout=5)
    assert proc.returncode == 3, err
    assert json.loads(out)["counts"]["succeeded"] == 2
    assert "Traceback" not in err and "Fatal" not in err


def test_bad_lines_are_reported_and_every_good_line_runs(tmp_path: Path) -> None:
    lines = ['{"identity": {"id": "g1"}}', "{oops", '{"identity": {"id": "g2"}}',
             '{"identity": {"id": 0.5}}', '{"identity": {"id": "g3"}, "colour": 1}',
             '{"identity": {"id": "g4"}}']
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    result = syncward(tmp_path, "run", "m.jsonl", "--handler", handler("ok"), "--json")
    assert result.returncode == 1, result.stderr
    report = run_json(result)
    assert [r["line"] for r in report["rejected"]] == [2, 4, 5]
    assert "not valid JSON" in report["rejected"][0]["reason"]
    assert "float" in report["rejected"][1]["reason"]
    assert "'colour'" in report["rejected"][2]["reason"]
    assert report["counts"]["succeeded"] == 3 and report["total"] == 3  # lines 1, 3, 6
    assert report["manifest"]["entries"] == 3
    text = syncward(tmp_path, "report")  # the table names file and line
    assert text.returncode == 0
    assert "m.jsonl:2: not valid JSON" in text.stdout


@pytest.mark.slow
def test_failed_jobs_exit_1_and_retry_requeues_them(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "m.txt").write_text("ok1\nbad1\nok2\nbad2\n")
    result = syncward(tmp_path, "run", "m.txt", "--handler", handler("flaky"), "--json")
    assert result.returncode == 1, result.stderr
    report = run_json(result)
    assert {f["identity"]["id"] for f in report["failures"]} == {"bad1", "bad2"}
    assert "never works" in report["failures"][0]["error"]
    one = job_key({"id": "bad1"})
    retried = syncward(tmp_path, "retry", "--key", one, "--json")
    assert retried.returncode == 0, retried.stderr
    assert json.loads(retried.stdout) == {"requeued": 1, "not_requeued": []}
    rest = invoke(tmp_path, monkeypatch, "retry")
    assert rest.returncode == 0 and "requeued 1 failed job(s)" in rest.stdout
    assert state_counts(tmp_path) == {**dict.fromkeys(STATES, 0), "planned": 2, "succeeded": 2}
    planned = read(tmp_path, lambda store: store.jobs_in_state(JobState.PLANNED))
    assert max((job.attempts for job in planned), default=None) == 0
    missing = invoke(tmp_path, monkeypatch, "retry", "--key", one)  # planned, not failed
    assert missing.returncode == 1 and one in missing.stderr
    one_line_error(invoke(tmp_path, monkeypatch, "retry", "--key", "xyz"), "64 hex")


def test_cancel_skips_planned_jobs_by_key_and_by_state(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from syncward import Runtime

    async def seed() -> None:  # five planned jobs, one succeeded
        async def ok(job: Any, ctx: Any) -> None: ...

        async with Runtime(ok, store=f"sqlite:///{tmp_path / 'jobs.db'}") as rt:
            await rt.submit([{"id": "done"}])
            await rt.join()
            rt.pause()
            await rt.submit([{"id": i} for i in range(5)])

    anyio.run(seed)
    one, done, nobody = job_key({"id": 0}), job_key({"id": "done"}), job_key({"id": "x"})
    result = syncward(tmp_path, "cancel", one.upper(), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "cancelled": 1, "planned": 1, "leased": 0, "running": [], "already_cancelled": [],
        "finished": [], "other_state": [], "not_found": []}
    left = invoke(tmp_path, monkeypatch, "cancel", one, done, nobody)
    assert left.returncode == 1
    assert "cancelled 0 job(s)" in left.stdout
    assert f"not cancelled (already finished): {done}" in left.stderr
    assert f"not cancelled (no such job): {nobody}" in left.stderr
    rest = invoke(tmp_path, monkeypatch, "cancel", "--state", "planned")
    assert rest.returncode == 0 and "cancelled 4 job(s): 4 planned, 0 leased" in rest.stdout
    assert state_counts(tmp_path) == {**dict.fromkeys(STATES, 0), "succeeded": 1,
                                      "skipped": 5}
    skipped = read(tmp_path, lambda store: store.jobs_in_state(JobState.SKIPPED))
    assert {job.last_error for job in skipped} == {"cancelled"}
    one_line_error(invoke(tmp_path, monkeypatch, "cancel", "xyz"), "64 hex")
    one_line_error(invoke(tmp_path, monkeypatch, "cancel"), "KEY", "--state")
    bad_state = invoke(tmp_path, monkeypatch, "cancel", "--state", "failed")
    assert bad_state.returncode == 2 and "'failed' is not one of" in bad_state.stderr


def test_report_against_a_manifest_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                        ) -> None:
    (tmp_path / "m.txt").write_text("a\nb\n")
    assert syncward(tmp_path, "run", "m.txt", "--handler", handler("ok")).returncode == 0
    (tmp_path / "other.csv").write_text("id,x\na,1\nc,2\nc,3\n,4\n")
    result = syncward(tmp_path, "report", "--manifest", "other.csv", "--json")
    assert result.returncode == 0, result.stderr
    report = run_json(result)
    assert report["manifest"] == {"entries": 3, "distinct": 2, "missing": [{"id": "c"}],
                                  "not_terminal": 0}
    assert report["rejected"] == [{"line": 5, "reason": "empty identity column 'id'"}]
    conn = sqlite3.connect(tmp_path / "jobs.db")  # lose a job (what must never happen)
    with conn:
        conn.execute("""DELETE FROM jobs WHERE identity = '{"id":"b"}'""")
    conn.close()
    lost = run_json(invoke(tmp_path, monkeypatch, "report", "--json"))
    assert lost["manifest"]["missing"] == [{"id": "b"}]  # named from the run's source file
    one_line_error(invoke(tmp_path, monkeypatch, "report", "--run", "7"), "no run 7")
    both = invoke(tmp_path, monkeypatch, "report", "--run", "1", "--manifest", "other.csv")
    assert both.returncode == 2 and "not both" in both.stderr


# --- exit 2: nothing done ------------------------------------------------------------------


@pytest.mark.parametrize(("args", "needles"), [
    (["m.txt", "--handler", "no_such_module_xyz:run"], ["no_such_module_xyz", "not found"]),
    (["m.txt", "--handler", f"{HANDLERS}:absent"], ["no attribute 'absent'"]),
    (["m.txt", "--handler", f"{HANDLERS}:not_async"], ["async function"]),
    (["m.txt", "--handler", "missing/handlers.py:run"], ["missing/handlers.py", "not exist"]),
    (["m.txt", "--handler", "nocolon"], ["package.module:function"]),
    (["absent.txt", "--handler", f"{HANDLERS}:ok"], ["absent.txt", "No such file"]),
    (["m.data", "--handler", f"{HANDLERS}:ok"], ["m.data", "--format"]),
    (["m.csv", "--handler", f"{HANDLERS}:ok"], ["no column 'id'"]),
    (["m.txt", "--handler", f"{HANDLERS}:ok", "--db", "postgres://x/y"], ["postgres://x/y"]),
    (["m.txt", "--handler", f"{HANDLERS}:ok", "--db", "sqlite:///no/dir/x.db"],
     ["no/dir", "does not exist"]),
])
def test_usage_errors_exit_2_with_one_line_and_nothing_done(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], needles: list[str]
        ) -> None:
    (tmp_path / "m.txt").write_text("a\n")
    (tmp_path / "m.data").write_text("a\n")
    (tmp_path / "m.csv").write_text("name\nx\n")
    one_line_error(invoke(tmp_path, monkeypatch, "run", *args), *needles)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.csv", "m.data", "m.txt"]


def test_a_real_process_refused_at_start_exits_2_without_traceback(tmp_path: Path) -> None:
    (tmp_path / "m.txt").write_text("a\n")
    script = Path(sys.executable).parent / "syncward"  # the console script, when installed
    command = [str(script)] if script.exists() else [sys.executable, "-m", "syncward.cli"]
    result = subprocess.run([*command, "run", "m.txt", "--handler", "no_such_module_xyz:run"],
                            cwd=tmp_path, env=env_for(tmp_path), capture_output=True,
                            text=True, timeout=20, check=False)
    one_line_error(result, "handler module 'no_such_module_xyz' not found")
    assert result.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.txt"]


@pytest.mark.slow
def test_strict_refuses_the_whole_run_before_any_work(tmp_path: Path) -> None:
    (tmp_path / "m.txt").write_bytes(b"a\nb\xff\nc\n")
    result = syncward(tmp_path, "run", "m.txt", "--handler", handler("ok"), "--strict")
    one_line_error(result, "--strict", "1 bad line")
    assert "m.txt:2: not valid UTF-8" in result.stderr
    assert not (tmp_path / "jobs.db").exists()
    piped = syncward(tmp_path, "run", "-", "--format", "jsonl", "--strict", "--handler",
                     handler("ok"), stdin='{"identity": {"id": 1}}\n[]\n')
    one_line_error(piped, "--strict")
    assert "-:2: expected a JSON object" in piped.stderr
    assert not (tmp_path / "jobs.db").exists()
    good = syncward(tmp_path, "run", "-", "--strict", "--handler", handler("ok"), "--json",
                    stdin="a\nb\n")
    assert good.returncode == 0 and run_json(good)["manifest"]["entries"] == 2


def test_store_errors_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    one_line_error(invoke(tmp_path, monkeypatch, "status"), "jobs.db", "does not exist")
    one_line_error(invoke(tmp_path, monkeypatch, "report"), "does not exist")
    one_line_error(invoke(tmp_path, monkeypatch, "reconcile"), "does not exist")
    (tmp_path / "m.txt").write_text("a\n")
    conn = sqlite3.connect(tmp_path / "jobs.db")
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    newer = syncward(tmp_path, "run", "m.txt", "--handler", handler("ok"))
    one_line_error(newer, "schema version 99", "upgrade syncward")
    one_line_error(invoke(tmp_path, monkeypatch, "status"), "schema version 99")
    (tmp_path / "jobs.db").write_bytes(b"this is not a database, just text" * 100)
    one_line_error(invoke(tmp_path, monkeypatch, "status"), "cannot be read")


@pytest.mark.slow
def test_a_store_held_by_a_runtime_is_refused_but_readable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fcntl

    (tmp_path / "m.txt").write_text("a\n")
    assert syncward(tmp_path, "run", "m.txt", "--handler", handler("ok")).returncode == 0
    with open(tmp_path / "jobs.db.lock", "a+") as lock:  # what a running runtime holds
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.write(json.dumps({"pid": os.getpid(), "host": "elsewhere", "since": "now"}))
        lock.flush()
        result = syncward(tmp_path, "run", "m.txt", "--handler", handler("ok"))
        one_line_error(result, "in use by another runtime", f"pid {os.getpid()}")
        one_line_error(invoke(tmp_path, monkeypatch, "reconcile"), "in use")
        one_line_error(invoke(tmp_path, monkeypatch, "retry"), "in use")
        one_line_error(invoke(tmp_path, monkeypatch, "cancel", "--state", "planned"), "in use")
        status = invoke(tmp_path, monkeypatch, "status", "--json")
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["counts"]["succeeded"] == 1


# --- interruption and recovery -------------------------------------------------------------


@pytest.mark.slow
def test_kill_9_mid_run_then_the_next_run_finishes_without_redoing_effects(
        tmp_path: Path) -> None:
    n = 120
    (tmp_path / "m.txt").write_text("".join(f"{i}\n" for i in range(n)))
    args = ("run", "m.txt", "--handler", handler("effect"), "--concurrency", "4")
    proc = start(tmp_path, *args, CLI_TEST_SLEEP="0.03")
    wait_for(lambda: sum(effects(tmp_path).values()) >= 10, what="some effects")
    proc.kill()
    proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    before = effects(tmp_path)

    async def with_committed_effect(store: StoreReader) -> list[str]:
        """The ids of the jobs whose one effect (the handler's "write") is in the ledger."""
        return [str(i) for i in range(n)
                if await store.get_op(op_key("write", job_key({"id": str(i)}))) is not None]

    committed = read(tmp_path, with_committed_effect)
    assert 0 < len(committed) < n

    result = syncward(tmp_path, *args, "--json", CLI_TEST_SLEEP="0")
    assert result.returncode == 0, result.stderr
    report = run_json(result)
    assert report["manifest"] == {"entries": n, "distinct": n, "missing": [],
                                  "not_terminal": 0}
    assert report["counts"]["succeeded"] == n
    after = effects(tmp_path)
    assert set(after) == {str(i) for i in range(n)}
    for ident in committed:  # a committed effect is never run again
        assert after[ident] == before[ident] == 1
    assert sum(after.values()) - n <= 8  # at most the jobs that were in flight at the kill
    assert read(tmp_path, lambda store: store.ops_count()) == (n, n)


@pytest.mark.slow
def test_sigint_drains_exits_3_and_the_next_run_finishes(tmp_path: Path) -> None:
    n = 60
    (tmp_path / "m.txt").write_text("".join(f"{i}\n" for i in range(n)))
    args = ("run", "m.txt", "--handler", handler("effect"), "--concurrency", "4", "--json")
    proc = start(tmp_path, *args, CLI_TEST_SLEEP="0.1")
    wait_for(lambda: sum(effects(tmp_path).values()) >= 4, what="some effects")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 3, err
    assert "Traceback" not in err and "SIGINT" in err
    report = json.loads(out)
    check_report_shape(report)
    counts = state_counts(tmp_path)
    assert counts["leased"] == 0  # in-flight jobs finished, the rest were released
    assert counts["succeeded"] >= 4 and counts["planned"] > 0
    assert report["counts"] == counts

    async def runs(store: StoreReader) -> list[str]:
        """The status of every run, by id."""
        infos = [await store.run_info(i) for i in range(1, (await store.latest_run() or 0) + 1)]
        return [info.status for info in infos if info is not None]

    assert read(tmp_path, runs) == ["interrupted"]

    result = syncward(tmp_path, *args, CLI_TEST_SLEEP="0")
    assert result.returncode == 0, result.stderr
    assert run_json(result)["manifest"]["not_terminal"] == 0
    assert effects(tmp_path) == Counter({str(i): 1 for i in range(n)})  # drained: none twice


@pytest.mark.slow
def test_second_sigint_stops_at_once_and_reconcile_recovers(tmp_path: Path) -> None:
    (tmp_path / "m.txt").write_text("".join(f"{i}\n" for i in range(10)))
    (tmp_path / "hold").touch()  # the handler sleeps for 30 s
    args = ("run", "m.txt", "--handler", handler("effect"), "--concurrency", "2")
    proc = start(tmp_path, *args, "--grace", "30", CLI_TEST_HOLD="30")
    wait_for(lambda: leased(tmp_path) > 0, what="leased jobs")
    proc.send_signal(signal.SIGINT)
    time.sleep(0.2)  # the first signal is being handled: draining, with 30 s of grace
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=5)
    assert proc.returncode == 3, err
    assert "stopping now" in err and "Traceback" not in err
    held = leased(tmp_path)
    assert held > 0  # killed: nothing was released

    dry = syncward(tmp_path, "reconcile", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["leases_requeued"] == held
    assert leased(tmp_path) == held  # the dry run changed nothing
    real = syncward(tmp_path, "reconcile", "--json")
    assert json.loads(real.stdout)["leases_requeued"] == held
    assert json.loads(real.stdout)["workers_marked_dead"] == ["worker-1"]
    assert leased(tmp_path) == 0

    (tmp_path / "hold").unlink()
    result = syncward(tmp_path, *args, "--json", CLI_TEST_SLEEP="0")
    assert result.returncode == 0, result.stderr
    assert run_json(result)["counts"]["succeeded"] == 10


@pytest.mark.slow
def test_status_while_running_then_sigterm_releases_the_leases(tmp_path: Path) -> None:
    (tmp_path / "m.txt").write_text("".join(f"{i}\n" for i in range(6)))
    (tmp_path / "hold").touch()
    proc = start(tmp_path, "run", "m.txt", "--handler", handler("effect"), "--concurrency",
                 "2", "--grace", "0.2", CLI_TEST_HOLD="30")
    try:  # SIGTERM, whatever happens, for it ends the run quickly
        wait_for(lambda: leased(tmp_path) > 0, what="leased jobs")
        status = syncward(tmp_path, "status", "--json")
        assert status.returncode == 0, status.stderr
        st = json.loads(status.stdout)
        assert st["owner"]["pid"] == proc.pid and st["owner"]["alive"] is True
        assert st["syncer"]["running"] is True
        assert st["active_leases"] and all(
            lease["owner"] == "worker-1" and lease["owner_alive"]
            for lease in st["active_leases"])
        assert [(w["name"], w["status"], w["alive"]) for w in st["workers"]] == [
            ("worker-1", "running", True)]
        assert st["latest_run"]["status"] == "running"
        assert st["counts"]["planned"] + st["counts"]["leased"] == 6
        table = syncward(tmp_path, "status")
        assert table.returncode == 0 and "worker-1" in table.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=5)
    assert proc.returncode == 3, err
    assert "SIGTERM" in err and "interrupted" in out
    assert state_counts(tmp_path)["planned"] == 6  # past the grace: released, not lost


def test_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    import pty
    import select

    (tmp_path / "m.txt").write_text("".join(f"{i}\n" for i in range(30)))
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "syncward.cli", "run", "m.txt", "--handler", handler("effect"),
         "--concurrency", "2"], cwd=tmp_path, env=env_for(tmp_path, CLI_TEST_SLEEP="0.02"),
        stdout=slave, stderr=subprocess.PIPE)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # the terminal closed: the process has exited
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(master)
    assert proc.wait(timeout=5) == 0
    assert proc.stderr is not None
    proc.stderr.close()
    text = b"".join(chunks).decode(errors="replace")
    assert "in flight" in text and "retrying" in text  # the bar's second line
    assert "Manifest: 30 entries" in text  # then the summary


def test_verbose_prints_the_details_behind_the_lines(tmp_path: Path) -> None:
    (tmp_path / "m.txt").write_text("a\nb\n")
    quiet = syncward(tmp_path, "run", "m.txt", "--handler", f"{HANDLERS}:ok", "--no-progress")
    assert quiet.returncode == 0, quiet.stderr
    assert "reconciliation" not in quiet.stderr
    loud = syncward(tmp_path, "-v", "run", "m.txt", "--handler", f"{HANDLERS}:ok",
                    "--no-progress")
    assert loud.returncode == 0, loud.stderr
    assert "syncward: start-up reconciliation: nothing to do" in loud.stderr.splitlines()


# --- limits per key ----------------------------------------------------------------------


def test_run_with_a_limit_per_field_never_runs_two_of_one_tenant_at_once(tmp_path: Path
                                                                         ) -> None:
    rows = "id,tenant\n" + "".join(f"{i},{'ab'[i % 2]}\n" for i in range(12))
    (tmp_path / "m.csv").write_text(rows)
    free = syncward(tmp_path, "run", "m.csv", "--handler", handler("per_tenant"),
                    "--concurrency", "8", "--no-progress", "--db",
                    f"sqlite:///{tmp_path / 'free.db'}")
    assert free.returncode == 0, free.stderr
    unlimited = json.loads((tmp_path / "peaks.json").read_text())
    assert max(unlimited.values()) > 1  # eight downloaders do run a tenant's jobs together
    (tmp_path / "peaks.json").unlink()
    limited = syncward(tmp_path, "run", "m.csv", "--handler", handler("per_tenant"),
                       "--concurrency", "8", "--no-progress",
                       "--limit", "tenant:concurrency=1")
    assert limited.returncode == 0, limited.stderr
    assert json.loads((tmp_path / "peaks.json").read_text()) == {"a": 1, "b": 1}


@pytest.mark.parametrize(("spec", "says"), [
    ("host:concurrency=0", "--limit 'host:concurrency=0': limit 'host': concurrency must be "
                           "an int >= 1 (or None), got 0"),
    ("host:rate=-1", "--limit 'host:rate=-1': limit 'host': rate must be a positive number"),
    ("host", "--limit 'host': expected FIELD:concurrency=N,rate=R"),
    ("host:speed=3", "--limit 'host:speed=3': unknown setting 'speed=3'"),
    ("host:rate=fast", "--limit 'host:rate=fast': could not convert string to float"),
    ("host:rate=1,rate=2", "--limit 'host:rate=1,rate=2': rate is given twice"),
])
def test_a_bad_limit_is_one_line_naming_it_and_exit_2(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      spec: str, says: str) -> None:
    (tmp_path / "m.txt").write_text("a\n")
    result = invoke(tmp_path, monkeypatch, "run", "m.txt", "--handler", handler("ok"),
                    "--limit", spec)
    assert result.returncode == 2
    assert says in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_run_takes_a_csv_priority_column_and_runs_the_urgent_first(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("id,prio\nlow,0\nurgent,3600\nsoon,60\nlater,-60\n")
    result = syncward(tmp_path, "run", "m.csv", "--handler", handler("effect"),
                      "--concurrency", "1", "--priority-column", "prio", "--no-progress",
                      CLI_TEST_SLEEP="0")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "effects.log").read_text().split() == ["urgent", "soon", "low", "later"]


def test_import_with_the_runs_limits_gives_planned_jobs_their_limit_keys(tmp_path: Path
                                                                         ) -> None:
    rows = "id,tenant\n" + "".join(f"{i},{'ab'[i % 2]}\n" for i in range(12))
    (tmp_path / "m.csv").write_text(rows)
    imported = syncward(tmp_path, "import", "m.csv", "--limit", "tenant:concurrency=1")
    assert imported.returncode == 0, imported.stderr
    assert "12 new (planned 12)" in imported.stdout
    run = syncward(tmp_path, "run", "m.csv", "--handler", handler("per_tenant"),
                   "--concurrency", "8", "--no-progress", "--limit", "tenant:concurrency=1")
    assert run.returncode == 0, run.stderr
    assert json.loads((tmp_path / "peaks.json").read_text()) == {"a": 1, "b": 1}
