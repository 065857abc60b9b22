"""The dashboard in a real browser: the machine's Chromium, driven by playwright.

The browser is Debian's ``chromium`` found on PATH (``.ci/run`` installs it when it is
missing), launched headless with ``executable_path``; playwright never downloads one.
Under CI=true a missing chromium fails the test; elsewhere it is skipped with a reason.

A runtime serves its app with uvicorn on a free loopback port, in the test's own event
loop. The page must show the counts changing as jobs finish, list the failed job with
its error, and — once the admin token is typed in — send it back to planned with its
retry button (the runtime is paused first, so it stays planned). A screenshot is kept.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

import anyio
import pytest
from web_helpers import QUICK, TOKEN, chromium, require

from syncward import Context, Job, JobState, Permanent, Runtime, job_key
from syncward.web import create_app
from syncward.web.serving import Bind, listen, open_server

if TYPE_CHECKING:
    from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.mark.slow
async def test_the_dashboard_shows_live_counts_and_retries_a_failed_job(
        tmp_path: Path) -> None:
    executable = chromium()
    require(importlib.util.find_spec("playwright") is not None,
            'playwright is not installed (pip install -e ".[dev]")')
    from playwright.async_api import async_playwright, expect

    gate = anyio.Event()

    async def handler(job: Job, ctx: Context) -> dict[str, str]:
        ident = str(job.identity["id"])
        if ident == "broken":
            raise Permanent("the archive answered 404 for broken")
        ctx.progress(1, 2)
        await gate.wait()
        return {"id": ident}

    broken = job_key({"id": "broken"})
    with anyio.fail_after(60):
        async with Runtime(handler, store=f"sqlite:///{tmp_path / 'jobs.db'}", syncer=QUICK,
                           concurrency=6, prefetch=0, grace=0.5) as rt:
            app = create_app(rt, admin_token=TOKEN)
            sock, bound = listen(Bind("127.0.0.1", 0))
            async with open_server(app, sock), async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=executable, headless=True,
                                                   args=FLAGS)
                try:
                    page = await browser.new_page()
                    await page.goto(bound.url)
                    await expect(page.locator("#health")).to_have_text("healthy")
                    await rt.submit([{"id": f"file-{i}"} for i in range(5)] + [{"id": "broken"}])
                    await expect(page.locator("#count-leased")).to_have_text("5")
                    await expect(page.locator("#count-failed")).to_have_text("1")
                    await expect(page.locator("#leases .bar")).to_have_count(5)  # progress
                    gate.set()
                    await expect(page.locator("#count-succeeded")).to_have_text("5")
                    row = page.locator(f'#failures tr[data-key="{broken}"]')
                    await expect(row).to_contain_text("the archive answered 404 for broken")

                    rt.pause()  # so the retried job stays planned for the page to see
                    await row.locator("button.retry").click()  # no token yet: asks for it
                    await expect(page.locator("#admin-msg")).to_have_text(
                        "Enter the admin token first.")
                    await page.locator("#token").fill(TOKEN)
                    await row.locator("button.retry").click()
                    await expect(page.locator("#admin-msg")).to_have_text(
                        "1 failed job(s) back to planned")
                    await expect(page.locator("#count-planned")).to_have_text("1")
                    await expect(page.locator("#count-failed")).to_have_text("0")
                    await expect(page.locator("#failures-empty")).to_be_visible()
                    await page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
                finally:
                    gate.set()
                    await browser.close()
            job = await rt.store.get_job(broken)
            assert job is not None and (job.state, job.attempts) == (JobState.PLANNED, 0)
            assert (tmp_path / "dashboard.png").stat().st_size > 10_000
            rt.resume()
            await rt.wait(lambda s: s.counts[JobState.FAILED] == 1)
