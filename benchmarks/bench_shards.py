"""`statectl prune --yes --shard I/N` as N parallel processes against one unsharded `statectl prune --yes`, side by
side in one run on copies of the same state, at each latency (not a timed test).

The bed of bench_prune.py (PostgreSQL built by `airflow db migrate`, one real `dag.test()` run, the object store
reached through an Airflow connection; --store s3-latency, the default, is moto's S3 behind
benchmarks/latency_bed.py's delays, measured at each of --latencies): --expired + --live task rows spread over --dags
dags (dag runs cloned with SQL), each referencing a gzip object of 100 B .. 2 KB at the provider's path, so the
bucket has --dags top-level folders. The bucket is filled straight through moto's backend in this process, without
the delays (benchmarks/moto_index.py), and refilled before each run.

At each latency:
- one process: `statectl prune --yes -o json` (the expired rows and their objects, the orphan scan over the whole
  bucket);
- N shards: `statectl prune --yes -o json --shard I/N` for I in 0..N-1, started at once as N processes; the time is
  from the start of the first to the end of the last (each one's own time is reported too).
Both must end in the same state (the rows by md5, the object keys) and report the same deletions in sum.
Reported: the times, the ratio (one process / N shards), the requests each served by kind, and the floor of the
unsharded run (benchmarks/common.py: the bulk deletes and the listing of every object, or the CPU of the process
start and of reading the listing, whichever is larger).

Target (issue 11, PostgreSQL + the bed at 20 ms, 200k objects): 4 shards at least 3x faster than one process.

Usage: .venv/bin/python benchmarks/bench_shards.py [--latencies 0,20] [--expired 20000] [--live 180000]
       [--dags 64] [--shards 4]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_migrate import Bed  # noqa: E402
from benchmarks.bench_prune import PruneBed, prepared, summary  # noqa: E402
from benchmarks.common import (  # noqa: E402
    FLOOR_FORMULA,
    Latency,
    add_latency_options,
    at_latency,
    floor,
    heading,
    latencies,
    log,
    new_report,
    process_start_cpu,
    write_json,
)
from benchmarks.stores import by_kind  # noqa: E402

TARGET = 3.0  # issue 11: 4 shards >= 3x one process, at 20 ms and 200k objects


def parallel(bed: Bed, commands: list[list[str]]) -> dict[str, Any]:
    """The commands started at once; wall time to the last one's end, each one's time and summary, and the requests
    the store served meanwhile."""
    from concurrent.futures import ThreadPoolExecutor

    before = bed.requests.snapshot()
    start = time.perf_counter()

    def one(cmd: list[str]) -> dict[str, Any]:  # a thread each: each end is timed when it comes
        proc = subprocess.run(cmd, env=bed.backend_env, capture_output=True, text=True, check=False)
        ended = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        return {"seconds": round(ended, 2), **summary(json.loads(proc.stdout))}

    with ThreadPoolExecutor(max_workers=len(commands)) as pool:
        each = list(pool.map(one, commands))
    seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 2), "processes": each, "requests": by_kind(bed.requests.since(before))}


def state(prune_bed: PruneBed) -> dict[str, Any]:
    keys = prune_bed.bed.object_keys()
    return {**prune_bed.state(), "object_keys_md5": hashlib.md5("\n".join(sorted(keys)).encode()).hexdigest()}


def deleted_total(runs: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    total: dict[str, Counter[str]] = {}
    for run in runs:
        for category, counts in run["deleted"].items():
            total.setdefault(category, Counter()).update(counts)
    return {category: dict(counts) for category, counts in total.items()}


def at_one_latency(prune_bed: PruneBed, latency: Latency, shards: int) -> dict[str, Any]:
    bed = prune_bed.bed
    prune_bed.reset()
    log(f"{latency.label}: one statectl prune")
    with at_latency(bed.store, latency):
        one = parallel(bed, [prune_bed.command()])
    one_state = state(prune_bed)
    log(f"  {one['seconds']} s; {one['requests']}")

    prune_bed.reset()
    log(f"{latency.label}: {shards} shards at once")
    with at_latency(bed.store, latency):
        many = parallel(bed, [prune_bed.command("--shard", f"{i}/{shards}") for i in range(shards)])
    many_state = state(prune_bed)
    log(f"  {many['seconds']} s (each: {[p['seconds'] for p in many['processes']]}); {many['requests']}")
    return {
        "one": one,
        "shards": many,
        "ratio": round(one["seconds"] / many["seconds"], 2),
        "checks": {
            "same_end_state": one_state == many_state,
            "same_deletions": deleted_total(one["processes"]) == deleted_total(many["processes"]),
            "live_rows_objects_left": many_state["objects_are_the_live_rows_objects"],
        },
    }


def render(report: dict[str, Any], shards: int) -> str:
    data = report["data"]
    lines = [
        heading(report),
        f"{data['expired_rows']:,} expired + {data['live_bench_rows']:,} live task rows over {data['dags']} dags, "
        f"{data['objects']:,} objects; concurrency {report['config']['concurrency']} per process",
        "",
        f"| latency | one `prune --yes` | {shards} x `prune --yes --shard I/{shards}` at once | one / shards "
        f"| target | floor of one (bound) | one / floor |",
        "|---|---|---|---|---|---|---|",
    ]
    notes = []
    for r in report["results"]:
        each = ", ".join(f"{p['seconds']}" for p in r["shards"]["processes"])
        verdict = f"{'ok' if r['ratio'] >= TARGET else 'MISSED'} >= {TARGET:g}x" if r["target"] else "-"
        f = r["floor"]
        lines.append(
            f"| {r['latency']} | {r['one']['seconds']} s | {r['shards']['seconds']} s (each ended at {each} s) "
            f"| **{r['ratio']}x** | {verdict} | {f['floor_s']} s ({f['bound_by']}) "
            f"| {r['one']['seconds'] / f['floor_s']:.2f}x |"
        )
        notes.append(f"at {r['latency']}:")
        for who in ("one", "shards"):
            counts = ", ".join(f"{k} {n:,}" for k, n in sorted(r[who]["requests"].items(), key=lambda i: -i[1]))
            notes.append(f"  requests, {who}: {counts}")
        notes.append("  checks: " + ", ".join(f"{k}={v}" for k, v in r["checks"].items()))
        notes.append(f"  floor of one: needs {f['needs']}; latency {f['latency_s']} s, CPU {f['cpu_s']} s")
    return "\n".join([*lines, "", *notes, "", FLOOR_FORMULA])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_latency_options(parser, naive=False)
    parser.add_argument("--expired", type=int, default=20_000, help="expired rows, each with an object")
    parser.add_argument("--live", type=int, default=180_000, help="live rows, each with an object")
    parser.add_argument("--dags", type=int, default=64, help="dags the rows are spread over (top-level folders)")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--seed", type=int, default=20260101)
    args = parser.parse_args()
    lats = latencies(args)
    report = new_report()
    results = []
    with prepared(args, args.expired, args.live, "shards") as (prune_bed, data):
        bed = prune_bed.bed
        report["data"] = data
        report["config"] = {"base_path": bed.base, "store": bed.label, "concurrency": args.concurrency}
        needs = prune_bed.work(process_start_cpu(bed.backend_env, bed.store))
        prune_bed.reset()  # warm-up (bytecode cache, page cache): a dry run of each shard
        parallel(bed, [prune_bed.command("--dry-run", "--shard", f"{i}/{args.shards}") for i in range(args.shards)])
        for latency in lats:
            measured = at_one_latency(prune_bed, latency, args.shards)
            measured.update(
                latency=latency.label,
                floor=floor(needs, latency, args.concurrency),
                target=bool(latency.op_ms) and args.shards == 4,
            )
            log(f"  checks: {measured['checks']}")
            results.append(measured)
    report["results"] = results
    write_json(report, args.out, f"bench-shards-{args.store}-{args.expired + args.live}")
    print(render(report, args.shards))


if __name__ == "__main__":
    main()
