"""``syncward run --http`` and ``syncward serve`` as real processes on a free port.

Each binds port 0 and says on stderr where it serves; the tests read that line, talk to
the server over loopback with httpx, and stop the processes. The refusals (a port in
use, an unusable token, ...) exit 2 before the store is created.
"""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families
from web_helpers import AUTH, TOKEN, until

from syncward.cli import cli

if TYPE_CHECKING:
    from collections.abc import Iterator

HANDLER = f"{Path(__file__).resolve().parent / 'web_handlers.py'}:hold"
URL_LINE = re.compile(r"on (http://127\.0\.0\.1:\d+/)")


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SYNCWARD_", "WEB_TEST"))}
    env.update(WEB_TEST_DIR=str(tmp_path), SYNCWARD_DB=f"sqlite:///{tmp_path / 'jobs.db'}",
               **extra)
    return env


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def start(started: list[subprocess.Popen[str]], tmp_path: Path, *args: str,
          **extra: str) -> tuple[subprocess.Popen[str], str]:
    """Start ``syncward ARGS``; returns it and the URL it says it serves on."""
    proc = subprocess.Popen([sys.executable, "-m", "syncward.cli", *args], cwd=tmp_path,
                            env=env_for(tmp_path, **extra), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    started.append(proc)
    assert proc.stderr is not None
    deadline = time.monotonic() + 20
    seen = ""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], 0.1)
        if ready:
            line = proc.stderr.readline()
            seen += line
            if match := URL_LINE.search(line):
                return proc, match.group(1)
        if proc.poll() is not None:
            break
    pytest.fail(f"syncward {' '.join(args)} did not say where it serves: {seen!r}")


def jobs_gauge(text: str) -> dict[str, float]:
    return {s.labels["state"]: s.value for f in text_string_to_metric_families(text)
            for s in f.samples if s.name == "syncward_jobs"}


@pytest.mark.slow
def test_run_http_and_serve_as_real_processes(
        tmp_path: Path, processes: list[subprocess.Popen[str]]) -> None:
    (tmp_path / "m.txt").write_text("".join(f"{i}\n" for i in range(6)) + "bad-1\n")
    (tmp_path / "hold").touch()
    run, url = start(processes, tmp_path, "run", "m.txt", "--handler", HANDLER,
                     "--concurrency", "2", "--http", "0", "--no-progress",
                     SYNCWARD_ADMIN_TOKEN=TOKEN)
    with httpx.Client(base_url=url, timeout=10) as c:
        until(lambda: c.get("/health").json()["counts"]["leased"] >= 2, what="leases")
        health = c.get("/health")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        gauge = jobs_gauge(c.get("/metrics").text)
        assert sum(gauge.values()) == 7
        overview = c.get("/api/overview").json()
        assert overview["mode"] == "live" and overview["run"]["status"] == "running"
        assert any(lease["progress"] == {"done": 1, "total": 4, "fraction": 0.25}
                   for lease in overview["leases"])
        assert c.post("/api/pause").status_code == 401
        assert c.post("/api/pause", headers=AUTH).json() == {"paused": True}
        assert c.post("/api/resume", headers=AUTH).json() == {"paused": False}

        watch, watch_url = start(processes, tmp_path, "serve", "--http", "127.0.0.1:0")
        with httpx.Client(base_url=watch_url, timeout=10) as w:
            watched = w.get("/health")
            assert watched.status_code == 200, watched.text
            assert watched.json()["counts"]["leased"] >= 2
            assert w.get("/api/overview").json()["mode"] == "watch"
            assert w.post("/api/pause", headers=AUTH).status_code == 403  # no token here
            (tmp_path / "hold").unlink()
            _, err = run.communicate(timeout=30)
            assert run.returncode == 1, err  # bad-1 failed: the run says so
            with pytest.raises(httpx.ConnectError):
                c.get("/health")  # the run's server ended with the run
            # The watcher goes on (its reads are reused for half a second): nothing runs
            # the store now, which is not unhealthy.
            final = until(lambda: (h := w.get("/health").json())["counts"]["succeeded"] == 6
                          and h, what="the watcher to see the end")
            assert final["status"] == "ok" and final["counts"]["failed"] == 1
            assert jobs_gauge(w.get("/metrics").text)["failed"] == 1
        watch.send_signal(signal.SIGTERM)
        _, werr = watch.communicate(timeout=10)
        assert watch.returncode == 0, werr
        assert "SIGTERM: stopping" in werr and "Traceback" not in werr


def invoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *args: str,
           **env: str) -> tuple[int, str]:
    """In-process, for refusals before any work (fast; the same exit and output)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    result = CliRunner().invoke(cli, list(args), env=env_for(tmp_path, **env),
                                catch_exceptions=False)
    return result.exit_code, result.stderr


def test_http_refusals_exit_2_and_do_nothing(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "m.txt").write_text("1\n")
    run = ["run", "m.txt", "--handler", HANDLER]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        cases: list[tuple[list[str], dict[str, str], str]] = [
            ([*run, "--http", "70000"], {}, "expected PORT or HOST:PORT"),
            ([*run, "--http", "nowhere:x"], {}, "expected PORT or HOST:PORT"),
            ([*run, "--http", f"127.0.0.1:{port}"], {}, "cannot listen"),
            ([*run, "--http", "0"], {"SYNCWARD_ADMIN_TOKEN": "short"}, "too short"),
            ([*run, "--http", "0", "--admin-token-file", str(tmp_path / "nope")], {},
             "cannot read the token file"),
            ([*run, "--admin-token-file", str(tmp_path / "nope")], {}, "needs --http"),
            (["serve", "--http", "0"], {}, "does not exist"),
            (["serve", "--db", "memory://", "--http", "0"], {}, "lives inside one process"),
        ]
        for args, env, needle in cases:
            code, err = invoke(tmp_path, monkeypatch, *args, **env)
            lines = [ln for ln in err.splitlines() if ln.startswith("syncward: error")]
            assert code == 2 and len(lines) == 1 and needle in lines[0], (args, err)
            assert str(tmp_path / "nope") not in err
    assert not (tmp_path / "jobs.db").exists()


def test_binding_beyond_loopback_warns_that_there_is_no_tls() -> None:
    from syncward.web.serving import Bind, exposure_warning, parse_bind

    assert parse_bind("8080") == Bind("127.0.0.1", 8080)
    assert parse_bind("[::1]:81") == Bind("::1", 81)
    assert parse_bind("0.0.0.0:80") == Bind("0.0.0.0", 80)
    for host in ("127.0.0.1", "127.1.2.3", "::1", "localhost"):
        assert exposure_warning(Bind(host, 1)) is None
    for host in ("0.0.0.0", "192.0.2.7", "::", "example.internal"):
        warning = exposure_warning(Bind(host, 1))
        assert warning is not None and "no TLS" in warning


@pytest.mark.parametrize(("command", "needles"), [
    ("serve", ["--db", "--http", "--admin-token-file", "read-only", "SIGTERM"]),
    ("run", ["--http", "--admin-token-file", "SYNCWARD_ADMIN_TOKEN", "no TLS"]),
    ("status", ["Exits 1", "health check"]),
])
def test_help_names_the_options(command: str, needles: list[str]) -> None:
    result = CliRunner().invoke(cli, [command, "--help"], terminal_width=200)
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    for needle in needles:
        assert needle in text, needle
