"""A private PostgreSQL server for the tests that must stop, start or reconfigure one.

`PgInstance.create()` runs ``initdb`` in a fresh directory, picks a spare loopback port
and starts ``postgres`` on it (listening on 127.0.0.1 only, its socket in its own
directory); `stop`, `start` and `restart` act on it with ``pg_ctl``, waiting until the
server is down or accepts connections; `destroy` stops it at once and removes its
directory. The ``pg_instance`` fixture of ``test_postgres_faults.py`` owns one.

Authentication (``pg_hba.conf``): the superuser ``postgres`` logs in without a password
(over the socket and over 127.0.0.1), every other role over 127.0.0.1 with
``scram-sha-256``, so a test can log in with a wrong password and be refused.

Binaries: in ``SYNCWARD_TEST_PG_BIN`` if set (only there), else in the newest
``/usr/lib/postgresql/*/bin``, else beside ``initdb`` on ``PATH``. ``initdb`` refuses to
run as root: as root, the cluster is made and run by the ``postgres`` OS user
(``runuser``), in a directory it owns.
Missing binaries (or, as root, a missing ``postgres`` user or ``runuser``) skip the test
with the reason, except under ``CI=true``, where they fail it.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

__all__ = ["PgInstance", "find_bindir", "spare_port", "unavailable"]

_OS_USER = "postgres"
_SETTINGS = (
    "listen_addresses = '127.0.0.1'\n"
    "fsync = off\n"  # a clean shutdown still checkpoints: nothing is lost across restarts
    "max_connections = 50\n"
    "shared_buffers = 16MB\n"
)
_HBA = (
    "local all all trust\n"
    "host all postgres 127.0.0.1/32 trust\n"
    "host all all 127.0.0.1/32 scram-sha-256\n"
)


def unavailable(reason: str) -> NoReturn:
    """Skip with ``reason``; under CI=true, fail instead (CI must run every test)."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"required under CI=true: {reason}")
    pytest.skip(reason)


def spare_port() -> int:
    """A loopback port nothing listened on a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def find_bindir() -> Path | None:
    """Where ``initdb``, ``pg_ctl`` and ``postgres`` are, or None."""
    given = os.environ.get("SYNCWARD_TEST_PG_BIN")
    if given:  # only where the environment says
        return Path(given) if _complete(Path(given)) else None
    candidates = []
    root = Path("/usr/lib/postgresql")
    if root.is_dir():
        versions = [p for p in root.iterdir() if p.name.isdigit()]
        candidates += [p / "bin" for p in sorted(versions, key=lambda p: -int(p.name))]
    found = shutil.which("initdb")
    if found:
        candidates.append(Path(found).parent)
    return next((bindir for bindir in candidates if _complete(bindir)), None)


def _complete(bindir: Path) -> bool:
    return all((bindir / name).is_file() for name in ("initdb", "pg_ctl", "postgres"))


@dataclass
class PgInstance:
    """One private cluster: ``base`` holds ``data/``, ``server.log`` and the socket."""

    bindir: Path
    base: Path
    port: int
    as_user: str | None  # the OS user that runs it (None: this process's own)

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def log(self) -> Path:
        return self.base / "server.log"

    def url(self, user: str = "postgres", password: str | None = None,
            database: str = "postgres", **query: str) -> str:
        login = user if password is None else f"{user}:{password}"
        tail = "&".join(f"{k}={v}" for k, v in query.items())
        return (f"postgresql://{login}@127.0.0.1:{self.port}/{database}"
                + (f"?{tail}" if tail else ""))

    @classmethod
    def create(cls) -> PgInstance:
        """A new cluster, started. Skips (fails under CI=true) when it cannot be made."""
        bindir = find_bindir()
        if bindir is None:
            where = os.environ.get("SYNCWARD_TEST_PG_BIN") or "/usr/lib/postgresql/*/bin or PATH"
            unavailable(f"PostgreSQL server binaries (initdb, pg_ctl, postgres) not found in "
                        f"{where}; set SYNCWARD_TEST_PG_BIN to their directory")
        as_user = None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam(_OS_USER)
            except KeyError:
                unavailable(f"running as root and there is no {_OS_USER!r} OS user for "
                            "initdb (which refuses root)")
            if shutil.which("runuser") is None:
                unavailable("running as root and runuser(1) is not available for initdb")
            as_user = _OS_USER
        base = Path(tempfile.mkdtemp(prefix="syncward-pg-"))
        instance = cls(bindir=bindir, base=base, port=0, as_user=as_user)
        try:
            if as_user is not None:
                entry = pwd.getpwnam(as_user)
                os.chown(base, entry.pw_uid, entry.pw_gid)
            instance._initdb()
            instance._start_on_a_spare_port()
        except BaseException:
            instance.destroy()
            raise
        return instance

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self.as_user is not None:
            command = ["runuser", "-u", self.as_user, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              check=False, cwd=self.base)

    def _initdb(self) -> None:
        done = self._run("initdb", "-D", str(self.data), "-U", "postgres", "-E", "UTF8",
                         "--locale=C", "--no-sync", "--auth=trust")
        if done.returncode != 0:
            pytest.fail(f"initdb failed ({done.returncode}): {done.stderr.strip()}")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(_SETTINGS + f"unix_socket_directories = '{self.base}'\n")
        (self.data / "pg_hba.conf").write_text(_HBA)

    def _start_on_a_spare_port(self, attempts: int = 5) -> None:
        for _ in range(attempts):
            self.port = spare_port()
            with open(self.data / "postgresql.auto.conf", "w") as conf:
                conf.write(f"port = {self.port}\n")
            if self._pg_ctl_start().returncode == 0:
                return
        pytest.fail(f"could not start PostgreSQL in {attempts} attempts; "
                    f"its log:\n{self.log.read_text(errors='replace')[-3000:]}")

    def _pg_ctl_start(self) -> subprocess.CompletedProcess[str]:
        return self._run("pg_ctl", "start", "-D", str(self.data), "-l", str(self.log),
                         "-w", "-t", "30")

    def start(self) -> None:
        """Start the stopped server; returns once it accepts connections."""
        done = self._pg_ctl_start()
        if done.returncode != 0:
            pytest.fail(f"pg_ctl start failed: {done.stdout}{done.stderr}; log:\n"
                        f"{self.log.read_text(errors='replace')[-3000:]}")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: connections are ended, a checkpoint is written);
        returns once it is down."""
        done = self._run("pg_ctl", "stop", "-D", str(self.data), "-m", mode, "-w", "-t", "30")
        if done.returncode != 0:
            pytest.fail(f"pg_ctl stop failed: {done.stdout}{done.stderr}")

    def running(self) -> bool:
        return self._run("pg_ctl", "status", "-D", str(self.data)).returncode == 0

    def ensure_running(self) -> None:
        if not self.running():
            self.start()

    def destroy(self) -> None:
        """Stop at once (if running) and remove every file. Idempotent."""
        if self.data.is_dir():
            with contextlib.suppress(Exception):
                self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate", "-w",
                          timeout=30)
        shutil.rmtree(self.base, ignore_errors=True)
