"""Review of the Import feature: each test here failed before its fix, plus the checks of
key matching between imported records and the manifests a later `syncward run` reads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from redis_helpers import QUICK

from syncward import Context, Job, Limit, Runtime
from syncward.adapters.importer import Record, open_import, parse_line
from syncward.adapters.manifest import Entry, Rejection, open_manifest
from syncward.errors import InvalidJob
from syncward.imports import ImportRecord, to_import_job
from syncward.jobs import JobState, job_key


def syncward(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "syncward.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60, check=False)


def _import_keys(path: Path, **kwargs: Any) -> list[str]:
    with open_import(str(path), **kwargs) as source:
        return [to_import_job(item.record, max_attempts=5, line=item.line).key
                for item in source if isinstance(item, Record)]


def _manifest_keys(path: Path, **kwargs: Any) -> list[str]:
    with open_manifest(str(path), **kwargs) as manifest:
        return [job_key(item.spec.identity) for item in manifest if isinstance(item, Entry)]


# --- one bad line must never stop the others ---------------------------------------------


def test_a_deeply_nested_line_is_rejected_not_fatal(tmp_path: Path) -> None:
    """json.loads raises RecursionError (not a ValueError) on deep nesting: it used to
    escape the reader and abort the whole import (exit 1, nothing imported)."""
    deep = "[" * 50_000 + "]" * 50_000  # within csv's field size limit
    item = parse_line(7, '{"identity": {"id": 1}, "result": ' + deep + "}")
    assert isinstance(item, Rejection) and item.line == 7
    assert "nested too deeply" in item.reason
    (tmp_path / "deep.csv").write_text(f'id,state,result\n1,succeeded,"{deep}"\n2,succeeded,\n')
    with open_import(str(tmp_path / "deep.csv")) as source:
        found = list(source)
    assert isinstance(found[0], Rejection) and found[0].line == 2
    assert found[0].reason.startswith("field 'result': ")
    assert isinstance(found[1], Record) and found[1].line == 3
    (tmp_path / "deep.jsonl").write_text(
        '{"identity": {"id": 1}, "result": ' + deep + '}\n{"identity": {"id": 2}}\n')
    out = syncward(tmp_path, "import", "deep.jsonl", "--db", "sqlite:///jobs.db")
    assert out.returncode == 1, out.stderr
    assert "1 new (planned 1)" in out.stdout
    assert out.stderr.startswith("deep.jsonl:1: not valid JSON: nested too deeply")


def test_an_error_that_is_not_valid_text_is_rejected_naming_the_field(tmp_path: Path
                                                                      ) -> None:
    """A lone surrogate (``"\\ud800"``) in ``error`` passed every check, then failed the
    chunk's INSERT (UnicodeEncodeError): the whole import stopped, its other lines lost."""
    with pytest.raises(InvalidJob) as info:
        to_import_job(ImportRecord({"id": 1}, "failed", error="bad \ud800"), max_attempts=5,
                      line=1)
    assert info.value.field == "error"
    (tmp_path / "s.jsonl").write_text(
        '{"identity": {"id": 1}, "state": "failed", "error": "bad \\ud800"}\n'
        '{"identity": {"id": 2}, "state": "succeeded"}\n')
    out = syncward(tmp_path, "import", "s.jsonl", "--db", "sqlite:///jobs.db")
    assert out.returncode == 1, out.stderr
    assert "1 new (succeeded 1)" in out.stdout
    assert out.stderr.startswith("s.jsonl:1: field 'error': ")


# --- attempts and max_attempts -------------------------------------------------------------


@pytest.mark.parametrize(("state", "attempts", "max_attempts", "ok"), [
    ("failed", 5, 5, True),
    ("failed", 9, 5, False),  # attempts 9 of 5: no job ever gets there
    ("succeeded", 6, None, False),  # the importer's default (5)
    ("succeeded", 6, 6, True),
    ("planned", 4, 5, True),  # one attempt left: leased as attempt 5 of 5
    ("planned", 5, 5, False),  # leased as attempt 6 of 5
    ("planned", 0, 1, True),
])
def test_attempts_never_exceed_max_attempts(state: str, attempts: int,
                                            max_attempts: int | None, ok: bool) -> None:
    record = ImportRecord({"id": 1}, state, attempts=attempts, max_attempts=max_attempts)
    if ok:
        job = to_import_job(record, max_attempts=5, line=1)
        assert job.attempts <= job.max_attempts
        return
    with pytest.raises(InvalidJob) as info:
        to_import_job(record, max_attempts=5, line=1)
    assert info.value.field == "attempts"


# --- flat records: a state that is there but empty is not "no state" ----------------------


@pytest.mark.parametrize("value", ['""', "0", "false", "[]"])
def test_a_flat_records_falsy_state_is_rejected_not_defaulted(value: str) -> None:
    """``"state": ""`` (or 0, false) in a flat record silently became the --state
    default (`or` instead of a None check); the canonical form refuses it."""
    for text, key in (('{"kic": 1, "state": ' + value + "}", ("kic",)),
                      ('{"identity": {"kic": 1}, "state": ' + value + "}", ())):
        item = parse_line(3, text, key=key, state=JobState.SUCCEEDED)
        assert isinstance(item, Record), item
        with pytest.raises(InvalidJob) as info:
            to_import_job(item.record, max_attempts=5, line=3)
        assert info.value.field == "state"


# --- --key-text must not be silently ignored -------------------------------------------


def test_key_text_applies_to_canonical_records_too(tmp_path: Path) -> None:
    """`--key-text` without `--key` was ignored: integer identities stayed integers, so
    the later run of a .txt manifest redid every job imported as done."""
    (tmp_path / "done.jsonl").write_text(
        '{"identity": {"kic": 757076}, "state": "succeeded"}\n')
    (tmp_path / "kics.txt").write_text("757076\n")
    assert _import_keys(tmp_path / "done.jsonl", key_text=True) == _manifest_keys(
        tmp_path / "kics.txt", key=("kic",))
    assert _import_keys(tmp_path / "done.jsonl") != _manifest_keys(
        tmp_path / "kics.txt", key=("kic",))  # without it: an int, another job


# --- --dry-run writes nothing, not even a new store ----------------------------------------


def test_dry_run_creates_no_store(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("id,state\n1,succeeded\n2,\n")
    out = syncward(tmp_path, "import", "a.csv", "--db", "sqlite:///new.db", "--dry-run")
    assert out.returncode == 0, out.stderr
    assert "would import from a.csv: 2 new (succeeded 1, planned 1)" in out.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv"]


# --- keys: what is imported is what a later run of the manifest submits (checked) ---------


def test_imported_keys_match_each_manifest_format(tmp_path: Path) -> None:
    (tmp_path / "m.txt").write_text(" 757076 \n# c\n757099\n")
    (tmp_path / "m.csv").write_text("\ufeffkic,url\r\n 757076 ,\"a\r\nb\"\r\n757099,c\r\n")
    (tmp_path / "m_int.jsonl").write_text(
        '{"identity": {"kic": 757076}}\n{"identity": {"kic": 757099}}\n')
    (tmp_path / "m_str.jsonl").write_text(
        '{"identity": {"kic": "757076"}}\n{"identity": {"kic": "757099"}}\n')
    text = _manifest_keys(tmp_path / "m.txt", key=("kic",))
    assert text == _manifest_keys(tmp_path / "m.csv", key=("kic",))
    assert text == _manifest_keys(tmp_path / "m_str.jsonl")
    ints = _manifest_keys(tmp_path / "m_int.jsonl")
    assert ints != text
    # A csv import (BOM, CRLF, a quoted newline, padding) reads text, as the manifests do.
    (tmp_path / "done.csv").write_text(
        "\ufeffkic,state,note\r\n 757076 ,succeeded,\"x\r\ny\"\r\n757099,failed,\r\n")
    assert _import_keys(tmp_path / "done.csv", key=("kic",)) == text
    # Flat .jsonl: values keep their type unless --key-text.
    (tmp_path / "flat.jsonl").write_text('{"kic": 757076, "x": 1}\n{"kic": 757099}\n')
    assert _import_keys(tmp_path / "flat.jsonl", key=("kic",)) == ints
    assert _import_keys(tmp_path / "flat.jsonl", key=("kic",), key_text=True) == text
    # Canonical .jsonl: the identity as given.
    assert _import_keys(tmp_path / "m_int.jsonl") == ints
    assert _import_keys(tmp_path / "m_str.jsonl") == text


def test_cli_import_then_run_of_a_jsonl_manifest_with_int_keys_redoes_nothing(
        tmp_path: Path) -> None:
    (tmp_path / "done.jsonl").write_text('{"kic": 1, "state": "succeeded"}\n'
                                         '{"kic": 2, "state": "failed", "attempts": 3}\n')
    (tmp_path / "m.jsonl").write_text("".join(
        json.dumps({"identity": {"kic": k}}) + "\n" for k in (1, 2, 3)))
    (tmp_path / "h.py").write_text(
        "async def handler(job, ctx):\n"
        "    open('ran.log', 'a').write(f\"{job.identity['kic']}\\n\")\n")
    out = syncward(tmp_path, "import", "done.jsonl", "--key", "kic", "--db", "sqlite:///j.db")
    assert out.returncode == 0, out.stderr
    run = syncward(tmp_path, "run", "m.jsonl", "--handler", "h.py:handler", "--db",
                   "sqlite:///j.db", "--no-progress")
    assert (tmp_path / "ran.log").read_text().split() == ["3"], run.stderr


# --- imported planned jobs obey the runtime's per-key limits ------------------------------


async def test_imported_planned_jobs_obey_the_runtimes_limits(tmp_path: Path) -> None:
    running = peak = 0

    async def handler(job: Job, ctx: Context) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await anyio.sleep(0.2)
        running -= 1

    limit = Limit("host", lambda spec: spec.identity.get("host"), concurrency=1)
    async with Runtime(handler, store=f"sqlite:///{tmp_path / 'j.db'}", syncer=QUICK,
                       concurrency=4, limits=[limit]) as rt:
        result = await rt.import_jobs(
            [{"identity": {"host": "a", "n": n}} for n in range(3)])
        assert result.total_new == 3
        with anyio.fail_after(10):
            await rt.join()
    assert peak == 1
