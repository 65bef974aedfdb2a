"""`statectl prune` against the naive loop an operator would write, side by side in one run (not a timed test).

Real components only, the bed of bench_migrate.py (imported): a throwaway PostgreSQL cluster built by
`airflow db migrate`, an object store on 127.0.0.1 reached through an Airflow connection (--store: s3, the
default, is moto's S3 server through an aws connection; gcs the in-memory gcp-storage-emulator through a
google_cloud_platform connection; azure Azurite through a wasb connection; see benchmarks/stores.py), one
real `dag.test()` run for the dag run and task instances (its own rows stay: default retention). On top,
--expired task rows (expired a day ago) and --live ones (expiring in 30 days: they and their objects
must survive both tools), each referencing a gzip object at the provider's path under
<scheme>://<conn>@<bucket>/state.

Both tools start from the same state (rows restored from a copy, bucket emptied and refilled):

- statectl: `statectl prune --yes -o json` (expired rows and their objects, and the orphan scan it
  always does: one listing of the bucket merged with the rows);
- naive: for each expired row, delete the row and commit, then the provider backend's own
  ``delete(scope, key)`` (what a user with the provider would call).

Reported: seconds, the ratio, the requests the store served by HTTP method and kind (also per expired
key; on S3 also by method alone, as "s3_requests"), and checks that both end in the same state (rows by
md5, objects left = the live rows' objects).

Usage: .venv/bin/python benchmarks/bench_prune.py [--store s3|gcs|azure] [--expired 20000] [--live 2000]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_migrate import STATECTL, Bed, load, log  # noqa: E402
from benchmarks.stores import STORES, per_object  # noqa: E402

PRUNE_SEED_TABLE = "bench_prune_seed"

NAIVE_PRUNE = """
import sys, psycopg2
from airflow.sdk.state import TaskScope
from airflow.providers.common.io.state_store.backend import StateStoreObjectStorageBackend

backend = StateStoreObjectStorageBackend()
conn = psycopg2.connect(sys.argv[1])
cur = conn.cursor()
cur.execute('SELECT id, dag_id, run_id, task_id, map_index, "key" FROM task_state_store '
            'WHERE expires_at < now() ORDER BY id')
rows = cur.fetchall()
for row_id, dag_id, run_id, task_id, map_index, key in rows:
    cur.execute("DELETE FROM task_state_store WHERE id = %s", (row_id,))
    conn.commit()  # the row first, then its object (the provider's own order)
    backend.delete(TaskScope(dag_id=dag_id, run_id=run_id, task_id=task_id, map_index=map_index), key)
print(len(rows))
"""


class PruneBed:
    """Bench rows turned into expired (and some live) object refs, with their objects."""

    def __init__(self, bed: Bed) -> None:
        self.bed = bed
        self.bodies: dict[str, bytes] = {}  # object key -> gzip bytes

    def prepare(self, expired: int, live: int, seed: int) -> dict[str, Any]:
        from psycopg2.extras import execute_values

        from statectl.core import codec, layout
        from statectl.core.scopes import TaskScope

        seeded = self.bed.seed(expired + live, 100, 2000, seed)  # plain rows with values of 100 B .. 2 KB
        base = layout.parse_base_path(self.bed.base)
        bench = self.bed.sql(
            'SELECT id, dag_id, run_id, task_id, map_index, "key", value FROM task_state_store '
            "WHERE \"key\" LIKE 'bench_%%' ORDER BY id"
        )
        updates = []
        for i, (row_id, dag_id, run_id, task_id, map_index, key, value) in enumerate(bench):
            url = layout.object_url(base, TaskScope(dag_id, run_id, task_id, map_index), key, "gzip")
            self.bodies[url.path.split("/", 1)[1]] = gzip.compress(value.encode(), mtime=0)
            updates.append((row_id, codec.wrap_ref(str(url)), "30 days" if i < live else "-1 day"))
        conn = __import__("psycopg2").connect(self.bed.dsn)
        cur = conn.cursor()
        execute_values(
            cur,
            "UPDATE task_state_store AS t SET value = v.value, expires_at = now() + v.shift::interval "
            "FROM (VALUES %s) AS v(id, value, shift) WHERE t.id = v.id",
            updates,
            page_size=1000,
        )
        cur.execute(f"DROP TABLE IF EXISTS {PRUNE_SEED_TABLE}")
        cur.execute(f"CREATE TABLE {PRUNE_SEED_TABLE} AS SELECT * FROM task_state_store")
        conn.commit()
        conn.close()
        expired_rows = sum(1 for _, _, shift in updates if shift == "-1 day")
        return {**seeded, "expired_rows": expired_rows, "live_bench_rows": len(updates) - expired_rows}

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

    def statectl(self) -> dict[str, Any]:
        before = self.bed.requests.snapshot()
        start = time.perf_counter()
        cmd = ["/usr/bin/time", "-f", "%M", STATECTL, "prune", "--yes", "-o", "json"]
        proc = subprocess.run(cmd, env=self.bed.backend_env, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"statectl prune failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        report = json.loads(proc.stdout)
        return {
            "seconds": round(seconds, 2),
            "peak_rss_mib": round(int(proc.stderr.strip().splitlines()[-1]) / 1024, 1),
            "deleted": {k: {"rows": t["rows"], "objects": t["objects"]} for k, t in report["deleted"].items()},
            "exit_code": report["exit_code"],
            **self.bed.request_fields(self.bed.requests.since(before)),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", choices=STORES, default="s3", help="the object store (default: moto's S3)")
    parser.add_argument("--expired", type=int, default=20_000, help="expired rows, each with an object")
    parser.add_argument("--live", type=int, default=2_000, help="live rows, each with an object")
    parser.add_argument("--seed", type=int, default=20260101)
    args = parser.parse_args()
    # A killed run still stops its PostgreSQL cluster and its object store, and removes its files.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    report: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "load_before": load()}}
    with tempfile.TemporaryDirectory(prefix="statectl-bench-prune-") as tmp:
        bed = Bed(Path(tmp), 0, "gzip", args.store)
        try:
            started = time.perf_counter()
            bed.build_schema_and_run()
            prune_bed = PruneBed(bed)
            report["data"] = prune_bed.prepare(args.expired, args.live, args.seed)
            report["config"] = {"base_path": bed.base, "compression": "gzip", "store": bed.label}
            log(f"set up {report['data']} in {time.perf_counter() - started:.1f} s")

            # Warm-up for both tools (bytecode cache, page cache): a dry run and the baseline's imports.
            prune_bed.reset()
            dry = subprocess.run(
                [STATECTL, "prune", "--dry-run", "-o", "json"], env=bed.backend_env, capture_output=True, text=True
            )
            report["plan"] = json.loads(dry.stdout)["plan"]["categories"]["expired"] | {"first": None}
            bed.naive(NAIVE_PRUNE.replace("rows = cur.fetchall()", "rows = []"))

            log("statectl prune")
            mine = prune_bed.statectl()
            mine_state = prune_bed.state()
            log(f"  {mine} {mine_state}")

            prune_bed.reset()
            log("naive loop")
            naive = bed.naive(NAIVE_PRUNE)
            naive_state = prune_bed.state()
            log(f"  {naive} {naive_state}")
        finally:
            bed.close()
    report["statectl"] = mine
    report["naive"] = naive
    report["ratio_naive_over_statectl"] = round(naive["seconds"] / mine["seconds"], 1)
    # Requests only: not the "(client) closed-before-answer" events the GCS emulator counts.
    sent = sum(n for kind, n in naive["requests"].items() if not kind.startswith("(client)"))
    per_key = round(sent / max(naive["rows"], 1), 2)
    if args.store == "s3":
        report["naive_s3_requests_per_key"] = per_key
    report["requests_per_expired_key"] = {
        "expired_keys": report["data"]["expired_rows"],
        "statectl": per_object(mine["requests"], report["data"]["expired_rows"]),
        "naive": per_object(naive["requests"], report["data"]["expired_rows"]),
        "naive_total": per_key,
    }
    report["checks"] = {
        "same_rows_left": mine_state["rows_md5"] == naive_state["rows_md5"],
        "statectl_state": mine_state,
        "naive_state": naive_state,
    }
    report["machine"]["load_after"] = load()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
