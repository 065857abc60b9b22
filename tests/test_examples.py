"""The examples run as documented."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import anyio
import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent


def load(name: str) -> object:
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


async def test_starlette_lifespan_embedding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    pytest.importorskip("starlette")
    monkeypatch.setenv("SYNCWARD_DB", f"sqlite:///{tmp_path / 'app.db'}")
    example = load("starlette_app")
    app = example.app  # type: ignore[attr-defined]
    with anyio.fail_after(10):
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
                first = await client.post("/jobs", json=[{"id": 1}, {"id": 2}])
                again = await client.post("/jobs", json=[{"id": 2}])
                bad = await client.post("/jobs", json=[{"id": 1.5}])
                await app.state.runtime.join()
                stats = (await client.get("/stats")).json()
    assert first.json() == {"new": 2, "duplicates": 0}
    assert again.json() == {"new": 0, "duplicates": 1}
    assert bad.status_code == 400 and "float" in bad.json()["error"]
    assert stats["counts"]["succeeded"] == 2
