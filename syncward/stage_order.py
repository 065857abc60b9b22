"""Declared stage order: ``@syncward.stages("HEAD", "DOWNLOADED", "VERIFIED")`` on a handler.

A handler that declares its stages has each ``ctx.stage(name)`` checked before anything
is sent to the syncer:

* an unknown name is refused;
* a name before the job's current stage is refused (a stage never goes back);
* the current stage again is allowed and does nothing (a resumed job may repeat the
  stage it resumes at), and skipping forward over stages is allowed.

A refused stage raises `StageError` and is not committed; left uncaught it fails the
job at once (see `syncward.actors.downloader`). A handler without a declaration keeps
free-text stages, as before.

The job's current stage is the stage it was leased with (``job.stage``, committed by an
earlier attempt), then each stage this attempt commits. A current stage that is not in
the declaration (committed before the handler declared one, or by an older version of
it) counts as the start: any declared stage may follow it.

Design note: the declaration is an attribute the decorator sets on the handler
(``__syncward_stages__``), read once per downloader, not per job: a handler may be any
callable (a function, a bound method, an object with ``__call__``), and an attribute is
the one thing they all carry. Rejected: a ``Runtime(stages=...)`` option, which would
separate a handler from the order its code follows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from syncward.errors import ConfigError, StageError

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["StageOrder", "declared_stages", "stages"]

F = TypeVar("F")

_ATTRIBUTE = "__syncward_stages__"


@dataclass(frozen=True, slots=True)
class StageOrder:
    """A handler's declared stages, first to last."""

    names: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.names:
            raise ConfigError("stages(): declare at least one stage")
        for name in self.names:
            if not isinstance(name, str) or not name:
                raise ConfigError(f"stages(): a stage is a non-empty string, got {name!r}")
        if len(set(self.names)) != len(self.names):
            dup = sorted({n for n in self.names if self.names.count(n) > 1})
            raise ConfigError(f"stages(): declared more than once: {', '.join(dup)}")

    def position(self, name: str | None) -> int:
        """Where ``name`` stands in the order: -1 for none or an undeclared one (the start)."""
        try:
            return self.names.index(name) if name is not None else -1
        except ValueError:
            return -1

    def check(self, name: str, current: str | None, *, job: str | None = None) -> bool:
        """Whether ``name`` is to be committed after ``current``: True to commit it,
        False for the current stage again (nothing to do).

        Raises:
            StageError: ``name`` is not declared, or comes before ``current``.
        """
        if name not in self.names:
            raise StageError(name, order=self.names, current=current, job=job)
        if name == current:
            return False
        if self.names.index(name) < self.position(current):
            raise StageError(name, order=self.names, current=current, job=job)
        return True


def stages(*names: str) -> Callable[[F], F]:
    """Declare a handler's stage order: ``@syncward.stages("HEAD", "DOWNLOADED")``.

    Returns a decorator that marks the handler (any callable) and returns it unchanged.
    Raises:
        ConfigError: no names, an empty or non-string name, or a name given twice.
    """
    order = StageOrder(tuple(names))

    def declare(handler: F) -> F:
        try:
            setattr(handler, _ATTRIBUTE, order)
        except (AttributeError, TypeError) as exc:
            raise ConfigError(f"stages(): cannot mark {handler!r} ({exc}); decorate the "
                              "function or class itself") from None
        return handler
    return declare


def declared_stages(handler: object) -> StageOrder | None:
    """The order ``handler`` declared with `stages`, or None (free stages)."""
    order = getattr(handler, _ATTRIBUTE, None)
    return order if isinstance(order, StageOrder) else None
