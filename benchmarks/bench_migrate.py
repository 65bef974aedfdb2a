"""`statectl migrate` against the naive loop a user would write, side by side in one run (not a timed test).

Real components only: a throwaway PostgreSQL cluster (Debian's binaries) built by `airflow db migrate`,
an object store on 127.0.0.1 reached through an Airflow connection (AIRFLOW_CONN_<ID>), one real
`dag.test()` run for the dag run and task instances, then N task_state_store rows of mixed sizes
(log-uniform, fixed seed) written as plain JSON, as workers without a backend write them.

--store (benchmarks/stores.py): s3 (default) is moto's S3 server through an aws connection; gcs is the
in-memory gcp-storage-emulator through a google_cloud_platform connection; azure is Azurite (in memory)
through a wasb connection with a connection_string. Each counts the requests it serves, by HTTP method
and kind (list, upload, download, metadata, delete, ...), also per object.

1. to-bucket and to-metastore, each direction timed as a whole process, statectl against the naive
   baseline (a loop over the rows calling the provider's serialize/deserialize and committing per
   row), same Airflow configuration, same starting state (rows restored from a copy, bucket emptied):
   statectl to-bucket, naive to-bucket, naive to-metastore, statectl to-bucket, statectl to-metastore.
   Every run's end state is checked against the others (md5 of the value column, objects left).
   Then the store's floor: the objects fetched and uploaded again with bare concurrent requests.
2. Peak RSS of `statectl migrate to-bucket` at --rows vs --big-rows rows (both with values up to
   --mem-max-bytes so that the 100k-row bucket stays a sane size).

Usage: .venv/bin/python benchmarks/bench_migrate.py [--store s3|gcs|azure] [--rows 20000] [--big-rows 100000]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.stores import STORES, Kind, Store, by_kind, by_method, per_object, start_store  # noqa: E402
from tests.infra import (  # noqa: E402
    OBJECT_STORAGE_BACKEND,
    PYTHON,
    airflow_base_env,
    airflow_db_migrate,
    find_pg_bin_dir,
    run_dag,
    start_postgres,
)

STATECTL = str(Path(sys.executable).parent / "statectl")
DB_NAME = "airflow_bench"
DAG_ID = "bench_migrate"
SEED_TABLE = "bench_seed_rows"

DAG_SOURCE = f"""
from datetime import datetime
from airflow.sdk import DAG, task

with DAG(dag_id="{DAG_ID}", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
    @task
    def single(task_state_store=None):
        task_state_store.set("written_by_dag", {{"task": "single"}})

    @task
    def mapped(i: int, task_state_store=None):
        task_state_store.set("written_by_dag", {{"task": "mapped", "i": i}})

    single()
    mapped.expand(i=list(range(8)))

if __name__ == "__main__":
    dag.test()
"""

NAIVE_PRELUDE = """
import json, sys, psycopg2
from airflow.sdk import ObjectStoragePath
from airflow.sdk.state import TaskScope
from airflow.providers.common.io.state_store.backend import StateStoreObjectStorageBackend

backend = StateStoreObjectStorageBackend()
conn = psycopg2.connect(sys.argv[1])
cur = conn.cursor()
cur.execute('SELECT id, dag_id, run_id, task_id, map_index, "key", value FROM task_state_store ORDER BY id')
rows = cur.fetchall()
"""

# What a user would write to move every row to the bucket: the provider's own serialize, one commit per row.
NAIVE_TO_BUCKET = (
    NAIVE_PRELUDE
    + """
for row_id, dag_id, run_id, task_id, map_index, key, value in rows:
    scope = TaskScope(dag_id=dag_id, run_id=run_id, task_id=task_id, map_index=map_index)
    ref = backend.serialize_task_state_store_to_ref(value=json.loads(value), key=key, scope=scope)
    cur.execute("UPDATE task_state_store SET value = %s, updated_at = now() WHERE id = %s",
                (json.dumps({"__airflow_state_ref__": ref}), row_id))
    conn.commit()
print(len(rows))
"""
)

# ... and back: the provider's deserialize, update + commit per row, then delete the object.
NAIVE_TO_METASTORE = (
    NAIVE_PRELUDE
    + """
for row_id, dag_id, run_id, task_id, map_index, key, value in rows:
    ref = json.loads(value)["__airflow_state_ref__"]
    restored = backend.deserialize_task_state_store_from_ref(ref)
    cur.execute("UPDATE task_state_store SET value = %s, updated_at = now() WHERE id = %s",
                (json.dumps(restored), row_id))
    conn.commit()
    if ref.startswith("s3://"):
        ObjectStoragePath(ref).unlink(missing_ok=True)
print(len(rows))
"""
)


def naive_to_metastore(scheme: str) -> str:
    """NAIVE_TO_METASTORE for a store whose object refs start with `scheme`:// (inline refs are JSON texts)."""
    return NAIVE_TO_METASTORE.replace('ref.startswith("s3://")', f"ref.startswith({scheme + '://'!r})")


_WORDS = ["alpha", "beta", "gamma", "delta", "offset", "partition", "watermark", "cursor", "shard"]


def _text_pool(rng: random.Random, size: int) -> str:
    """JSON-safe text that compresses about as well as real state (words and numbers)."""
    out: list[str] = []
    length = 0
    while length < size:
        word = f"{rng.choice(_WORDS)}-{rng.randrange(100000)}"
        out.append(word)
        length += len(word) + 1
    return " ".join(out)[:size]


def value_sizes(count: int, lo: int, hi: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    a, b = math.log(lo), math.log(hi)
    return [int(math.exp(rng.uniform(a, b))) for _ in range(count)]


def make_value(seq: int, size: int, pool: str, rng: random.Random) -> str:
    """json.dumps of a dict whose text is exactly `size` bytes (at least the skeleton's)."""
    head = json.dumps({"seq": seq, "blob": ""})
    room = max(size - len(head), 0)
    start = rng.randrange(len(pool) - room) if room < len(pool) else 0
    return json.dumps({"seq": seq, "blob": pool[start : start + room]})


# The emulator's own limit, for scale: the objects statectl wrote, fetched (timed: what any tool must at
# least do to move them into the metastore) and then uploaded again, already compressed (timed: the least
# any tool must do to move them to the bucket), with as many requests in flight as statectl uses. The store's
# own fsspec filesystem, built directly (no Airflow), in one request per object.
FLOOR = """
import asyncio, json, sys, time
from fsspec.asyn import sync
spec, concurrency = json.loads(sys.argv[1]), int(sys.argv[2])
bucket = spec["bucket"]
cat_kwargs, pipe_kwargs = {}, {}
if spec["store"] == "s3":
    import s3fs
    fs = s3fs.S3FileSystem(key="statectl", secret="statectl", client_kwargs={"endpoint_url": spec["endpoint"],
                           "region_name": "us-east-1"})
    cat_kwargs = {"max_concurrency": 1}
elif spec["store"] == "gcs":
    import gcsfs
    fs = gcsfs.GCSFileSystem(endpoint_url=spec["endpoint"], token="anon", project="test")
else:
    import adlfs
    fs = adlfs.AzureBlobFileSystem(connection_string=spec["connection_string"])
    pipe_kwargs = {"overwrite": True}
keys = sorted(fs.find(bucket))
async def run_all(make):
    semaphore = asyncio.Semaphore(concurrency)
    async def one(key):
        async with semaphore:
            return await make(key)
    return await asyncio.gather(*(one(k) for k in keys))
start = time.perf_counter()
bodies = sync(fs.loop, run_all, lambda k: fs._cat_file(k, **cat_kwargs))
get_s = time.perf_counter() - start
fs.rm(keys)
payload = dict(zip(keys, bodies))
start = time.perf_counter()
sync(fs.loop, run_all, lambda k: fs._pipe_file(k, payload[k], **pipe_kwargs))
put_s = time.perf_counter() - start
print(json.dumps({"objects": len(keys), "bytes": sum(map(len, bodies)), "get_s": round(get_s, 2),
                  "put_s": round(put_s, 2)}))
"""


class Bed:
    """PostgreSQL + an object store (--store) + Airflow configuration shared by every run."""

    def __init__(self, work: Path, threshold: int, compression: str, store: str = "s3") -> None:
        self.work = work
        bin_dir = find_pg_bin_dir()
        if bin_dir is None:
            sys.exit("no PostgreSQL server binaries (apt-get install -y postgresql)")
        self.pg = start_postgres(bin_dir)
        try:
            self.store: Store = start_store(store, work)
        except BaseException:
            self.pg.stop()
            raise
        try:
            self._configure(threshold, compression)
        except BaseException:
            self.close()
            raise

    def _configure(self, threshold: int, compression: str) -> None:
        work = self.work
        self.requests = self.store.requests
        self.pg.create_database(DB_NAME)
        home = work / "airflow"
        home.mkdir()
        self.env = airflow_base_env(home, self.pg.url(DB_NAME))
        for name in self.store.drop_env:
            self.env.pop(name, None)
        self.env.update(self.store.conn_env)
        self.base = self.store.url("state")
        # The worker-side configuration both tools run with (to-metastore reads the same base path).
        self.backend_env = dict(self.env)
        self.backend_env.update(
            AIRFLOW__WORKERS__STATE_STORE_BACKEND=OBJECT_STORAGE_BACKEND,
            AIRFLOW__COMMON_IO__STATE_STORE_OBJECTSTORAGE_PATH=self.base,
            AIRFLOW__COMMON_IO__STATE_STORE_OBJECTSTORAGE_THRESHOLD=str(threshold),
            AIRFLOW__COMMON_IO__STATE_STORE_OBJECTSTORAGE_COMPRESSION=compression,
        )
        # PYTHONDONTWRITEBYTECODE may be set on this machine: every process would recompile Airflow
        # (~5 s each). A private bytecode cache gives both tools the start-up of a normal install.
        self.backend_env.pop("PYTHONDONTWRITEBYTECODE", None)
        self.backend_env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
        self.dsn = self.pg.dsn(DB_NAME)

    @property
    def label(self) -> str:
        return "PostgreSQL + moto S3" if self.store.name == "s3" else f"PostgreSQL + {self.store.label}"

    def close(self) -> None:
        try:
            self.store.close()
        finally:
            self.pg.stop()

    def sql(self, *statements: str, params: Any = None) -> list[tuple[Any, ...]]:
        import psycopg2

        conn = psycopg2.connect(self.dsn)
        try:
            cur = conn.cursor()
            rows: list[tuple[Any, ...]] = []
            for stmt in statements:
                cur.execute(stmt, params)
                if cur.description is not None:
                    rows = cur.fetchall()
            conn.commit()
            return rows
        finally:
            conn.close()

    # -- set-up -----------------------------------------------------------------------
    def build_schema_and_run(self) -> str:
        airflow_db_migrate(self.env)
        run_dag(self.env, DAG_SOURCE, self.work)  # plain rows: no worker backend configured
        return self.sql("SELECT run_id FROM dag_run WHERE dag_id = %s", params=(DAG_ID,))[0][0]

    def seed(self, count: int, lo: int, hi: int, seed: int) -> dict[str, int]:
        """Replace the bench rows with `count` plain rows and keep a copy to restore from."""
        import psycopg2
        from psycopg2.extras import execute_values

        dag_run_id, run_id = self.sql("SELECT id, run_id FROM dag_run WHERE dag_id = %s", params=(DAG_ID,))[0]
        tis = self.sql("SELECT task_id, map_index FROM task_instance WHERE dag_id = %s ORDER BY 1, 2", params=(DAG_ID,))
        sizes = value_sizes(count, lo, hi, seed)
        rng = random.Random(seed + 1)
        pool = _text_pool(rng, hi + 1024)
        conn = psycopg2.connect(self.dsn)
        cur = conn.cursor()
        cur.execute(f"DROP TABLE IF EXISTS {SEED_TABLE}")
        cur.execute("DELETE FROM task_state_store WHERE \"key\" LIKE 'bench_%%'")
        total = 0
        chunk: list[tuple[Any, ...]] = []
        sql = (
            'INSERT INTO task_state_store (dag_run_id, task_id, map_index, "key", dag_id, run_id, value, '
            "updated_at, expires_at) VALUES %s"
        )
        for i, size in enumerate(sizes):
            task_id, map_index = tis[i % len(tis)]
            value = make_value(i, size, pool, rng)
            total += len(value.encode())
            chunk.append((dag_run_id, task_id, map_index, f"bench_{i:07d}", DAG_ID, run_id, value))
            if len(chunk) == 1000:
                execute_values(cur, sql, chunk, template="(%s, %s, %s, %s, %s, %s, %s, now(), NULL)")
                chunk = []
        if chunk:
            execute_values(cur, sql, chunk, template="(%s, %s, %s, %s, %s, %s, %s, now(), NULL)")
        cur.execute(f"CREATE TABLE {SEED_TABLE} AS SELECT * FROM task_state_store")
        conn.commit()
        conn.close()
        rows = self.sql("SELECT COUNT(*), COALESCE(SUM(octet_length(value)), 0) FROM task_state_store")[0]
        return {"bench_rows": count, "rows": int(rows[0]), "bytes": int(rows[1]), "bench_value_bytes": total}

    # -- between runs -----------------------------------------------------------------
    def reset(self) -> None:
        """Every row back to its plain seeded value; an empty bucket."""
        self.sql(
            "TRUNCATE task_state_store",
            f"INSERT INTO task_state_store SELECT * FROM {SEED_TABLE}",
        )
        self.sql("ANALYZE task_state_store")
        self.empty_bucket()

    def empty_bucket(self) -> None:
        self.store.empty()

    def object_keys(self) -> list[str]:
        return self.store.keys()

    def state(self) -> dict[str, Any]:
        """A fingerprint of the end state: the value column (by id) and the objects."""
        digest, wrapped = self.sql(
            "SELECT md5(string_agg(md5(value), '' ORDER BY id)), "
            "COUNT(*) FILTER (WHERE value LIKE %s) FROM task_state_store",
            params=(f'{{"__airflow_state_ref__": "{self.store.scheme}://%',),
        )[0]
        return {"values_md5": digest, "object_refs": int(wrapped), "objects": len(self.object_keys())}

    # -- the runs -----------------------------------------------------------------------
    def statectl(self, direction: str, *options: str) -> dict[str, Any]:
        cmd = ["/usr/bin/time", "-f", "%M", STATECTL, "migrate", direction, "--yes", "-o", "json", *options]
        before = self.requests.snapshot()
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=self.backend_env, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"statectl migrate {direction} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        summary = json.loads(proc.stdout)
        peak_kib = int(proc.stderr.strip().splitlines()[-1])
        return {
            "seconds": round(seconds, 2),
            "peak_rss_mib": round(peak_kib / 1024, 1),
            "actions": {k: v["rows"] for k, v in summary["actions"].items() if v["rows"]},
            "objects_written": summary["objects_written"],
            "objects_deleted": summary["objects_deleted"],
            "ok": summary["ok"],
            **self.request_fields(self.requests.since(before)),
        }

    def request_fields(self, counts: Counter[Kind]) -> dict[str, Any]:
        """The requests a run sent: by method as "s3_requests" on S3 (as before --store), and by kind."""
        fields: dict[str, Any] = {"s3_requests": by_method(counts)} if self.store.name == "s3" else {}
        fields["requests"] = by_kind(counts)
        return fields

    def naive(self, code: str) -> dict[str, Any]:
        before = self.requests.snapshot()
        start = time.perf_counter()
        proc = subprocess.run([PYTHON, "-c", code, self.dsn], env=self.backend_env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"naive baseline failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        return {
            "seconds": round(seconds, 2),
            "rows": int(proc.stdout.strip().splitlines()[-1]),
            **self.request_fields(self.requests.since(before)),
        }

    def floor(self, concurrency: int) -> dict[str, Any]:
        """Time bare concurrent GETs and PUTs of the objects in the bucket (which stay as they were)."""
        args = [PYTHON, "-c", FLOOR, json.dumps(self.store.floor_spec()), str(concurrency)]
        env = {**os.environ, **self.store.client_env()}
        proc = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"floor run failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        return json.loads(proc.stdout)


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def side_by_side(bed: Bed, args: argparse.Namespace) -> dict[str, Any]:
    seeded = bed.seed(args.rows, args.min_bytes, args.max_bytes, args.seed)
    log(f"seeded {seeded}")
    bed.reset()
    plain = bed.state()

    # Warm-up (bytecode cache, page cache) for both tools: a dry run and the baseline's imports.
    bed.statectl("to-bucket", "--dry-run")
    bed.naive(NAIVE_PRELUDE + "print(0)")
    log("statectl migrate to-bucket (1)")
    s_tb1 = bed.statectl("to-bucket")
    in_bucket = bed.state()
    log(f"  {s_tb1}")

    bed.reset()
    log("naive to-bucket")
    n_tb = bed.naive(NAIVE_TO_BUCKET)
    naive_in_bucket = bed.state()
    log(f"  {n_tb}")

    log("naive to-metastore")
    n_tm = bed.naive(naive_to_metastore(bed.store.scheme))
    naive_back = bed.state()
    log(f"  {n_tm}")

    bed.reset()
    log("statectl migrate to-bucket (2)")
    s_tb2 = bed.statectl("to-bucket")
    in_bucket2 = bed.state()
    log(f"  {s_tb2}")
    log("emulator floor: bare concurrent GETs, then PUTs of the same objects")
    floor = bed.floor(args.concurrency)
    log(f"  {floor}")
    log("statectl migrate to-metastore")
    s_tm = bed.statectl("to-metastore")
    back = bed.state()
    log(f"  {s_tm}")

    s_tb = (s_tb1["seconds"] + s_tb2["seconds"]) / 2
    objects = in_bucket["objects"]
    return {
        "data": {**seeded, "value_sizes": f"log-uniform {args.min_bytes}..{args.max_bytes} B, seed {args.seed}"},
        "to_bucket": {
            "statectl_s": round(s_tb, 2),
            "statectl_runs": [s_tb1, s_tb2],
            "naive_s": n_tb["seconds"],
            "ratio_naive_over_statectl": round(n_tb["seconds"] / s_tb, 1),
            "emulator_floor_s": floor["put_s"],
            "ratio_naive_over_floor": round(n_tb["seconds"] / floor["put_s"], 1),
            "requests_per_object": {
                "objects": objects,
                "statectl": [per_object(run["requests"], objects) for run in (s_tb1, s_tb2)],
                "naive": per_object(n_tb["requests"], objects),
            },
        },
        "to_metastore": {
            "statectl_s": s_tm["seconds"],
            "statectl_run": s_tm,
            "naive_s": n_tm["seconds"],
            "ratio_naive_over_statectl": round(n_tm["seconds"] / s_tm["seconds"], 1),
            "emulator_floor_s": floor["get_s"],
            "ratio_naive_over_floor": round(n_tm["seconds"] / floor["get_s"], 1),
            "requests_per_object": {
                "objects": objects,
                "statectl": per_object(s_tm["requests"], objects),
                "naive": per_object(n_tm["requests"], objects),
            },
        },
        "emulator_floor": floor,
        "checks": {
            "to_bucket_same_rows_as_naive": in_bucket["values_md5"] == naive_in_bucket["values_md5"],
            "to_bucket_same_object_count_as_naive": in_bucket["objects"] == naive_in_bucket["objects"],
            "to_bucket_rerun_same_rows": in_bucket2["values_md5"] == in_bucket["values_md5"],
            "to_metastore_back_to_plain_rows": back["values_md5"] == plain["values_md5"],
            "naive_to_metastore_back_to_plain_rows": naive_back["values_md5"] == plain["values_md5"],
            "objects_after_to_metastore": back["objects"],
            "objects_in_bucket_after_to_bucket": in_bucket["objects"],
            "objects_in_bucket_after_naive_to_bucket": naive_in_bucket["objects"],
            "object_refs_after_to_bucket": in_bucket["object_refs"],
        },
    }


def memory(bed: Bed, args: argparse.Namespace) -> dict[str, Any]:
    results = {}
    for count in (args.rows, args.big_rows):
        seeded = bed.seed(count, args.min_bytes, args.mem_max_bytes, args.seed)
        bed.reset()
        log(f"memory: statectl migrate to-bucket over {seeded}")
        run = bed.statectl("to-bucket")
        log(f"  {run}")
        results[str(count)] = {**seeded, **run}
    small, big = results[str(args.rows)], results[str(args.big_rows)]
    return {
        "value_sizes": f"log-uniform {args.min_bytes}..{args.mem_max_bytes} B, seed {args.seed}",
        "runs": results,
        "peak_ratio_big_over_small": round(big["peak_rss_mib"] / small["peak_rss_mib"], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", choices=STORES, default="s3", help="the object store (default: moto's S3)")
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--big-rows", type=int, default=100_000)
    parser.add_argument("--min-bytes", type=int, default=100)
    parser.add_argument("--max-bytes", type=int, default=200_000)
    parser.add_argument("--mem-max-bytes", type=int, default=20_000, help="largest value in the memory runs")
    parser.add_argument("--threshold", type=int, default=1024)
    parser.add_argument("--compression", default="gzip")
    parser.add_argument("--seed", type=int, default=20260101)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight for the floor runs")
    args = parser.parse_args()
    # A killed run still stops its PostgreSQL cluster and its object store, and removes its files (the finally
    # below; Bed stops what it had started if the signal comes while it starts).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "load_before": load()},
        "config": {"threshold": args.threshold, "compression": args.compression},
    }
    with tempfile.TemporaryDirectory(prefix="statectl-bench-migrate-") as tmp:
        bed = Bed(Path(tmp), args.threshold, args.compression, args.store)
        report["config"]["store"] = bed.label
        try:
            started = time.perf_counter()
            run_id = bed.build_schema_and_run()
            report["config"]["base_path"] = bed.base
            report["setup_s"] = round(time.perf_counter() - started, 1)
            log(f"schema + dag run {run_id} in {report['setup_s']} s")
            report.update(side_by_side(bed, args))
            if not args.skip_memory:
                report["peak_memory_to_bucket"] = memory(bed, args)
        finally:
            bed.close()
    report["machine"]["load_after"] = load()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
