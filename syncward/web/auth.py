"""Admin routes' guard: ``Authorization: Bearer <token>``, compared in constant time.

With no token configured every admin route answers 403 with a one-line reason that
names how to configure one; a missing or wrong token answers 401 (with
``WWW-Authenticate: Bearer``). The comparison is `hmac.compare_digest` over bytes, so its
time does not depend on where the given token first differs. Nothing here logs, and no
answer repeats what was sent.
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING

from syncward.web.config import ADMIN_TOKEN_ENV
from syncward.web.responses import error

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

__all__ = ["AdminGuard", "NOT_CONFIGURED"]

NOT_CONFIGURED = (f"admin routes are disabled: no admin token is configured (set "
                  f"{ADMIN_TOKEN_ENV} or pass --admin-token-file PATH; embedded: "
                  "create_app(..., admin_token=...))")
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="syncward"'}


class AdminGuard:
    """Decides whether a request may use an admin route."""

    def __init__(self, token: str | None) -> None:
        self._token = token.encode("ascii") if token is not None else None

    @property
    def configured(self) -> bool:
        return self._token is not None

    def refuse(self, request: Request) -> Response | None:
        """The response refusing ``request``, or None when it carries the right token."""
        if self._token is None:
            return error(403, NOT_CONFIGURED)
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return error(401, "admin route: send the header Authorization: Bearer <token>",
                         headers=_CHALLENGE)
        candidate = given.strip().encode("latin-1", errors="replace")
        if not hmac.compare_digest(candidate, self._token):
            return error(401, "admin route: the token is not the admin token",
                         headers=_CHALLENGE)
        return None
