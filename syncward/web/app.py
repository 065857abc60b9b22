"""`create_app`: the ASGI application over a live runtime, or over a store alone.

```python
app = create_app(runtime, admin_token=token)        # inside `async with Runtime(...)`
app = create_app("sqlite:///jobs.db")                # a read-only watcher
outer = Starlette(routes=[Mount("/ops", app=app)])   # mounted in your own app
```

The app is a `Starlette` (`OpsApp`). Over a runtime it attaches its metrics as the
runtime's observer (detached by `OpsApp.aclose`, which its lifespan calls). Over a store
URL it opens the store read-only on first use and closes it in `OpsApp.aclose`: call
that yourself when you mount the app, since a mounted app gets no lifespan events.

Every response carries headers that keep a browser from sniffing, framing or caching
it, and a content security policy that allows the dashboard's own files only (the
dashboard loads nothing from anywhere else and has no inline script).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from syncward.runtime import Runtime
from syncward.web.auth import AdminGuard
from syncward.web.config import WebConfig
from syncward.web.live import LiveView
from syncward.web.metrics import Metrics
from syncward.web.responses import error
from syncward.web.routes import Api
from syncward.web.watch import StoreView

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from syncward.store.base import StoreReader
    from syncward.web.views import OpsView

__all__ = ["OpsApp", "create_app"]

_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "content-security-policy": "default-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
}


class OpsApp(Starlette):
    """The app `create_app` makes: a `Starlette` that knows how to close what it holds."""

    ops: Api
    _detach: Callable[[], None] | None

    async def aclose(self) -> None:
        """Detach from the runtime, close a store this app opened. Idempotent."""
        detach, self._detach = self._detach, None
        if detach is not None:
            detach()
        await self.ops.view.aclose()


def create_app(target: Runtime | str | StoreReader, *, admin_token: str | None = None,
               config: WebConfig | None = None) -> OpsApp:
    """The operations app over a running ``Runtime``, or over a store (URL or reader).

    ``admin_token`` (or ``config.admin_token``) enables the admin routes; without one
    they answer 403. Over a store, admin actions answer 409 (a watcher cannot act).
    Raises:
        ConfigError: an unusable token or config.
    """
    if config is None:
        config = WebConfig(admin_token=admin_token)
    elif admin_token is not None:
        raise ValueError("give the admin token in admin_token= or in config, not both")
    view: OpsView
    if isinstance(target, Runtime):
        view = LiveView(target, cache_seconds=config.cache_seconds)
    else:
        view = StoreView(target, cache_seconds=config.cache_seconds, policy=config.health)
    metrics = Metrics(view, observed=isinstance(target, Runtime))
    api = Api(view=view, config=config, guard=AdminGuard(config.admin_token),
              metrics=metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await ops.aclose()

    ops = OpsApp(routes=_routes(api), lifespan=lifespan,
                 exception_handlers={HTTPException: _http_error})
    ops.ops = api
    ops._detach = target.add_observer(metrics) if isinstance(target, Runtime) else None
    ops.add_middleware(_SecurityHeaders)
    return ops


def _routes(api: Api) -> list[Route | Mount]:
    return [
        Route("/", api.dashboard, methods=["GET"]),
        Route("/health", api.health, methods=["GET"]),
        Route("/metrics", api.metrics_text, methods=["GET"]),
        Route("/api/overview", api.overview, methods=["GET"]),
        Route("/api/jobs", api.jobs, methods=["GET"]),
        Route("/api/jobs/retry", api.retry, methods=["POST"]),
        Route("/api/jobs/cancel", api.cancel, methods=["POST"]),
        Route("/api/jobs/{key}", api.job, methods=["GET"]),
        Route("/api/workers", api.workers, methods=["GET"]),
        Route("/api/reconciliation", api.reconciliation, methods=["GET"]),
        Route("/api/reconciliation", api.reconcile, methods=["POST"]),
        Route("/api/stats/refresh", api.refresh_stats, methods=["POST"]),
        Route("/api/pause", api.pause, methods=["POST"]),
        Route("/api/resume", api.resume, methods=["POST"]),
        Mount("/static", StaticFiles(packages=[("syncward.web", "static")]), name="static"),
    ]


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    messages = {404: "no such route", 405: "method not allowed on this route"}
    response = error(exc.status_code, messages.get(exc.status_code, str(exc.detail)))
    if exc.headers:
        response.headers.update(exc.headers)
    return response


class _SecurityHeaders:
    """Adds `_HEADERS`, and ``Cache-Control: no-store`` where nothing else was said."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in _HEADERS.items():
                    headers.setdefault(name, value)
                headers.setdefault("cache-control", "no-store")
            await send(message)

        await self.app(scope, receive, send_with_headers)
