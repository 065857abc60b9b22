"""The routes: health, metrics, the read API, the admin API and the dashboard's page.

Read routes (no token): ``GET /health`` (200 healthy, 503 not, with the reasons),
``GET /metrics``, ``GET /api/jobs?state=&limit=&after=`` (keyset paging by id),
``GET /api/jobs/{key}``, ``GET /api/workers``, ``GET /api/reconciliation`` and
``GET /api/overview`` (everything the dashboard shows, in one answer).

Admin routes (``POST``, ``Authorization: Bearer <token>``, see `syncward.web.auth`):
``/api/stats/refresh``, ``/api/reconciliation?dry_run=1``, ``/api/jobs/retry`` (body
``{"keys": [...]}`` or ``{"all": true}``), ``/api/jobs/cancel`` (body ``{"keys": [...]}``,
``{"state": "planned"}`` or ``"leased"``, or both: those keys in that state),
``/api/pause``, ``/api/resume``. The token is checked before the body is read.

Every handler runs inside `_answer`, which turns the errors routes raise into JSON: 400
for bad input, 404, 409 (a watcher cannot act), 413, 503 while the runtime stops or the
store does not answer, and 500 (logged, with no detail in the answer) for a bug.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

from starlette.responses import Response

from syncward.errors import InvalidJob, MailboxClosed, StoreError
from syncward.web.metrics import CONTENT_TYPE
from syncward.web.responses import (
    ApiError,
    Json,
    error,
    job_key_param,
    parse_flag,
    parse_int,
    parse_state,
    read_json,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from starlette.requests import Request

    from syncward.web.auth import AdminGuard
    from syncward.web.config import WebConfig
    from syncward.web.metrics import Metrics
    from syncward.web.views import OpsView

__all__ = ["Api"]

log = logging.getLogger("syncward.web")
_MAX_KEYS = 10_000
_MAX_ID = 2**63 - 1


def _answer(handler: Callable[[Api, Request], Awaitable[Response]]
            ) -> Callable[[Api, Request], Awaitable[Response]]:
    @functools.wraps(handler)
    async def wrapper(self: Api, request: Request) -> Response:
        try:
            return await handler(self, request)
        except ApiError as exc:
            return error(exc.status, exc.message)
        except InvalidJob as exc:
            return error(400, str(exc))
        except MailboxClosed:
            return error(503, "the runtime is stopping")
        except StoreError as exc:
            return error(503, f"store unavailable: {exc}")
        except Exception:
            log.exception("%s %s failed", request.method, request.url.path)
            return error(500, "internal error (see the server's log)")
    return wrapper


@dataclass
class Api:
    """The app's endpoints, over one view (see the module docstring)."""

    view: OpsView
    config: WebConfig
    guard: AdminGuard
    metrics: Metrics

    # --- read routes -----------------------------------------------------------------

    @_answer
    async def health(self, request: Request) -> Response:
        health = await self.view.health()
        return Json(health.as_dict(), status_code=200 if health.ok else 503)

    @_answer
    async def metrics_text(self, request: Request) -> Response:
        return Response(await self.metrics.render(), media_type=CONTENT_TYPE)

    @_answer
    async def jobs(self, request: Request) -> Response:
        q = request.query_params
        state = parse_state(q.get("state"))
        limit = parse_int(q.get("limit"), "limit", default=self.config.page_limit, low=1,
                          high=self.config.max_page)
        after = parse_int(q.get("after"), "after", default=None, low=0, high=_MAX_ID)
        assert limit is not None
        return Json((await self.view.jobs(state, limit, after)).as_dict())

    @_answer
    async def job(self, request: Request) -> Response:
        key = job_key_param(request.path_params["key"])
        found = await self.view.job(key)
        if found is None:
            raise ApiError(404, "no job with this key")
        return Json(found)

    @_answer
    async def workers(self, request: Request) -> Response:
        now = time.time()
        return Json({"workers": [w.as_dict(now) for w in await self.view.workers()]})

    @_answer
    async def reconciliation(self, request: Request) -> Response:
        return Json(await self.view.reconciliation())

    @_answer
    async def overview(self, request: Request) -> Response:
        return Json({**await self.view.overview(), "poll_ms": self.config.poll_ms,
                     "admin": {"configured": self.guard.configured,
                               "writable": self.view.writable}})

    async def dashboard(self, request: Request) -> Response:
        return Response(_page(), media_type="text/html; charset=utf-8")

    # --- admin routes ----------------------------------------------------------------

    @_answer
    async def refresh_stats(self, request: Request) -> Response:
        return self.guard.refuse(request) or Json(await self.view.refresh_stats())

    @_answer
    async def reconcile(self, request: Request) -> Response:
        refused = self.guard.refuse(request)
        if refused is not None:
            return refused
        dry_run = parse_flag(request.query_params.get("dry_run"), "dry_run")
        return Json(await self.view.reconcile(dry_run=dry_run))

    @_answer
    async def retry(self, request: Request) -> Response:
        refused = self.guard.refuse(request)
        if refused is not None:
            return refused
        keys = _retry_keys(await read_json(request, limit=self.config.max_body))
        return Json(await self.view.retry(keys))

    @_answer
    async def cancel(self, request: Request) -> Response:
        refused = self.guard.refuse(request)
        if refused is not None:
            return refused
        keys, state = _cancel_body(await read_json(request, limit=self.config.max_body))
        return Json(await self.view.cancel(keys, state))

    @_answer
    async def pause(self, request: Request) -> Response:
        return self.guard.refuse(request) or Json(await self.view.pause(True))

    @_answer
    async def resume(self, request: Request) -> Response:
        return self.guard.refuse(request) or Json(await self.view.pause(False))


def _retry_keys(body: Any) -> list[str] | None:
    """``{"keys": [...]}``: those keys; ``{"all": true}``: None (every failed job).

    Raises:
        ApiError: 400 for any other body.
    """
    usage = 'body: expected {"keys": ["<job key>", ...]} or {"all": true}'
    if not isinstance(body, dict) or set(body) - {"keys", "all"} or len(body) != 1:
        raise ApiError(400, usage)
    if "all" in body:
        if body["all"] is not True:
            raise ApiError(400, usage)
        return None
    keys = body["keys"]
    if not isinstance(keys, list) or not keys or len(keys) > _MAX_KEYS:
        raise ApiError(400, f"keys: expected a list of 1 to {_MAX_KEYS} job keys")
    return [job_key_param(k) for k in keys]


def _cancel_body(body: Any) -> tuple[list[str] | None, str | None]:
    """``{"keys": [...]}``, ``{"state": "planned" | "leased"}``, or both.

    Raises:
        ApiError: 400 for any other body.
    """
    usage = ('body: expected {"keys": ["<job key>", ...]} and/or '
             '{"state": "planned" | "leased"}')
    if not isinstance(body, dict) or not body or set(body) - {"keys", "state"}:
        raise ApiError(400, usage)
    state = body.get("state")
    if state is not None and state not in ("planned", "leased"):
        raise ApiError(400, 'state: expected "planned" or "leased"')
    keys = body.get("keys")
    if keys is not None and (not isinstance(keys, list) or not keys
                             or len(keys) > _MAX_KEYS):
        raise ApiError(400, f"keys: expected a list of 1 to {_MAX_KEYS} job keys")
    if keys is None and state is None:
        raise ApiError(400, usage)
    return (None if keys is None else [job_key_param(k) for k in keys]), state


@functools.cache
def _page() -> bytes:
    return resources.files("syncward.web").joinpath("static", "index.html").read_bytes()
