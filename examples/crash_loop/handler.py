"""The handler the crash loop runs: a short wait, then one effect that writes a file.

The effect writes ``<out>/<n>.txt`` atomically (same content every time, so writing it
twice leaves one correct file) and appends one line to ``<out>/runs.log`` each time it
actually runs, so the harness can count effects that ran more than once.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import anyio

import syncward

OUT = Path(os.environ.get("CRASH_LOOP_OUT", "crash-loop-out"))


async def handler(job: syncward.Job, ctx: syncward.Context) -> dict[str, str]:
    n = str(job.identity["id"])
    await anyio.sleep(random.uniform(0.0, 0.02))

    def write() -> str:
        target = OUT / f"{n}.txt"
        tmp = OUT / f".{n}.tmp"
        tmp.write_text(f"output of {n}\n")
        os.replace(tmp, target)
        with open(OUT / "runs.log", "a") as log:
            log.write(f"{n}\n")
        return target.name

    name = await ctx.effect("write", write)
    await ctx.stage("WRITTEN")
    return {"file": name}
