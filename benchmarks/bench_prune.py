"""`statectl prune` against the naive loop an operator would write, side by side in one run (not a timed test).

Real components only, the bed of bench_migrate.py (imported): a throwaway PostgreSQL cluster built by `airflow db
migrate`, an object store on 127.0.0.1 reached through an Airflow connection (--store: s3-latency, the default, is
moto's S3 behind benchmarks/latency_bed.py's delays, measured at each of --latencies; s3 moto's S3 server as it is;
gcs the in-memory gcp-storage-emulator; azure Azurite; see benchmarks/stores.py), one real `dag.test()` run for the
dag run and task instances (its own rows stay: default retention). On top, --expired task rows (expired a day ago)
and --live ones (expiring in 30 days: they and their objects must survive both tools), each referencing a gzip
object of 100 B to --max-bytes (2 KB; log-uniform) at the provider's path under <scheme>://<conn>@<bucket>/state;
with --dags N > 1 the rows are spread over N dags (dag runs cloned from the real one with SQL), so the bucket has N
top-level folders.

At each latency both tools start from the same state (rows restored from a copy, bucket emptied and refilled):

- statectl: `statectl prune --yes -o json` (expired rows and their objects, and the orphan scan it always does:
  the listing of the bucket merged with the rows);
- naive: for each expired row, delete the row and commit, then the provider backend's own ``delete(scope, key)``
  (what a user with the provider would call); --naive-sample N: on every k-th expired row, N in all, extrapolated.

Reported: seconds, the ratio, the requests the store served by kind, the floor (benchmarks/common.py:
ceil(expired / 1000) bulk deletes and the listing of every object, or the CPU of the process start and of reading
the listing pages, whichever is larger) and checks that both end in the same state (rows by md5, objects left =
the live rows' objects; with a sample: the naive loop removed exactly its rows and their objects).

Usage: .venv/bin/python benchmarks/bench_prune.py [--store s3-latency|s3|gcs|azure] [--latencies 0,20]
       [--expired 20000] [--live 2000] [--dags 1] [--max-bytes 2000] [--naive-sample N]
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import math
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_migrate import DAG_ID, Bed  # noqa: E402
from benchmarks.common import (  # noqa: E402
    NAIVE_SAMPLING,
    STATECTL,
    Work,
    add_latency_options,
    at_latency,
    floor,
    heading,
    latencies,
    listing_parse_cpu,
    log,
    new_report,
    process_start_cpu,
    run_process,
    table,
    write_json,
)

PRUNE_SEED_TABLE = "bench_prune_seed"
TARGETS = {"naive_over_statectl": 30, "statectl_over_floor": 1.5}  # issue 11, at 20 ms

NAIVE_PRUNE = (
    NAIVE_SAMPLING
    + """
import sys, time, psycopg2
from airflow.sdk.state import TaskScope
from airflow.providers.common.io.state_store.backend import StateStoreObjectStorageBackend

backend = StateStoreObjectStorageBackend()
conn = psycopg2.connect(sys.argv[1])
cur = conn.cursor()
cur.execute('SELECT id, dag_id, run_id, task_id, map_index, "key" FROM task_state_store '
            'WHERE expires_at < now() ORDER BY id')
rows = sample(cur.fetchall())
started = time.perf_counter()
for row_id, dag_id, run_id, task_id, map_index, key in rows:
    cur.execute("DELETE FROM task_state_store WHERE id = %s", (row_id,))
    conn.commit()  # the row first, then its object (the provider's own order)
    backend.delete(TaskScope(dag_id=dag_id, run_id=run_id, task_id=task_id, map_index=map_index), key)
done(len(rows), started)
"""
)


def clone_runs(bed: Bed, dag_ids: list[str]) -> list[tuple[int, str, str]]:
    """(dag_run.id, dag_id, run_id) of a dag run per dag id, each a copy of bench_migrate's run under that dag id
    (dag_run's unique keys are per dag: the run id and dates can stay)."""
    columns = [
        c
        for (c,) in bed.sql(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'dag_run' AND column_name <> 'id' "
            "ORDER BY ordinal_position"
        )
    ]
    template, run_id = bed.sql("SELECT id, run_id FROM dag_run WHERE dag_id = %s", params=(DAG_ID,))[0]
    names = ", ".join(f'"{c}"' for c in columns)
    select = ", ".join("%(dag_id)s" if c == "dag_id" else f'"{c}"' for c in columns)
    known = dict(bed.sql("SELECT dag_id, id FROM dag_run WHERE dag_id = ANY(%s)", params=(dag_ids,)))
    for dag_id in dag_ids:
        if dag_id not in known:
            statement = (
                f"INSERT INTO dag_run ({names}) SELECT {select} FROM dag_run WHERE id = %(template)s RETURNING id"
            )
            known[dag_id] = bed.sql(statement, params={"dag_id": dag_id, "template": template})[0][0]
    return [(int(known[d]), d, str(run_id)) for d in dag_ids]


class PruneBed:
    """Bench rows turned into expired (and some live) object refs, with their objects."""

    def __init__(self, bed: Bed) -> None:
        self.bed = bed
        self.bodies: dict[str, bytes] = {}  # object key -> gzip bytes
        self.expired = 0

    def prepare(self, expired: int, live: int, seed: int, dags: int = 1, max_bytes: int = 2000) -> dict[str, Any]:
        """The rows (the first `live` of them live, the rest expired) with values of 100 B .. `max_bytes`, spread over
        `dags` dags, and their objects; copies kept for reset()."""
        import psycopg2
        from psycopg2.extras import execute_values

        from statectl.core import codec, layout
        from statectl.core.scopes import TaskScope

        seeded = self.bed.seed(expired + live, 100, max_bytes, seed)  # plain rows (log-uniform sizes)
        base = layout.parse_base_path(self.bed.base)
        runs = None if dags <= 1 else clone_runs(self.bed, [f"bench_dag_{i:03d}" for i in range(dags)])
        bench = self.bed.sql(
            'SELECT id, dag_run_id, dag_id, run_id, task_id, map_index, "key", value FROM task_state_store '
            "WHERE \"key\" LIKE 'bench_%%' ORDER BY id"
        )
        self.bodies = {}
        updates = []
        for i, (row_id, dag_run_id, dag_id, run_id, task_id, map_index, key, value) in enumerate(bench):
            if runs is not None:
                dag_run_id, dag_id, run_id = runs[i % len(runs)]
            url = layout.object_url(base, TaskScope(dag_id, run_id, task_id, map_index), key, "gzip")
            self.bodies[url.path.split("/", 1)[1]] = gzip.compress(value.encode(), mtime=0)
            shift = "30 days" if i < live else "-1 day"
            updates.append((row_id, dag_run_id, dag_id, run_id, codec.wrap_ref(str(url)), shift))
        conn = psycopg2.connect(self.bed.dsn)
        cur = conn.cursor()
        execute_values(
            cur,
            "UPDATE task_state_store AS t SET dag_run_id = v.dag_run_id, dag_id = v.dag_id, run_id = v.run_id, "
            "value = v.value, expires_at = now() + v.shift::interval "
            "FROM (VALUES %s) AS v(id, dag_run_id, dag_id, run_id, value, shift) WHERE t.id = v.id",
            updates,
            page_size=1000,
        )
        cur.execute(f"DROP TABLE IF EXISTS {PRUNE_SEED_TABLE}")
        cur.execute(f"CREATE TABLE {PRUNE_SEED_TABLE} AS SELECT * FROM task_state_store")
        conn.commit()
        conn.close()
        self.expired = expired_rows = sum(1 for *_, shift in updates if shift == "-1 day")
        return {
            **seeded,
            "expired_rows": expired_rows,
            "live_bench_rows": len(updates) - expired_rows,
            "objects": len(self.bodies),
            "dags": max(dags, 1),
        }

    def listed(self) -> list[str]:
        """The objects' paths relative to the base path (what a listing of it meets)."""
        return [key.split("/", 1)[1] for key in self.bodies]

    def top_folders(self) -> int:
        return len({key.split("/")[1] for key in self.bodies})

    def reset(self) -> None:
        """The rows as prepared, and every bench object in the bucket (nothing else)."""
        self.bed.sql("TRUNCATE task_state_store", f"INSERT INTO task_state_store SELECT * FROM {PRUNE_SEED_TABLE}")
        self.bed.sql("ANALYZE task_state_store")
        self.bed.empty_bucket()
        self.bed.store.put_many(self.bodies)

    def state(self) -> dict[str, Any]:
        digest, count = self.bed.sql(
            "SELECT md5(string_agg(md5(value), '' ORDER BY id)), COUNT(*) FROM task_state_store"
        )[0]
        live_refs = {
            json.loads(v)["__airflow_state_ref__"].split(f"{self.bed.store.bucket}/", 1)[1]
            for (v,) in self.bed.sql("SELECT value FROM task_state_store WHERE value LIKE '{\"__airflow%%'")
        }
        objects = set(self.bed.object_keys())
        return {
            "rows_md5": digest,
            "rows": int(count),
            "objects": len(objects),
            "objects_are_the_live_rows_objects": objects == live_refs,
        }

    def command(self, *extra: str) -> list[str]:
        return [STATECTL, "--concurrency", str(self.bed.concurrency), "prune", "--yes", "-o", "json", *extra]

    def statectl(self, *extra: str) -> dict[str, Any]:
        run = run_process(self.command(*extra), self.bed.backend_env, self.bed.requests)
        return {**run, **summary(json.loads(run.pop("stdout")))}

    def work(self, start_s: float) -> Work:
        """prune's floor: a bulk delete per 1000 expired objects, the listing of every object (the orphan scan),
        the process start and reading the listing's pages."""
        expired = self.expired
        bulk = math.ceil(expired / 1000)
        keys = sorted(self.bodies)
        return Work(
            f"bulk deletes: {bulk} ({expired:,} expired objects); the listing of {len(keys):,} objects in "
            f"{self.top_folders()} dag folder(s)",
            bulk=bulk,
            listed=self.listed(),
            cpu={"start": start_s, "listing XML": listing_parse_cpu(keys)},
        )


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """What a prune's JSON report says it deleted."""
    return {
        "deleted": {k: {"rows": t["rows"], "objects": t["objects"]} for k, t in report["deleted"].items()},
        "report_exit_code": report["exit_code"],
    }


@contextlib.contextmanager
def prepared(args: argparse.Namespace, expired: int, live: int, name: str) -> Iterator[tuple[PruneBed, dict[str, Any]]]:
    """A bed (--store, --concurrency) with `expired` + `live` rows and their objects over --dags dags (--seed), and
    what prepare() says of it; everything stopped and removed after the block."""
    with tempfile.TemporaryDirectory(prefix=f"statectl-bench-{name}-") as tmp:
        bed = Bed(Path(tmp), 0, "gzip", args.store)
        bed.concurrency = args.concurrency
        try:
            started = time.perf_counter()
            bed.build_schema_and_run()
            prune_bed = PruneBed(bed)
            data = prune_bed.prepare(
                expired, live, args.seed, args.dags, getattr(args, "max_bytes", 2000)
            )  # --max-bytes: bench_prune only
            log(f"set up {data} in {time.perf_counter() - started:.1f} s")
            yield prune_bed, data
        finally:
            bed.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_latency_options(parser)
    parser.add_argument("--expired", type=int, default=20_000, help="expired rows, each with an object")
    parser.add_argument("--live", type=int, default=2_000, help="live rows, each with an object")
    parser.add_argument("--dags", type=int, default=1, help="dags the rows are spread over (top-level folders)")
    parser.add_argument("--max-bytes", type=int, default=2000, help="largest value (log-uniform from 100 B)")
    parser.add_argument("--seed", type=int, default=20260101)
    args = parser.parse_args()
    lats = latencies(args)
    report = new_report()
    results, checks = [], {}
    with prepared(args, args.expired, args.live, "prune") as (prune_bed, data):
        bed = prune_bed.bed
        report["data"] = data
        report["config"] = {"base_path": bed.base, "compression": "gzip", "store": bed.label}
        needs = prune_bed.work(process_start_cpu(bed.backend_env, bed.store))

        # Warm-up for both tools (bytecode cache, page cache): a dry run and the baseline's imports.
        prune_bed.reset()
        dry = run_process(prune_bed.command("--dry-run"), bed.backend_env, bed.requests)
        report["plan"] = json.loads(dry["stdout"])["plan"]["categories"]["expired"] | {"first": None}
        bed.naive(NAIVE_PRUNE.replace("rows = sample(cur.fetchall())", "rows = []"))

        for latency in lats:
            prune_bed.reset()
            log(f"{latency.label}: statectl prune")
            with at_latency(bed.store, latency):
                mine = prune_bed.statectl()
            mine_state = prune_bed.state()
            log(f"  {mine['seconds']} s; {mine['requests']}; {mine_state}")

            prune_bed.reset()
            log(f"{latency.label}: naive loop")
            with at_latency(bed.store, latency):
                naive = bed.naive(NAIVE_PRUNE, sample=args.naive_sample, total=data["expired_rows"])
            naive_state = prune_bed.state()
            log(f"  {naive['seconds']} s; {naive['requests']}; {naive_state}")
            results.append(
                {
                    "operation": f"prune ({data['expired_rows']:,} expired of {data['objects']:,} objects)",
                    "latency": latency.label,
                    "statectl": mine,
                    "naive": naive,
                    "floor": floor(needs, latency, args.concurrency),
                    "targets": TARGETS if latency.op_ms else {},
                }
            )
            start_rows, start_objects = data["rows"], data["objects"]
            checks[latency.label] = {
                "statectl_left_the_live_rows_objects": mine_state["objects_are_the_live_rows_objects"],
                **(
                    {
                        "naive_removed_its_sample_rows": naive_state["rows"] == start_rows - naive["rows"],
                        "naive_removed_its_sample_objects": naive_state["objects"] == start_objects - naive["rows"],
                    }
                    if naive.get("extrapolated")
                    else {
                        "same_rows_left": mine_state["rows_md5"] == naive_state["rows_md5"],
                        "naive_left_the_live_rows_objects": naive_state["objects_are_the_live_rows_objects"],
                    }
                ),
            }
            log(f"  checks: {checks[latency.label]}")
    report.update(results=results, checks=checks)
    write_json(report, args.out, f"bench-prune-{args.store}-{args.expired}")
    data = report["data"]
    print(
        f"{heading(report)}\n"
        f"{data['expired_rows']:,} expired + {data['live_bench_rows']:,} live task rows over {data['dags']} dag(s), "
        f"each with a gzip object of 100 B .. {args.max_bytes:,} B; concurrency {args.concurrency}\n"
    )
    print("\n".join(table(results)))
    for label, c in checks.items():
        print(f"checks at {label}: " + ", ".join(f"{k}={v}" for k, v in c.items()))


if __name__ == "__main__":
    main()
