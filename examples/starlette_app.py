"""Embedding syncward in a web app: the runtime lives in the app's lifespan.

POST /jobs with a JSON list of identities submits them (the response comes after they are
committed); GET /stats shows the committed counts. Run it with:

    pip install starlette uvicorn
    uvicorn examples.starlette_app:app
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import syncward


async def handler(job: syncward.Job, ctx: syncward.Context) -> dict[str, Any]:
    """The work for one job: here, just echo the identity back as the result."""
    return {"done": dict(job.identity)}


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    store = os.environ.get("SYNCWARD_DB", "sqlite:///app-jobs.db")
    async with syncward.Runtime(handler, store=store, concurrency=16) as rt:
        app.state.runtime = rt
        yield


async def submit(request: Request) -> JSONResponse:
    identities = await request.json()
    if not isinstance(identities, list):
        return JSONResponse({"error": "expected a JSON list of identities"}, status_code=400)
    try:
        result = await request.app.state.runtime.submit(identities)
    except syncward.InvalidJob as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    return JSONResponse({"new": result.new, "duplicates": result.duplicates})


async def stats(request: Request) -> JSONResponse:
    return JSONResponse(request.app.state.runtime.stats().as_dict())


app = Starlette(routes=[Route("/jobs", submit, methods=["POST"]), Route("/stats", stats)],
                lifespan=lifespan)
