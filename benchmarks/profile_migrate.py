"""Where migrate's CPU goes: py-spy samples of statectl's three migrate directions on the latency bed (0 ms),
summed by kind of work. Not a timed benchmark.

Usage: pip install --target /tmp/pyspy py-spy
       .venv/bin/python benchmarks/profile_migrate.py [--rows 3000] [--py-spy /tmp/pyspy/bin/py-spy]

PostgreSQL + moto S3 behind benchmarks/latency_bed.py (the bed of bench_migrate.py), --rows rows of 100 B to
200 KB, threshold 1 KiB, gzip. Each direction runs once under ``py-spy record --format raw`` (every thread,
200 samples a second); each sample counts for the first kind of work found from the innermost frame
outwards. Samples of thread-pool workers waiting for work are counted apart ("idle").
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_migrate import STATECTL, Bed
from benchmarks.common import log

KINDS = [  # (kind, substrings of a frame "function (file:line)"), looked for from the innermost frame out
    ("idle (thread pool waiting)", ("concurrent/futures/thread.py:81)", "threading.py:331)")),
    ("gzip -9", ("compress", "GzipFile.write", "zlib")),
    ("gunzip", ("_GzipReader", "GzipFile.read", "decompress")),
    ("JSON", ("json/", "codec.py")),
    ("new TCP connections", ("_create_connection", "sock_connect", "_call_connection_lost", "_real_close")),
    ("SigV4 signing", ("botocore/signers.py", "botocore/auth.py", "aiobotocore/signers.py")),
    ("response parsing", ("parsers.py", "dateutil/", "botocore/utils.py")),
    ("PostgreSQL client", ("psycopg2", "statectl/stores/metastore.py")),
    ("process start (imports)", ("importlib", "_compile_bytecode")),
    ("botocore / aiobotocore: the rest of each request", ("botocore/",)),
    ("aiohttp", ("aiohttp/",)),
    ("asyncio event loop and sockets", ("asyncio/", "selectors.py", "socket.py")),
    ("statectl", ("statectl/",)),
]
OTHER = "other"


def kinds_of(raw: Path) -> tuple[int, collections.Counter[str]]:
    total, counts = 0, collections.Counter[str]()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        total += int(n)
        frames = stack.split(";")[::-1]
        kind = next((k for f in frames for k, keys in KINDS if any(key in f for key in keys)), OTHER)
        counts[kind] += int(n)
    return total, counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--py-spy", default="/tmp/pyspy/bin/py-spy")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="statectl-profile-migrate-") as tmp:
        bed = Bed(Path(tmp), 1024, "gzip", "s3-latency")
        try:
            bed.build_schema_and_run()
            log(f"seeded {bed.seed(args.rows, 100, 200_000, 20260101)}")
            new_base, relocated_env = bed.relocated()
            runs = (
                ("to-bucket", (), bed.backend_env),
                ("relocate", ("--to", new_base), bed.backend_env),
                ("to-metastore", (), relocated_env),
            )
            for direction, options, env in runs:
                raw = Path(tmp) / f"{direction}.txt"
                cmd = [args.py_spy, "record", "--format", "raw", "-r", "200", "-o", str(raw), "--", STATECTL]
                started = time.perf_counter()
                subprocess.run([*cmd, "migrate", direction, "--yes", "-o", "json", *options], env=env, check=True)
                total, counts = kinds_of(raw)
                print(f"\nmigrate {direction}: {time.perf_counter() - started:.1f} s, {total} samples")
                busy = total - counts["idle (thread pool waiting)"]
                for kind, n in counts.most_common():
                    share = "" if kind.startswith("idle") else f", {n / busy:.0%} of the busy ones"
                    print(f"  {n / total:6.1%}{share}  {kind}")
        finally:
            bed.close()


if __name__ == "__main__":
    main()
