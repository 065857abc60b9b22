"""What every command of the command line shares: exit codes, errors, handlers, the loop.

Exit codes (documented in ``syncward --help``)::

    0  every manifest entry succeeded or was skipped (or: the command did what it was asked)
    1  some entries failed or were rejected (or: the runtime stopped on an error)
    2  usage or configuration error; nothing was done
    3  interrupted before finishing (a signal, or the store's disk is full, read-only or
       its file was removed: the line says which); run the same command again to resume

Design note: errors become one line on stderr (``syncward: error: ...``) and an exit code,
never a traceback; ``SYNCWARD_DEBUG=1`` (read here, at the entry point only) re-raises so
a developer sees the traceback. Errors that surface from inside task groups arrive as
exception groups; a group holding one error is unwrapped before it is described.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import importlib
import importlib.util
import inspect
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, ParamSpec, TypeVar

import anyio
import click

from syncward.errors import (
    ConfigError,
    StoreError,
    StoreFailing,
    SupervisorGaveUp,
    SyncwardError,
)
from syncward.store import check_url

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from syncward.actors.downloader import Handler
    from syncward.runtime import Runtime

__all__ = [
    "DEFAULT_DB",
    "ExitCode",
    "RunAborted",
    "check_db_dir",
    "fail",
    "guard",
    "load_handler",
    "require_store_file",
    "run_async",
]

T = TypeVar("T")
P = ParamSpec("P")

DEFAULT_DB = "sqlite:///syncward.db"


class ExitCode(enum.IntEnum):
    OK = 0
    FAILED = 1
    USAGE = 2
    INTERRUPTED = 3


class RunAborted(SyncwardError):
    """The runtime stopped on an error after work had started (exit 1, resumable)."""

    def __init__(self, cause: BaseException) -> None:
        self.cause = cause
        super().__init__(f"the run stopped on an error: {describe(cause)}; "
                         "run the same command again to resume")


def fail(message: str, code: ExitCode = ExitCode.USAGE) -> NoReturn:
    """Print ``syncward: error: message`` on stderr and exit with ``code``."""
    click.echo(f"syncward: error: {message}", err=True)
    sys.exit(int(code))


def leaf(exc: BaseException) -> BaseException:
    """The one error inside (nested) single-member exception groups, or ``exc`` itself."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def describe(exc: BaseException) -> str:
    exc = leaf(exc)
    if isinstance(exc, SyncwardError):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        where = f" {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _exit_code(exc: BaseException) -> ExitCode:
    exc = leaf(exc)
    if isinstance(exc, StoreFailing) or isinstance(exc.__cause__, StoreFailing):
        return ExitCode.INTERRUPTED  # the store's disk filled, ...: mend it and run again
    if isinstance(exc, RunAborted | SupervisorGaveUp):
        return ExitCode.FAILED
    if isinstance(exc, ConfigError | StoreError | OSError):
        return ExitCode.USAGE
    return ExitCode.FAILED


def guard(fn: Callable[P, T]) -> Callable[P, T]:
    """Turn errors raised by a command into one line on stderr and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return fn(*args, **kwargs)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except KeyboardInterrupt:
            fail("interrupted", ExitCode.INTERRUPTED)
        except Exception as exc:
            if os.environ.get("SYNCWARD_DEBUG"):
                raise
            fail(describe(exc), _exit_code(exc))

    return wrapper


def run_async(fn: Callable[..., Awaitable[T]], *args: Any, loop: str = "auto") -> T:
    """Run ``fn(*args)`` in a new event loop: asyncio, on uvloop when asked or available.

    The command line is the only place in syncward that chooses the loop.
    Raises:
        ConfigError: ``loop`` is "uvloop" and uvloop cannot be imported.
    """
    use_uvloop = False
    if loop in ("auto", "uvloop"):
        available = importlib.util.find_spec("uvloop") is not None
        if loop == "uvloop" and not available:
            raise ConfigError("--loop uvloop: uvloop is not installed")
        use_uvloop = available
    return anyio.run(fn, *args, backend="asyncio",
                     backend_options={"use_uvloop": use_uvloop})


def check_db_dir(url: str) -> str:
    """The store's name for messages, once its directory (if it has one) is known to exist.

    Raises:
        ConfigError: a bad URL, or a directory that does not exist.
    """
    return check_url(url, must_exist=False)


def require_store_file(url: str) -> str:
    """The store's name, once the store is known to exist (for commands that never create one).

    Raises:
        ConfigError: a bad URL, or no such store.
    """
    return check_url(url, must_exist=True)


# --- handlers ----------------------------------------------------------------------------


def load_handler(target: str) -> Handler:
    """The async function named by ``package.module:function`` or ``path/file.py:function``.

    Raises:
        ConfigError: a malformed target, a module or file that cannot be imported, a
            missing attribute, or an attribute that is not an async function.
    """
    where, sep, attr = target.rpartition(":")
    if not sep or not where or not attr:
        raise ConfigError(f"handler {target!r}: expected package.module:function or "
                          "path/to/file.py:function")
    if where.endswith(".py") or "/" in where or os.sep in where:
        module = _load_file(Path(where))
    else:
        module = _import_module(where)
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"handler {target!r}: {where} has no attribute {attr!r}") from None
    if not callable(obj):
        raise ConfigError(f"handler {target!r} is not callable")
    if not (inspect.iscoroutinefunction(obj)
            or inspect.iscoroutinefunction(type(obj).__call__)):
        raise ConfigError(f"handler {target!r} must be an async function: "
                          "async def handler(job, ctx)")
    handler: Handler = obj
    return handler


def _import_module(name: str) -> Any:
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)  # like `python -m`: modules of the current directory
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            raise ConfigError(f"handler module {name!r} not found") from None
        raise ConfigError(f"importing handler module {name!r} failed: {exc}") from None
    except Exception as exc:
        raise ConfigError(f"importing handler module {name!r} failed: "
                          f"{type(exc).__name__}: {exc}") from None


def _load_file(path: Path) -> Any:
    if not path.is_file():
        raise ConfigError(f"handler file {path} does not exist")
    resolved = path.resolve()
    name = f"_syncward_handler_{hashlib.sha256(str(resolved).encode()).hexdigest()[:12]}"
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise ConfigError(f"handler file {path} cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    if str(resolved.parent) not in sys.path:
        sys.path.append(str(resolved.parent))  # so the file can import its neighbours
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise ConfigError(f"loading handler file {path} failed: "
                          f"{type(exc).__name__}: {exc}") from None
    return module


@dataclass
class Interrupt:
    """SIGINT/SIGTERM for long-running commands: the first signal cancels ``body`` (a
    drained stop: in-flight jobs get the grace period), the second kills the runtime."""

    stopping: str = "in-flight jobs get a grace period to finish"
    count: int = 0
    runtime: Runtime | None = None
    body: anyio.CancelScope | None = None

    def attach(self, runtime: Runtime, body: anyio.CancelScope) -> None:
        self.runtime, self.body = runtime, body
        self._act()

    @property
    def killed(self) -> bool:
        return self.count >= 2

    async def watch(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                    ) -> None:
        """Receive signals until cancelled; call with ``task_group.start``."""
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            task_status.started()
            async for signum in signals:
                self.count += 1
                name = signal.Signals(signum).name
                if self.count == 1:
                    click.echo(f"syncward: {name}: stopping; {self.stopping} (send it again "
                               "to stop at once)", err=True)
                elif self.count == 2:
                    click.echo(f"syncward: {name} again: stopping now", err=True)
                self._act()

    def _act(self) -> None:
        if self.count and self.body is not None:
            self.body.cancel()
        if self.killed and self.runtime is not None:
            self.runtime.kill()
