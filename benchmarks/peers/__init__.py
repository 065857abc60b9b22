"""syncward beside its Python peers: arq, SAQ, taskiq (taskiq-redis) and dramatiq.

The same two workloads on each, 20,000 jobs at concurrency 100: a no-op handler and an
I/O-bound one (``asyncio.sleep(0.01)``; the ideal is 10,000 jobs/s). Each peer lives in its
own virtualenv under ``.venvs/<peer>`` (made by the script, never committed) with its task
module in ``workers/`` (which never imports syncward), uses its own Redis database (11-14,
flushed before and after each run), and is measured as: enqueue everything first (timed
apart), then start one worker process and time it until the library's own bookkeeping says
the last job is done. syncward is measured the same way in the same run: jobs written to a
fresh SQLite store (synchronous FULL) first, then one worker process until ``join()``.

Run: python -m benchmarks.peers [--jobs N] [--only PEER] [--skip-install]
One JSON line per (peer, workload) on stdout; progress on stderr.
"""
