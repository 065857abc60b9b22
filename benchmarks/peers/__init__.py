"""syncward beside its Python peers: arq, SAQ, taskiq (taskiq-redis) and dramatiq on
Redis; PgQueuer and procrastinate on PostgreSQL.

The same two workloads on each, 20,000 jobs at concurrency 100: a no-op handler and an
I/O-bound one (``asyncio.sleep(0.01)``; the ideal is 10,000 jobs/s). Each peer lives in its
own virtualenv under ``.venvs/<peer>`` (made by the script, never committed) with its task
module in ``workers/`` (which never imports syncward), uses its own Redis database (11-14,
flushed before and after each run), and is measured as: enqueue everything first (timed
apart), then start one worker process and time it until the library's own bookkeeping says
the last job is done. syncward is measured the same way in the same run: jobs written to a
fresh SQLite store (synchronous FULL) first, then one worker process until ``join()``.
The PostgreSQL peers each get a database of their own on the same server (dropped and made
again for every run), and beside them syncward runs on that server too (a fresh schema in
``bench_syncward`` per run), so each ratio compares two libraries on one database.

Run: python -m benchmarks.peers [--jobs N] [--only PEER[,PEER...]] [--skip-install]
One JSON line per (peer, workload) on stdout; progress on stderr.
"""
