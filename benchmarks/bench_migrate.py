"""`statectl migrate` against the naive loop a user would write, side by side in one run (not a timed test).

Real components only: a throwaway PostgreSQL cluster (Debian's binaries) built by `airflow db migrate`,
an object store on 127.0.0.1 reached through an Airflow connection (AIRFLOW_CONN_<ID>), one real
`dag.test()` run for the dag run and task instances, then N task_state_store rows of mixed sizes
(log-uniform, fixed seed) written as plain JSON, as workers without a backend write them.

--store (benchmarks/stores.py): s3-latency (default) is moto's S3 behind benchmarks/latency_bed.py's delays, at
each of --latencies (benchmarks/common.py: one server, the delays set per measurement); s3 is moto's S3 server as
it is; gcs the in-memory gcp-storage-emulator; azure Azurite. Each counts the requests it serves by kind.

1. At each latency, the three directions, statectl against the naive loop (the provider's serialize /
   deserialize or ObjectStoragePath calls, one row at a time, a commit per row), each timed as a whole
   process with the same Airflow configuration and the same starting state:
   - to-bucket: plain rows -> objects (threshold 1 KiB, gzip) and ref rows;
   - relocate: those objects to another base path (`relocated/` in the same bucket, through a second connection:
     other credentials for any tool, so no server-side copy) with the same compression;
   - to-metastore (configured with the relocated base path): every value back into its row, objects deleted.
   statectl runs the chain first (to-bucket, relocate, to-metastore), then, from the seeded rows again, the naive
   loops run it; each end state is compared with statectl's (md5 of the value column; objects left).
   --naive-sample N runs the naive to-bucket on every k-th row (N in all) and so the chain on those rows, and
   extrapolates each time linearly (labelled).
   Floors (benchmarks/common.py): to-bucket 1 PUT per object and gzip -9 of their values (the provider's level);
   relocate 1 GET + 1 PUT per object and ceil(objects/1000) bulk deletes; to-metastore 1 GET per object, the bulk
   deletes and gunzip of the objects; each with the process start that resolves the connection.
2. Peak RSS of `statectl migrate to-bucket` at --rows vs --big-rows rows (both with values up to
   --mem-max-bytes so that the 100k-row bucket stays a sane size), undelayed.

Prints a table; writes every figure as JSON to --out (default: a file in the temp directory, named on stderr).

Usage: .venv/bin/python benchmarks/bench_migrate.py [--store s3-latency|s3|gcs|azure] [--latencies 0,20]
       [--rows 20000] [--naive-sample N] [--big-rows 100000] [--skip-memory | --memory-only]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402
    NAIVE_SAMPLING,
    STATECTL,
    Latency,
    Work,
    add_latency_options,
    at_latency,
    floor,
    gunzip_cpu,
    heading,
    latencies,
    load,
    log,
    new_report,
    process_start_cpu,
    run_naive,
    run_process,
    sample_of,
    table,
    thread_cpu,
    undelayed,
    write_json,
)
from benchmarks.stores import Kind, Store, by_kind, start_store  # noqa: E402
from tests.infra import (  # noqa: E402
    OBJECT_STORAGE_BACKEND,
    airflow_base_env,
    airflow_db_migrate,
    find_pg_bin_dir,
    run_dag,
    start_postgres,
)

__all__ = ["STATECTL", "Bed", "load", "log", "make_value", "value_sizes"]  # what the other benchmarks import

DB_NAME = "airflow_bench"
DAG_ID = "bench_migrate"
SEED_TABLE = "bench_seed_rows"
RELOCATE_CONN = "statectl_relocated"  # a second connection to the same store: other credentials, for any tool
TARGETS = {"naive_over_statectl": 20, "statectl_over_floor": 1.5}  # issue 11, at 20 ms

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

NAIVE_PRELUDE = (
    NAIVE_SAMPLING
    + """
import json, sys, time, psycopg2
from airflow.sdk import ObjectStoragePath
from airflow.sdk.state import TaskScope
from airflow.providers.common.io.state_store.backend import StateStoreObjectStorageBackend

backend = StateStoreObjectStorageBackend()
conn = psycopg2.connect(sys.argv[1])
cur = conn.cursor()
REF = '{"__airflow_state_ref__": '
"""
)

# What a user would write to move every row to the bucket: the provider's own serialize, one commit per row.
NAIVE_TO_BUCKET = (
    NAIVE_PRELUDE
    + """
cur.execute('SELECT id, dag_id, run_id, task_id, map_index, "key", value FROM task_state_store ORDER BY id')
rows = sample(cur.fetchall())
started = time.perf_counter()
for row_id, dag_id, run_id, task_id, map_index, key, value in rows:
    scope = TaskScope(dag_id=dag_id, run_id=run_id, task_id=task_id, map_index=map_index)
    ref = backend.serialize_task_state_store_to_ref(value=json.loads(value), key=key, scope=scope)
    cur.execute("UPDATE task_state_store SET value = %s, updated_at = now() WHERE id = %s",
                (json.dumps({"__airflow_state_ref__": ref}), row_id))
    conn.commit()
done(len(rows), started)
"""
)

# ... and back: the provider's deserialize, update + commit per row, then delete the object.
NAIVE_TO_METASTORE = (
    NAIVE_PRELUDE
    + """
cur.execute('SELECT id, value FROM task_state_store WHERE value LIKE %s ORDER BY id', (REF + "%",))
rows = sample(cur.fetchall())
started = time.perf_counter()
for row_id, value in rows:
    ref = json.loads(value)["__airflow_state_ref__"]
    restored = backend.deserialize_task_state_store_from_ref(ref)
    cur.execute("UPDATE task_state_store SET value = %s, updated_at = now() WHERE id = %s",
                (json.dumps(restored), row_id))
    conn.commit()
    if ref.startswith("s3://"):
        ObjectStoragePath(ref).unlink(missing_ok=True)
done(len(rows), started)
"""
)

# ... and to move the objects to another base path with the same compression: the bytes as they are, read from the
# old path and written to the new one, the row updated and committed, then the old object deleted.
NAIVE_RELOCATE = (
    NAIVE_PRELUDE
    + """
old, new = sys.argv[2], sys.argv[3]
under_old = REF + json.dumps(old + "/")[:-1] + "%"  # the rows whose object is under the old base path
cur.execute('SELECT id, value FROM task_state_store WHERE value LIKE %s ORDER BY id', (under_old,))
rows = sample(cur.fetchall())
started = time.perf_counter()
for row_id, value in rows:
    ref = json.loads(value)["__airflow_state_ref__"]
    source, target = ObjectStoragePath(ref), ObjectStoragePath(new + ref[len(old):])
    target.write_bytes(source.read_bytes())
    cur.execute("UPDATE task_state_store SET value = %s, updated_at = now() WHERE id = %s",
                (json.dumps({"__airflow_state_ref__": str(target)}), row_id))
    conn.commit()
    source.unlink()
done(len(rows), started)
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


class Bed:
    """PostgreSQL + an object store (--store) + Airflow configuration shared by every run. On the latency bed the
    store is undelayed except inside benchmarks.common.at_latency (the set-up between runs costs no latency)."""

    def __init__(self, work: Path, threshold: int, compression: str, store: str = "s3-latency") -> None:
        self.work = work
        self.concurrency = 16  # statectl's --concurrency (the benchmarks set theirs)
        bin_dir = find_pg_bin_dir()
        if bin_dir is None:
            sys.exit("no PostgreSQL server binaries (apt-get install -y postgresql)")
        self.pg = start_postgres(bin_dir)
        try:
            self.store: Store = start_store(store, work)
            undelayed(self.store)
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
        self.threshold = threshold
        # The worker-side configuration both tools run with (to-metastore reads the same base path).
        self.backend_env = dict(self.env)
        self.backend_env.update(
            AIRFLOW__WORKERS__STATE_STORE_BACKEND=OBJECT_STORAGE_BACKEND,
            AIRFLOW__COMMON_IO__STATE_STORE_OBJECTSTORAGE_PATH=self.base,
            AIRFLOW__COMMON_IO__STATE_STORE_OBJECTSTORAGE_THRESHOLD=str(threshold),
            AIRFLOW__COMMON_IO__STATE_STORE_OBJECTSTORAGE_COMPRESSION=compression,
        )
        self.backend_env.update(self.store.conn_env_as(RELOCATE_CONN))  # relocate's target, defined as for workers
        # PYTHONDONTWRITEBYTECODE may be set on this machine: every process would recompile Airflow
        # (~5 s each). A private bytecode cache gives both tools the start-up of a normal install.
        self.backend_env.pop("PYTHONDONTWRITEBYTECODE", None)
        self.backend_env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
        self.dsn = self.pg.dsn(DB_NAME)
        self.sample_ids: list[int] = []  # the rows a sampled naive to-bucket takes (state() fingerprints them too)

    @property
    def label(self) -> str:
        if self.store.name == "s3-latency":  # its delays change per measurement (benchmarks.common.at_latency)
            return (
                "PostgreSQL + moto S3 behind the latency bed (per measurement: the latency per request, "
                "3x that per listing page / bulk delete unless --list-latencies)"
            )
        return "PostgreSQL + moto S3" if self.store.name == "s3" else f"PostgreSQL + {self.store.label}"

    def relocated(self) -> tuple[str, dict[str, str]]:
        """relocate's target base path (through a second connection) and the configuration that reads it."""
        base = self.store.url("relocated", conn_id=RELOCATE_CONN)
        return base, {**self.backend_env, "AIRFLOW__COMMON_IO__STATE_STORE_OBJECTSTORAGE_PATH": base}

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
        return str(self.sql("SELECT run_id FROM dag_run WHERE dag_id = %s", params=(DAG_ID,))[0][0])

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
        """A fingerprint of the end state: the value column (by id; and of the naive sample's rows), the objects."""
        digest, wrapped = self.sql(
            "SELECT md5(string_agg(md5(value), '' ORDER BY id)), "
            "COUNT(*) FILTER (WHERE value LIKE %s) FROM task_state_store",
            params=(f'{{"__airflow_state_ref__": "{self.store.scheme}://%',),
        )[0]
        state = {"values_md5": digest, "object_refs": int(wrapped), "objects": len(self.object_keys())}
        if self.sample_ids:
            state["sample_md5"] = self.sql(
                "SELECT md5(string_agg(md5(value), '' ORDER BY id)) FROM task_state_store WHERE id = ANY(%s)",
                params=(self.sample_ids,),
            )[0][0]
        return state

    # -- the runs -----------------------------------------------------------------------
    def statectl(self, direction: str, *options: str, env: dict[str, str] | None = None) -> dict[str, Any]:
        cmd = [STATECTL, "--concurrency", str(self.concurrency), "migrate", direction, "--yes", "-o", "json", *options]
        run = run_process(cmd, env or self.backend_env, self.requests)
        summary = json.loads(run.pop("stdout"))
        counts = run.pop("requests")
        return {
            **run,
            "actions": {k: v["rows"] for k, v in summary["actions"].items() if v["rows"]},
            "objects_written": summary["objects_written"],
            "objects_deleted": summary["objects_deleted"],
            "ok": summary["ok"],
            **self._request_fields(counts),
        }

    def request_fields(self, counts: Counter[Kind]) -> dict[str, Any]:
        """The requests a run sent: by method as "s3_requests" on S3 (as before --store), and by kind."""
        return self._request_fields(by_kind(counts))

    def _request_fields(self, kinds: dict[str, int]) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        if self.store.name == "s3":
            methods: Counter[str] = Counter()
            for kind, n in kinds.items():
                methods[kind.split(" ", 1)[0]] += n
            fields["s3_requests"] = dict(methods)
        fields["requests"] = kinds
        return fields

    def naive(
        self,
        code: str,
        *args: str,
        env: dict[str, str] | None = None,
        sample: int = 0,
        total: int | None = None,
        fixed: dict[str, int] | None = None,
    ) -> dict[str, Any]:
        """A naive loop (``code`` with the DSN and ``args``), on ``sample`` of its rows (0: all), extrapolated to
        ``total`` rows when it did fewer (benchmarks.common.run_naive)."""
        env = env or self.backend_env
        return run_naive(code, [self.dsn, *args], env, self.requests, sample=sample, total=total, fixed=fixed)


def cpu_work(bed: Bed, compression: str) -> dict[str, Any]:
    """The unavoidable CPU of the three directions, measured here once: the process start that resolves the
    connection, gzip (the provider's level, 9) of the values that go to objects, and gunzip of those objects."""
    import gzip

    values = [v.encode() for (v,) in bed.sql(f"SELECT value FROM {SEED_TABLE} ORDER BY id")]
    bound = [v for v in values if len(v) >= bed.threshold]  # the rows' text is the value's json.dumps
    blobs: list[bytes] = []
    gzip_s = gunzip_s = 0.0
    if compression == "gzip":
        gzip_s = thread_cpu(lambda: blobs.extend(gzip.compress(v, 9, mtime=0) for v in bound))
        gunzip_s = gunzip_cpu(blobs)
    return {
        "objects": len(bound),
        "object_value_bytes": sum(map(len, bound)),
        "start_s": process_start_cpu(bed.backend_env, bed.store),
        "gzip_s": gzip_s,
        "gunzip_s": gunzip_s,
    }


def works(cpu: dict[str, Any]) -> dict[str, Work]:
    objects, start = cpu["objects"], cpu["start_s"]
    bulk = math.ceil(objects / 1000)
    return {
        "to-bucket": Work(
            f"1 PUT per object ({objects:,})", ops=objects, cpu={"start": start, "gzip -9": cpu["gzip_s"]}
        ),
        "relocate": Work(
            f"1 GET + 1 PUT per object ({objects:,}), bulk deletes: {bulk}",
            ops=2 * objects,
            bulk=bulk,
            cpu={"start": start},
        ),
        "to-metastore": Work(
            f"1 GET per object ({objects:,}), bulk deletes: {bulk}",
            ops=objects,
            bulk=bulk,
            cpu={"start": start, "gunzip": cpu["gunzip_s"]},
        ),
    }


def at_one_latency(bed: Bed, latency: Latency, args: argparse.Namespace, plain: dict[str, Any]) -> dict[str, Any]:
    """statectl's chain, then the naive chain, from the seeded rows each time."""
    store, sample = bed.store, args.naive_sample
    new_base, relocated_env = bed.relocated()
    runs: dict[str, Any] = {}
    states: dict[str, Any] = {}
    bed.reset()
    for tool in ("statectl", "naive"):
        for direction in ("to-bucket", "relocate", "to-metastore"):
            log(f"{latency.label}: {tool} {direction}")
            with at_latency(store, latency):
                if tool == "statectl":
                    options = ("--to", new_base) if direction == "relocate" else ()
                    env = relocated_env if direction == "to-metastore" else None
                    run = bed.statectl(direction, *options, env=env)
                elif direction == "to-bucket":
                    run = bed.naive(NAIVE_TO_BUCKET, sample=sample, total=plain["rows"])
                elif direction == "relocate":
                    run = bed.naive(NAIVE_RELOCATE, bed.base, new_base, total=states["statectl to-bucket"]["objects"])
                else:
                    code = naive_to_metastore(store.scheme)
                    run = bed.naive(code, env=relocated_env, total=states["statectl to-bucket"]["object_refs"])
            runs[f"{tool} {direction}"] = run
            states[f"{tool} {direction}"] = bed.state()
            log(f"  {run['seconds']} s; {run['requests']}")
        bed.reset()
    key = "sample_md5" if sample else "values_md5"
    checks = {
        f"{d}_same_rows_as_statectl": states[f"naive {d}"][key] == states[f"statectl {d}"][key]
        for d in ("to-bucket", "relocate")
    }
    checks.update(
        statectl_to_metastore_back_to_plain_rows=states["statectl to-metastore"]["values_md5"] == plain["values_md5"],
        naive_to_metastore_back_to_plain_rows=states["naive to-metastore"]["values_md5"] == plain["values_md5"],
        objects_after_to_metastore=states["statectl to-metastore"]["objects"],
        objects_after_naive_to_metastore=states["naive to-metastore"]["objects"],
    )
    if not sample:
        checks["to_bucket_same_object_count_as_naive"] = (
            states["statectl to-bucket"]["objects"] == states["naive to-bucket"]["objects"]
        )
    return {"runs": runs, "states": states, "checks": checks}


def side_by_side(bed: Bed, args: argparse.Namespace) -> dict[str, Any]:
    seeded = bed.seed(args.rows, args.min_bytes, args.max_bytes, args.seed)
    log(f"seeded {seeded}")
    bed.reset()
    plain = {**bed.state(), "rows": seeded["rows"]}
    if args.naive_sample:
        ids = [i for (i,) in bed.sql("SELECT id FROM task_state_store ORDER BY id")]
        bed.sample_ids = sample_of(ids, args.naive_sample)
    log("CPU of the unavoidable work (process start, gzip -9 and gunzip of the objects' values)")
    cpu = cpu_work(bed, args.compression)
    log(f"  {cpu}")
    # Warm-up (bytecode cache, page cache) for both tools: a dry run and the baseline's imports.
    bed.statectl("to-bucket", "--dry-run")
    bed.naive(NAIVE_PRELUDE + "print(0)")

    needs = works(cpu)
    per_latency, results = {}, []
    for latency in latencies(args):
        measured = at_one_latency(bed, latency, args, plain)
        per_latency[latency.label] = measured
        log(f"  checks: {measured['checks']}")
        for direction in ("to-bucket", "relocate", "to-metastore"):
            results.append(
                {
                    "operation": f"migrate {direction}",
                    "latency": latency.label,
                    "statectl": measured["runs"][f"statectl {direction}"],
                    "naive": measured["runs"][f"naive {direction}"],
                    "floor": floor(needs[direction], latency, args.concurrency),
                    "targets": TARGETS if latency.op_ms else {},
                }
            )
    return {
        "data": {
            **seeded,
            "objects": cpu["objects"],
            "value_sizes": f"log-uniform {args.min_bytes}..{args.max_bytes} B, seed {args.seed}",
        },
        "cpu": cpu,
        "latencies": per_latency,
        "results": results,
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
    add_latency_options(parser)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--big-rows", type=int, default=100_000)
    parser.add_argument("--min-bytes", type=int, default=100)
    parser.add_argument("--max-bytes", type=int, default=200_000)
    parser.add_argument("--mem-max-bytes", type=int, default=20_000, help="largest value in the memory runs")
    parser.add_argument("--threshold", type=int, default=1024)
    parser.add_argument("--compression", default="gzip")
    parser.add_argument("--seed", type=int, default=20260101)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--memory-only", action="store_true", help="only the peak-memory runs (undelayed)")
    args = parser.parse_args()
    if args.memory_only and args.skip_memory:
        parser.error("--memory-only and --skip-memory exclude each other")
    latencies(args)  # refuse bad --latencies before the set-up
    report = new_report()  # (Bed stops what it had started if SIGTERM comes while it starts)
    report["config"] = {"threshold": args.threshold, "compression": args.compression, "concurrency": args.concurrency}
    with tempfile.TemporaryDirectory(prefix="statectl-bench-migrate-") as tmp:
        bed = Bed(Path(tmp), args.threshold, args.compression, args.store)
        bed.concurrency = args.concurrency
        report["config"]["store"] = bed.label
        try:
            started = time.perf_counter()
            run_id = bed.build_schema_and_run()
            report["config"]["base_path"] = bed.base
            report["setup_s"] = round(time.perf_counter() - started, 1)
            log(f"schema + dag run {run_id} in {report['setup_s']} s")
            if not args.memory_only:
                report.update(side_by_side(bed, args))
            if not args.skip_memory:
                report["peak_memory_to_bucket"] = memory(bed, args)
        finally:
            bed.close()
    write_json(report, args.out, f"bench-migrate-{args.store}-{args.rows}")
    print(render(report, args))


def render(report: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [heading(report)]
    if "data" in report:
        data = report["data"]
        lines += [
            f"{data['rows']:,} rows ({data['value_sizes']}, {data['bench_value_bytes'] / 1e6:.0f} MB of values); "
            f"threshold {args.threshold} B, {args.compression}: {data['objects']:,} objects; concurrency "
            f"{args.concurrency}",
            "",
            *table(report["results"]),
            "",
        ]
        for label, measured in report["latencies"].items():
            lines.append(f"checks at {label}: " + ", ".join(f"{k}={v}" for k, v in measured["checks"].items()))
    mem = report.get("peak_memory_to_bucket")
    if mem:
        runs = ", ".join(f"{int(n):,} rows: {r['peak_rss_mib']} MiB" for n, r in mem["runs"].items())
        lines.append(
            f"peak RSS of migrate to-bucket ({mem['value_sizes']}): {runs}; ratio {mem['peak_ratio_big_over_small']}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
