"""`statectl check`: on an object store, against the naive loop and the floor at each latency; on SQLite + file://,
peak memory (RSS) and time at two sizes (not a timed test).

Object store (--store s3-latency, the default: moto's S3 behind benchmarks/latency_bed.py's delays, at each of
--latencies; or s3, gcs, azure): the bed of bench_migrate.py / bench_prune.py (PostgreSQL built by `airflow db
migrate`, one real `dag.test()` run, the store reached through an Airflow connection), --objects live task rows
spread over --dags dags (dag runs cloned with SQL), each referencing a gzip object at the provider's path, plus
--objects / 100 objects without a row (recent orphans). Both tools only read, so one state serves every run:

- statectl: `statectl check -o json` (with --deep also `check --deep`, which reads every object);
- naive: what a user would write: the bucket's listing with the base path's own filesystem (``fs.find``: one flat
  listing), then per row the ref's ``ObjectStoragePath(ref).exists()`` (a HEAD; with --deep, the provider's
  ``deserialize_task_state_store_from_ref``, which reads the object), and the unreferenced objects by difference;
  --naive-sample N: the per-row part on every k-th row, N in all, extrapolated linearly (labelled).

The floor (benchmarks/common.py): the listing of every object (its pages sequential within a folder; folders
`concurrency` at a time), or the CPU of the process start, reading the listing's pages and parsing the rows' JSON,
whichever is larger; with --deep also 1 GET per object and gunzip of each.

SQLite + file:// (--store file): the demo's store (a real DAG run through the provider makes the dag_run /
task_instance rows) plus N task rows seeded with SQL whose refs point at N objects written with statectl's own
layout and codec; one object in a hundred has no row. Memory must stay flat: 100k within 20% of 20k (--sizes).

Usage: .venv/bin/python benchmarks/bench_check.py [--store s3-latency|s3|gcs|azure] [--latencies 0,20]
       [--objects 100000] [--dags 1] [--naive-sample N] [--deep]
       .venv/bin/python benchmarks/bench_check.py --store file [--sizes 20000 100000] [--deep]
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_foundation import VENV_BIN, first_row_and_peak, setup_store  # noqa: E402
from benchmarks.bench_migrate import Bed  # noqa: E402
from benchmarks.bench_prune import prepared  # noqa: E402
from benchmarks.common import (  # noqa: E402
    NAIVE_SAMPLING,
    STATECTL,
    Work,
    add_latency_options,
    at_latency,
    floor,
    gunzip_cpu,
    heading,
    json_cpu,
    latencies,
    listing_parse_cpu,
    log,
    new_report,
    process_start_cpu,
    run_process,
    table,
    write_json,
)
from benchmarks.stores import STORES  # noqa: E402
from statectl.core import codec, layout  # noqa: E402
from statectl.core.scopes import TaskScope  # noqa: E402

DAG_ID = "statectl_demo"
BULK = "bulk_"
ORPHAN_EVERY = 100
TARGETS = {"statectl_over_floor": 1.5}  # issue 11, at 20 ms

# What a user would write to find rows whose object is missing and objects no row references: the bucket's
# listing, then a look at each row's object (``exists``: a HEAD; "deep": the provider reads and decodes it).
NAIVE_CHECK = (
    NAIVE_SAMPLING
    + """
import json, sys, time, psycopg2
from airflow.sdk import ObjectStoragePath
from airflow.providers.common.io.state_store.backend import StateStoreObjectStorageBackend

base_url, deep = sys.argv[2], sys.argv[3] == "deep"
base = ObjectStoragePath(base_url)
backend = StateStoreObjectStorageBackend()
listed = set(base.fs.find(base.path))
conn = psycopg2.connect(sys.argv[1])
cur = conn.cursor()
cur.execute("SELECT value FROM task_state_store ORDER BY id")
rows = sample(cur.fetchall())
started = time.perf_counter()
referenced, dangling = set(), 0
for (text,) in rows:
    stored = json.loads(text)
    ref = stored.get("__airflow_state_ref__") if isinstance(stored, dict) else None
    if not (isinstance(ref, str) and ref.startswith(base_url + "/")):
        continue
    path = ObjectStoragePath(ref)
    referenced.add(path.path)
    if deep:
        dangling += backend.deserialize_task_state_store_from_ref(ref) is None
    elif not path.exists():
        dangling += 1
orphans = len(listed - referenced)
done(len(rows), started)
"""
)


# -------------------------------------------------------------------------- SQLite + file:// (peak memory)


def seed(env: dict[str, str], run_id: str, count: int) -> None:
    """Replace the bulk rows and objects with `count` of each (and count/100 orphans)."""
    db = Path(env["AIRFLOW_HOME"]) / "airflow.db"
    base = layout.parse_base_path(env["AIRFLOW__COMMON_IO__STATE_STORE_OBJECTSTORAGE_PATH"])
    run_dir = Path(layout.task_prefix(base, TaskScope(DAG_ID, run_id, "x")).path).parent
    for old in run_dir.glob(f"{BULK}*"):
        shutil.rmtree(old)
    conn = sqlite3.connect(db)
    conn.execute("DELETE FROM task_state_store WHERE task_id LIKE ?", (f"{BULK}%",))
    dag_run_id = conn.execute("SELECT id FROM dag_run WHERE run_id = ?", (run_id,)).fetchone()[0]

    def rows() -> Iterator[tuple[Any, ...]]:
        for i in range(count + count // ORPHAN_EVERY):
            scope = TaskScope(DAG_ID, run_id, f"{BULK}{i // 1000:05d}")
            key = f"key_{i % 1000:04d}"
            url = layout.object_url(base, scope, key, "gzip")
            path = Path(url.path)
            path.parent.mkdir(parents=True, exist_ok=True)
            text = codec.serialize({"offset": i, "note": "x" * 40})
            path.write_bytes(gzip.compress(text.encode(), mtime=0))
            if i % (ORPHAN_EVERY + 1) == ORPHAN_EVERY:
                continue  # an object with no row
            yield dag_run_id, scope.task_id, key, run_id, codec.wrap_ref(str(url))

    conn.executemany(
        'INSERT INTO task_state_store (dag_run_id, task_id, map_index, "key", dag_id, run_id, value, updated_at, '
        f"expires_at) VALUES (?, ?, -1, ?, '{DAG_ID}', ?, ?, '2026-01-01 00:00:00.000000', NULL)",
        rows(),
    )
    conn.commit()
    conn.close()


def measure(env: dict[str, str], extra: list[str]) -> dict[str, object]:
    cmd = [str(VENV_BIN / "statectl"), "check", "-o", "json", *extra]
    figures = first_row_and_peak(cmd, env)
    report = json.loads(subprocess.run(cmd, env=env, capture_output=True, text=True, check=False).stdout)
    findings = {kind: f["count"] for kind, f in report["findings"].items() if f["count"]}
    return {
        "total_s": figures["total_s"],
        "peak_mib": figures["peak_mib"],
        "objects": report["totals"]["objects"],
        "rows": report["totals"]["rows"],
        "findings": findings,
    }


def memory_main(args: argparse.Namespace) -> None:
    variants: list[list[str]] = [[]] + ([["--deep"]] if args.deep else [])
    with tempfile.TemporaryDirectory(prefix="statectl-bench-check-") as tmp:
        env, run_id = setup_store(Path(tmp))
        results: dict[str, dict[int, dict[str, object]]] = {}
        for size in args.sizes:
            seed(env, run_id, size)
            for extra in variants:
                name = " ".join(["check", *extra])
                results.setdefault(name, {})[size] = figures = measure(env, extra)
                print(json.dumps({"variant": name, "size": size, **figures}), flush=True)
        small, big = args.sizes
        summary = {
            name: {
                "peak_ratio": round(float(by[big]["peak_mib"]) / float(by[small]["peak_mib"]), 3),  # type: ignore[arg-type]
                "time_ratio": round(float(by[big]["total_s"]) / float(by[small]["total_s"]), 3),  # type: ignore[arg-type]
            }
            for name, by in results.items()
        }
        print(json.dumps({"sizes": args.sizes, "summary": summary}, indent=2))


# -------------------------------------------------------------------------- an object store, at each latency


def check_run(bed: Bed, *extra: str) -> dict[str, Any]:
    cmd = [STATECTL, "--concurrency", str(bed.concurrency), "check", "-o", "json", *extra]
    run = run_process(cmd, bed.backend_env, bed.requests, ok=(0, 12))  # 12: problems found (the recent orphans)
    report = json.loads(run.pop("stdout"))
    run["findings"] = {kind: f["count"] for kind, f in report["findings"].items() if f["count"]}
    run["totals"] = {k: report["totals"][k] for k in ("rows", "objects")}
    return run


def store_main(args: argparse.Namespace) -> None:
    lats = latencies(args)
    report = new_report()
    results: list[dict[str, Any]] = []
    variants = [()] + ([("--deep",)] if args.deep else [])
    with prepared(args, 0, args.objects, "check") as (objects, data):  # live rows, each with an object
        bed = objects.bed
        orphans = {
            f"{key.rsplit('/', 1)[0]}/orphan_{i:07d}.gz": body
            for i, (key, body) in enumerate(list(objects.bodies.items())[::ORPHAN_EVERY])
        }
        objects.bodies.update(orphans)  # in the rows' folders, with no row: recent orphans
        objects.reset()
        report["data"] = {**data, "objects": len(objects.bodies), "orphans": len(orphans)}
        report["config"] = {"base_path": bed.base, "compression": "gzip", "store": bed.label}
        texts = [t for (t,) in bed.sql("SELECT value FROM task_state_store")]
        listing = {
            "start": process_start_cpu(bed.backend_env, bed.store),
            "listing XML": listing_parse_cpu(sorted(objects.bodies)),
            "rows' JSON": json_cpu(texts),
        }
        listed = f"the listing of {len(objects.bodies):,} objects in {objects.top_folders()} dag folder(s)"
        needs = {
            (): Work(listed, listed=objects.listed(), cpu=listing),
            ("--deep",): Work(
                f"{listed}; 1 GET per referenced object ({data['objects']:,})",
                ops=data["objects"],
                listed=objects.listed(),
                cpu={**listing, "gunzip": gunzip_cpu(objects.bodies.values())},
            ),
        }
        check_run(bed)  # warm-up for both tools (bytecode cache, page cache)
        # ... and the naive loop's requests whatever its rows (the listing): not extrapolated from a sample.
        fixed = bed.naive(NAIVE_CHECK, bed.base, "", sample=-1)["requests"]
        for latency in lats:
            for extra in variants:
                name = " ".join(["check", *extra])
                log(f"{latency.label}: statectl {name}")
                with at_latency(bed.store, latency):
                    mine = check_run(bed, *extra)
                log(f"  {mine['seconds']} s; {mine['requests']}; {mine['findings']}")
                log(f"{latency.label}: naive {name}")
                with at_latency(bed.store, latency):
                    mode = "deep" if extra else ""
                    naive = bed.naive(
                        NAIVE_CHECK, bed.base, mode, sample=args.naive_sample, total=data["rows"], fixed=fixed
                    )
                log(f"  {naive['seconds']} s; {naive['requests']}")
                results.append(
                    {
                        "operation": f"{name} ({len(objects.bodies):,} objects)",
                        "latency": latency.label,
                        "statectl": mine,
                        "naive": naive,
                        "floor": floor(needs[extra], latency, args.concurrency),
                        "targets": TARGETS if latency.op_ms and not extra else {},
                    }
                )
    report["results"] = results
    write_json(report, args.out, f"bench-check-{args.store}-{args.objects}")
    data = report["data"]
    print(
        f"{heading(report)}\n"
        f"{data['live_bench_rows']:,} task rows over {data['dags']} dag(s), each with a gzip object of 100 B .. 2 KB, "
        f"and {data['orphans']:,} recent orphans; concurrency {args.concurrency}\n"
    )
    print("\n".join(table(results)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_latency_options(parser, stores=(*STORES, "file"))
    parser.add_argument("--objects", type=int, default=100_000, help="rows, each with an object (object store)")
    parser.add_argument("--dags", type=int, default=1, help="dags the rows are spread over (object store)")
    parser.add_argument("--seed", type=int, default=20260101)
    parser.add_argument("--sizes", type=int, nargs=2, default=[20_000, 100_000], help="row counts (--store file)")
    parser.add_argument("--deep", action="store_true", help="also measure check --deep (reads every object)")
    args = parser.parse_args()
    if args.store == "file":
        memory_main(args)
    else:
        store_main(args)


if __name__ == "__main__":
    main()
