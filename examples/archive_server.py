"""Serve the local archive of Kepler light curves (with faults) until Ctrl-C.

Run::

    python examples/archive_server.py --files 100 --seed 0 --fault-rate 0.2 [--port 0]

It prints ``serving N files at http://127.0.0.1:PORT`` on its first line; ``GET
/index.json`` lists the files. The server itself is `syncward.testing.archive` (what it
serves, its faults, how to use it in-process); this script only runs it. The names of
that module are re-exported here, so code that loads this file keeps working.
"""

from __future__ import annotations

import argparse
import contextlib

import anyio

from syncward.testing.archive import (
    RANDOM_FAULTS,
    ArchiveConfig,
    ArchiveFile,
    ArchiveServer,
    Fault,
    RequestRecord,
    light_curve_name,
    light_curve_path,
)

__all__ = ["RANDOM_FAULTS", "ArchiveConfig", "ArchiveFile", "ArchiveServer", "Fault",
           "RequestRecord", "light_curve_name", "light_curve_path", "main"]


async def _serve_forever(config: ArchiveConfig) -> None:
    async with ArchiveServer(config) as archive:
        print(f"serving {len(archive.catalogue)} files at {archive.url}", flush=True)
        expected = archive.expected()
        print(f"  {len(expected['missing'])} missing (404), "
              f"{len(expected['duplicates'])} duplicates; index: {archive.url}/index.json",
              flush=True)
        await anyio.sleep_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fault-rate", type=float, default=0.0)
    defaults = ArchiveConfig()
    parser.add_argument("--min-size", type=int, default=defaults.min_size)
    parser.add_argument("--max-size", type=int, default=defaults.max_size)
    parser.add_argument("--missing", type=int, default=None)
    parser.add_argument("--duplicates", type=int, default=None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--uvloop", action="store_true", help="serve on uvloop")
    args = parser.parse_args(argv)
    config = ArchiveConfig(files=args.files, seed=args.seed, fault_rate=args.fault_rate,
                           min_size=args.min_size, max_size=args.max_size,
                           missing=args.missing, duplicates=args.duplicates,
                           host=args.host, port=args.port)
    with contextlib.suppress(KeyboardInterrupt):
        anyio.run(_serve_forever, config, backend_options={"use_uvloop": args.uvloop})


if __name__ == "__main__":
    main()
