"""The web app's configuration, and where its admin token comes from.

`WebConfig` is a frozen value passed to `syncward.web.create_app`. The admin token has no
default: without one every admin route answers 403 (read-only routes keep working). The
command line takes it from ``$SYNCWARD_ADMIN_TOKEN`` or ``--admin-token-file PATH``
through `load_admin_token`, the only code that reads either; an embedding application
passes ``admin_token=`` itself.

The token never appears in a ``repr``, a log line, an error or the metrics: `WebConfig`
hides it from its ``repr``, and errors about a token name where it came from, never what
it is or, for a file, its path.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from syncward.errors import ConfigError
from syncward.health import HealthPolicy

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

__all__ = ["ADMIN_TOKEN_ENV", "MIN_TOKEN_LENGTH", "WebConfig", "check_token",
           "load_admin_token"]

ADMIN_TOKEN_ENV = "SYNCWARD_ADMIN_TOKEN"
MIN_TOKEN_LENGTH = 16
_HINT = "e.g. python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"


@dataclass(frozen=True, slots=True, kw_only=True)
class WebConfig:
    """How the app behaves. ``admin_token`` None: admin routes are disabled (403).

    ``max_body``: bytes a request body may have (413 beyond). ``page_limit`` and
    ``max_page``: the default and largest ``limit`` of a job listing. ``cache_seconds``:
    how long a store read is reused across requests (many dashboards, one store).
    ``poll_ms``: how often the dashboard asks for news.
    """

    admin_token: str | None = field(default=None, repr=False)
    max_body: int = 256 * 1024
    page_limit: int = 100
    max_page: int = 1000
    cache_seconds: float = 0.5
    poll_ms: int = 1000
    health: HealthPolicy = field(default_factory=HealthPolicy)

    def __post_init__(self) -> None:
        if self.admin_token is not None:
            check_token(self.admin_token, "admin_token")
        if self.max_body < 1 or not 1 <= self.page_limit <= self.max_page:
            raise ConfigError("WebConfig: max_body >= 1 and 1 <= page_limit <= max_page")


def check_token(token: str, where: str) -> str:
    """``token`` when it can be used as a bearer token: visible ASCII, long enough.

    Raises:
        ConfigError: naming ``where`` (never the token).
    """
    if not token:
        raise ConfigError(f"{where}: the admin token is empty")
    if not all(0x21 <= ord(c) <= 0x7E for c in token):
        raise ConfigError(f"{where}: the admin token must be visible ASCII characters "
                          "(no spaces or control characters)")
    if len(token) < MIN_TOKEN_LENGTH:
        raise ConfigError(f"{where}: the admin token is too short (at least "
                          f"{MIN_TOKEN_LENGTH} characters; {_HINT})")
    return token


def load_admin_token(*, env: Mapping[str, str], file: Path | None) -> tuple[str | None,
                                                                             list[str]]:
    """The admin token from ``env[ADMIN_TOKEN_ENV]`` or ``file``, and warnings to show.

    None when neither is set. Surrounding whitespace (a file's final newline) is dropped.
    Raises:
        ConfigError: both are set, the file cannot be read, or the token is unusable.
    """
    from_env = env.get(ADMIN_TOKEN_ENV)
    if from_env is not None and file is not None:
        raise ConfigError(f"the admin token is given twice: set {ADMIN_TOKEN_ENV} or pass "
                          "--admin-token-file, not both")
    if file is None:
        if from_env is None:
            return None, []
        return check_token(from_env.strip(), ADMIN_TOKEN_ENV), []
    try:
        mode = file.stat().st_mode
        text = file.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not ASCII text"
        raise ConfigError(f"--admin-token-file: cannot read the token file: {why}") from None
    warnings = []
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        warnings.append("--admin-token-file: the token file can be read by other users "
                        "(chmod 600 it)")
    return check_token(text.strip(), "--admin-token-file"), warnings
