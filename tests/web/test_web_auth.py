"""The admin routes' guard, and where the token comes from.

No token configured: 403 on every admin route, with a reason naming how to configure
one, while the read routes keep working. A missing or wrong token: 401. The right one:
200. The comparison is `hmac.compare_digest`. The token never appears in a log line, an
error, ``/metrics`` or a ``repr``.
"""

from __future__ import annotations

import hmac
import logging
import os
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from web_helpers import ADMIN_ROUTES, AUTH, QUICK, TOKEN, client, identities, mixed

from syncward import Runtime
from syncward.errors import ConfigError
from syncward.web import ADMIN_TOKEN_ENV, WebConfig, create_app, load_admin_token

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    import httpx

READS = ["/health", "/metrics", "/api/jobs", "/api/workers", "/api/reconciliation",
         "/api/overview", "/"]


async def post(c: httpx.AsyncClient, route: str, body: Any,
               headers: dict[str, Any] | None = None) -> httpx.Response:
    return await c.post(route, json=body, headers=headers or {})


@asynccontextmanager
async def running(token: str | None) -> AsyncIterator[httpx.AsyncClient]:
    async with Runtime(mixed, store="memory://", syncer=QUICK) as rt:
        await rt.submit(identities())
        await rt.join()
        app = create_app(rt, admin_token=token)
        async with client(app) as c:
            yield c
        await app.aclose()


async def test_no_token_configured_every_admin_route_answers_403() -> None:
    with anyio.fail_after(10):
        async with running(None) as c:
            for route, body in ADMIN_ROUTES:
                for headers in ({}, AUTH):
                    refused = await post(c, route, body, headers)
                    assert refused.status_code == 403, route
                    message = refused.json()["error"]
                    assert ADMIN_TOKEN_ENV in message and "--admin-token-file" in message
                    assert "\n" not in message
            for route in READS:
                assert (await c.get(route)).status_code == 200, route
            overview = (await c.get("/api/overview")).json()
            assert overview["admin"] == {"configured": False, "writable": True}


@pytest.mark.parametrize(("route", "body"), ADMIN_ROUTES)
async def test_a_missing_or_wrong_token_is_401_the_right_one_200(route: str, body: Any) -> None:
    wrong: list[dict[str, Any]] = [{}, {"Authorization": "Bearer"}, {"Authorization": "Bearer "},
             {"Authorization": f"Basic {TOKEN}"}, {"Authorization": TOKEN},
             {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": f"Bearer {TOKEN[:-1]}"},
             {"Authorization": "Bearer " + "x" * len(TOKEN)},
             {"Authorization": ("Bearer \u00e9" + TOKEN[1:]).encode("latin-1")}]
    with anyio.fail_after(10):
        async with running(TOKEN) as c:
            for headers in wrong:
                refused = await post(c, route, body, headers)
                assert refused.status_code == 401, headers
                assert refused.headers["www-authenticate"].startswith("Bearer")
                assert TOKEN not in refused.text
            for scheme in ("Bearer", "bearer", "BEARER"):
                accepted = await post(c, route, body, {"Authorization": f"{scheme} {TOKEN}"})
                assert accepted.status_code == 200, accepted.text


async def test_the_token_is_compared_with_hmac_compare_digest(
        monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    with anyio.fail_after(10):
        async with running(TOKEN) as c:
            assert (await post(c, "/api/pause", None, {"Authorization": "Bearer nope"})
                    ).status_code == 401
            assert (await post(c, "/api/pause", None, AUTH)).status_code == 200
    assert seen == [(b"nope", TOKEN.encode()), (TOKEN.encode(), TOKEN.encode())]


async def test_the_token_never_appears_in_logs_errors_or_metrics(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    with anyio.fail_after(10):
        async with running(TOKEN) as c:
            for route, body in ADMIN_ROUTES:
                for headers in (AUTH, {"Authorization": f"Bearer {TOKEN}-wrong"}):
                    texts.append((await post(c, route, body, headers)).text)
            texts.extend([(await c.get(route)).text for route in READS])
            texts.append((await c.post("/api/jobs/retry", content=TOKEN.encode(),
                                       headers=AUTH)).text)  # a bad body is not echoed
    texts.append(caplog.text)
    texts.append(repr(WebConfig(admin_token=TOKEN)))
    for text in texts:
        assert TOKEN not in text


async def test_request_bodies_are_size_limited() -> None:
    big = b'{"all": true, "padding": "' + b"x" * 300_000 + b'"}'  # 256 KiB is the limit

    async def streamed() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
        for _ in range(100):
            yield b" " * 10_000

    with anyio.fail_after(10):
        async with running(TOKEN) as c:
            limited = await c.post("/api/jobs/retry", content=big, headers=AUTH)
            assert limited.status_code == 413
            chunked = await c.post("/api/jobs/retry", content=streamed(), headers=AUTH)
            assert chunked.status_code == 413
            assert "larger than" in chunked.json()["error"]


def test_the_token_comes_from_the_environment_or_a_file(tmp_path: Path) -> None:
    assert load_admin_token(env={}, file=None) == (None, [])
    assert load_admin_token(env={ADMIN_TOKEN_ENV: f" {TOKEN}\n"}, file=None) == (TOKEN, [])
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    os.chmod(path, 0o600)
    assert load_admin_token(env={}, file=path) == (TOKEN, [])
    os.chmod(path, 0o644)
    token, warnings = load_admin_token(env={}, file=path)
    assert token == TOKEN and "chmod 600" in warnings[0]
    refusals = [
        ({ADMIN_TOKEN_ENV: TOKEN}, path, "not both"),
        ({ADMIN_TOKEN_ENV: "short-token"}, None, "too short"),
        ({ADMIN_TOKEN_ENV: "   "}, None, "empty"),
        ({ADMIN_TOKEN_ENV: TOKEN + " with spaces"}, None, "visible ASCII"),
        ({}, tmp_path / "absent", "cannot read the token file"),
    ]
    for env, file, needle in refusals:
        with pytest.raises(ConfigError) as info:
            load_admin_token(env=env, file=file)
        assert needle in str(info.value)
        assert TOKEN not in str(info.value) and str(tmp_path) not in str(info.value)
    with pytest.raises(ConfigError):
        WebConfig(admin_token="too-short")
