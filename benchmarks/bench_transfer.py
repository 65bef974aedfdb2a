"""`statectl export` and `statectl import` against the naive loops a user would write, side by side in one run
(not a timed test).

The bed of benchmarks/bench_migrate.py: a throwaway PostgreSQL cluster built by `airflow db migrate`, an object
store on 127.0.0.1 reached through an Airflow connection (--store s3-latency, the default: moto's S3 behind
benchmarks/latency_bed.py's delays, measured at each of --latencies; or s3, gcs, azure; benchmarks/stores.py:
requests counted by kind), one real `dag.test()` run for the dag run, the task instances and the assets, and the
object storage backend configured as workers have it (--threshold 1024 and --compression gzip by default: small
values inline, larger ones in objects).

Seed: N rows of mixed sizes (log-uniform --min-bytes..--max-bytes, fixed seed): task rows spread over the run's
task instances (one plain task, eight map indexes) and every tenth row an asset row (three assets), inserted as
plain JSON and turned into worker form (objects at the provider's paths, ref rows) by one `statectl migrate
to-bucket --yes`, as bench_migrate's seed does.

1. Export: `statectl export --file snap.jsonl.gz` (whole process) against a Python script that iterates the rows
   with a plain DB-API cursor and, per row, reads the value through the installed provider
   (StateStoreObjectStorageBackend().deserialize_*_from_ref for ref rows, json.loads for plain ones) and writes one
   gzip-compressed JSON line (scope, key, value, sha256 of the canonical JSON). Both outputs must hold the same set
   of (scope, key, sha256).
2. Import: the target state wiped (rows and objects; the dag run and the assets stay), `statectl import
   snap.jsonl.gz --yes` against a script that reads statectl's snapshot line by line and, per line, writes the value
   through the provider (serialize_*_to_ref, which writes the object) and INSERTs the row, committing per row. Both
   must end in the seeded state: the same value text (and expires_at) per address, the same object keys.
   --naive-sample N: each naive loop on every k-th row / line, N in all, extrapolated linearly (labelled); the
   naive export's lines are then checked to be statectl's, and the naive import to have written its N rows.
3. At each latency (the seeded state for each): statectl export (--statectl-runs times, median), naive export,
   then per import run the state wiped: statectl import (--statectl-runs times), naive import. The floor per
   operation (benchmarks/common.py) is the larger of
   - latency: one request per object (a GET to export, a PUT to import) x the latency / --concurrency;
   - CPU: the process start that resolves the connection, plus the unavoidable gzip + JSON work on one core, timed
     over the same values once per run (export: gunzip each object and parse its JSON, dump each line and gzip the
     snapshot at --snapshot-level, statectl's level, 6; import: gunzip and parse the snapshot, dump each value and
     gzip each object at level 9, the provider's; the report also shows what the snapshot's gzip costs at levels 9
     and 1; the naive loop's gzip.open writes level 9).
4. Peak RSS (ru_maxrss of the child, via /usr/bin/time) of `statectl export` and `statectl import` at --rows and at
   --big-rows rows, with values up to --mem-max-bytes so that the bucket stays a sane size; the ratio big/small
   (each size seeded as above; --memory-only runs this part alone, --skip-memory skips it).

--profile DIR: one more run of each statectl command under cProfile (DIR/export.prof, DIR/import.prof and a text
summary of each: the main thread only, where object I/O on the filesystem's event loop shows as waiting).

Prints a table; writes every figure as JSON to --out (default: a file in the temp directory, named on stderr).

Usage: .venv/bin/python benchmarks/bench_transfer.py [--store s3-latency|s3|gcs|azure] [--latencies 0,20]
       [--rows 20000] [--naive-sample N] [--big-rows 100000] [--mem-max-bytes 20000] [--skip-memory | --memory-only]
       [--profile DIR] [--out result.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_migrate import Bed, _text_pool, make_value, value_sizes  # noqa: E402
from benchmarks.common import (  # noqa: E402
    NAIVE_SAMPLING,
    STATECTL,
    Work,
    add_latency_options,
    at_latency,
    floor,
    latencies,
    log,
    new_report,
    process_start_cpu,
    run_process,
    write_json,
)
from benchmarks.common import table as common_table  # noqa: E402
from tests.infra import PYTHON, airflow_db_migrate, run_dag  # noqa: E402

DAG_ID = "bench_transfer"
ASSETS = [(f"bench_orders_{i}", f"file:///tmp/statectl-bench-transfer/orders_{i}") for i in range(3)]
SEED_TASK, SEED_ASSET = "bench_seed_task_rows", "bench_seed_asset_rows"
DAG_TASK, DAG_ASSET = "bench_dag_task_rows", "bench_dag_asset_rows"
ASSET_EVERY = 10  # every tenth seeded row is an asset row

DAG_SOURCE = f"""
from datetime import datetime
from airflow.sdk import DAG, Asset, task

ASSETS = [Asset(name=n, uri=u) for n, u in {ASSETS!r}]

with DAG(dag_id="{DAG_ID}", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
    @task(outlets=ASSETS)
    def single(**context):
        context["task_state_store"].set("written_by_dag", {{"task": "single"}})
        for i, asset in enumerate(ASSETS):
            context["asset_state_store"][asset].set("written_by_dag", {{"asset": i}})

    @task
    def mapped(i: int, **context):
        context["task_state_store"].set("written_by_dag", {{"task": "mapped", "i": i}})

    single() >> mapped.expand(i=list(range(8)))

if __name__ == "__main__":
    dag.test()
"""

NAIVE_IMPORTS = (
    NAIVE_SAMPLING
    + """
import gzip, hashlib, json, sys, time, psycopg2
from airflow.sdk.state import AssetScope, TaskScope
from airflow.providers.common.io.state_store.backend import StateStoreObjectStorageBackend

backend = StateStoreObjectStorageBackend()
conn = psycopg2.connect(sys.argv[1])
cur = conn.cursor()
REF = "__airflow_state_ref__"
"""
)

# What a user would write to snapshot every value: a plain cursor over the rows, the provider's deserialize for
# each ref row, one gzip-compressed JSON line per row.
NAIVE_EXPORT = (
    NAIVE_IMPORTS
    + """
def decoded(text, deserialize):
    stored = json.loads(text)
    if isinstance(stored, dict) and list(stored) == [REF]:
        return deserialize(stored[REF])
    return stored  # a plain row

def line(scope, key, value, expires_at):
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    sha256 = hashlib.sha256(canonical.encode()).hexdigest()
    return json.dumps({"scope": scope, "key": key, "value": value, "sha256": sha256, "expires_at": expires_at}) + "\\n"

cur.execute('SELECT dag_id, run_id, task_id, map_index, "key", value, expires_at FROM task_state_store ORDER BY id')
rows = [("task", row) for row in cur.fetchall()]
cur.execute('SELECT a.name, a.uri, s."key", s.value FROM asset_state_store s JOIN asset a ON a.id = s.asset_id '
            'ORDER BY s.asset_id, s."key"')
rows = sample(rows + [("asset", row) for row in cur.fetchall()])
started = time.perf_counter()
with gzip.open(sys.argv[2], "wt", encoding="utf-8") as out:
    for kind, row in rows:
        if kind == "task":
            dag_id, run_id, task_id, map_index, key, text, expires_at = row
            value = decoded(text, backend.deserialize_task_state_store_from_ref)
            scope = {"dag_id": dag_id, "run_id": run_id, "task_id": task_id, "map_index": map_index}
            out.write(line(scope, key, value, expires_at.isoformat() if expires_at else None))
        else:
            name, uri, key, text = row
            value = decoded(text, backend.deserialize_asset_state_store_from_ref)
            out.write(line({"asset_name": name, "asset_uri": uri}, key, value, None))
done(len(rows), started)
"""
)

# ... and to load a snapshot (statectl's format): per line, the provider's serialize (which writes the object),
# then an INSERT and a commit.
NAIVE_IMPORT = (
    NAIVE_IMPORTS
    + """
runs, assets = {}, {}
with gzip.open(sys.argv[2], "rt", encoding="utf-8") as lines:
    next(lines)  # the header line
    lines = sample(lines)
    started = time.perf_counter()
    for text in lines:
        record = json.loads(text)
        key, value = record["key"], record["value"]
        if record["kind"] == "task":
            run = (record["dag_id"], record["run_id"])
            if run not in runs:
                cur.execute("SELECT id FROM dag_run WHERE dag_id = %s AND run_id = %s", run)
                runs[run] = cur.fetchone()[0]
            scope = TaskScope(dag_id=run[0], run_id=run[1], task_id=record["task_id"], map_index=record["map_index"])
            ref = backend.serialize_task_state_store_to_ref(value=value, key=key, scope=scope)
            cur.execute(
                'INSERT INTO task_state_store (dag_run_id, task_id, map_index, "key", dag_id, run_id, value, '
                "updated_at, expires_at) VALUES (%s, %s, %s, %s, %s, %s, %s, now(), %s)",
                (runs[run], scope.task_id, scope.map_index, key, scope.dag_id, scope.run_id,
                 json.dumps({REF: ref}), record["expires_at"]),
            )
        else:
            name = record["asset_name"]
            if name not in assets:
                cur.execute("SELECT a.id FROM asset a JOIN asset_active aa ON aa.name = a.name AND aa.uri = a.uri "
                            "WHERE a.name = %s", (name,))
                assets[name] = cur.fetchone()[0]
            ref = backend.serialize_asset_state_store_to_ref(value=value, key=key, scope=AssetScope(name=name))
            writer = record.get("last_updated_by") or {"kind": "api"}
            cur.execute(
                'INSERT INTO asset_state_store (asset_id, "key", value, updated_at, last_updated_by_kind, '
                "last_updated_by_dag_id, last_updated_by_run_id, last_updated_by_task_id, last_updated_by_map_index) "
                "VALUES (%s, %s, %s, now(), %s, %s, %s, %s, %s)",
                (assets[name], key, json.dumps({REF: ref}), writer["kind"], writer.get("dag_id"),
                 writer.get("run_id"), writer.get("task_id"), writer.get("map_index")),
            )
        conn.commit()
done(len(lines), started)
"""
)

# The unavoidable CPU of each direction, on one core, over the values of statectl's snapshot: what any tool must do
# to turn these rows and objects into a gzip JSON Lines file, and back.
CPU = """
import gzip, json, sys, time, zlib
path, threshold, level = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
clock = time.process_time
export_s = import_s = 0.0
objects = 0
with open(path, "rb") as raw:
    lines = gzip.GzipFile(fileobj=raw)
    start = clock()
    next(lines)
    import_s += clock() - start
    while True:
        start = clock()
        text = lines.readline()                     # import: gunzip the snapshot ...
        if not text:
            import_s += clock() - start
            break
        record = json.loads(text)                   # ... and parse each line
        serialized = json.dumps(record["value"])    # the value as the provider stores it
        middle = clock()
        import_s += middle - start
        if len(serialized.encode()) >= threshold:
            blob = gzip.compress(serialized.encode(), 9)   # import: gzip each object (the provider's level)
            objects += 1
            after = clock()
            import_s += after - middle
            serialized = gzip.decompress(blob).decode()    # export: gunzip each object
            middle = after
        json.loads(serialized)                      # export: parse each value ...
        json.dumps(record)                          # ... and dump each line
        export_s += clock() - middle
# export: gzip the snapshot's text, at the level statectl writes it with, and for comparison at 9 and 1.
gzip_s, size = {}, 0
for n in sorted({level, 9, 1}, reverse=True):
    packer, spent = zlib.compressobj(n, zlib.DEFLATED, 31), 0.0
    with open(path, "rb") as raw:
        source = gzip.GzipFile(fileobj=raw)
        while chunk := source.read(1 << 22):
            size += len(chunk) if n == level else 0
            start = clock()
            packer.compress(chunk)
            spent += clock() - start
    start = clock()
    packer.flush()
    gzip_s[n] = round(spent + clock() - start, 2)
print(json.dumps({"export_s": round(export_s + gzip_s[level], 2), "import_s": round(import_s, 2),
                  "objects": objects, "snapshot_bytes": size, "snapshot_level": level,
                  "snapshot_gzip_s": {str(n): s for n, s in gzip_s.items()}}))
"""


class TransferBed(Bed):
    """bench_migrate's bed with this benchmark's DAG (three assets), task and asset rows, and the transfers."""

    def build_schema_and_run(self) -> str:
        airflow_db_migrate(self.env)
        run_dag(self.env, DAG_SOURCE, self.work)  # plain rows: no worker backend configured
        self.sql(
            f"CREATE TABLE {DAG_TASK} AS SELECT * FROM task_state_store",
            f"CREATE TABLE {DAG_ASSET} AS SELECT * FROM asset_state_store",
        )
        return str(self.sql("SELECT run_id FROM dag_run WHERE dag_id = %s", params=(DAG_ID,))[0][0])

    def seed(self, count: int, lo: int, hi: int, seed: int) -> dict[str, int]:
        """The DAG's own rows plus `count` plain rows, turned into worker form by `statectl migrate to-bucket`;
        copies of the rows are kept (the objects stay in the bucket; export leaves them, import rewrites them)."""
        import psycopg2
        from psycopg2.extras import execute_values

        dag_run_id, run_id = self.sql("SELECT id, run_id FROM dag_run WHERE dag_id = %s", params=(DAG_ID,))[0]
        tis = self.sql("SELECT task_id, map_index FROM task_instance WHERE dag_id = %s ORDER BY 1, 2", params=(DAG_ID,))
        names = [name for name, _ in ASSETS]
        asset_ids = dict(self.sql("SELECT name, id FROM asset WHERE name = ANY(%s)", params=(names,)))
        sizes = value_sizes(count, lo, hi, seed)
        rng = random.Random(seed + 1)
        pool = _text_pool(rng, hi + 1024)
        self.wipe()
        conn = psycopg2.connect(self.dsn)
        cur = conn.cursor()
        cur.execute(f"INSERT INTO task_state_store SELECT * FROM {DAG_TASK}")
        cur.execute(f"INSERT INTO asset_state_store SELECT * FROM {DAG_ASSET}")
        tasks: list[tuple[Any, ...]] = []
        assets: list[tuple[Any, ...]] = []
        task_sql = (
            'INSERT INTO task_state_store (dag_run_id, task_id, map_index, "key", dag_id, run_id, value, '
            "updated_at, expires_at) VALUES %s"
        )
        asset_sql = (
            'INSERT INTO asset_state_store (asset_id, "key", value, updated_at, last_updated_by_kind, '
            "last_updated_by_dag_id, last_updated_by_run_id, last_updated_by_task_id, last_updated_by_map_index) "
            "VALUES %s"
        )
        total = 0

        def flush() -> None:
            if tasks:
                execute_values(
                    cur, task_sql, tasks, template="(%s, %s, %s, %s, %s, %s, %s, now(), now() + interval '30 days')"
                )
                tasks.clear()
            if assets:
                template = "(%s, %s, %s, now(), 'task', %s, %s, 'single', -1)"
                execute_values(cur, asset_sql, assets, template=template)
                assets.clear()

        for i, size in enumerate(sizes):
            value = make_value(i, size, pool, rng)
            total += len(value.encode())
            key = f"bench_{i:07d}"
            if i % ASSET_EVERY == ASSET_EVERY - 1:
                assets.append((asset_ids[names[(i // ASSET_EVERY) % len(names)]], key, value, DAG_ID, run_id))
            else:
                task_id, map_index = tis[i % len(tis)]
                tasks.append((dag_run_id, task_id, map_index, key, DAG_ID, run_id, value))
            if len(tasks) + len(assets) >= 1000:
                flush()
        flush()
        conn.commit()
        conn.close()
        self.sql("ANALYZE task_state_store", "ANALYZE asset_state_store")
        log(f"seed: {count} plain rows; statectl migrate to-bucket to put them in worker form")
        migrated = self.statectl("to-bucket")
        if not migrated["ok"]:
            raise RuntimeError(f"seeding migrate to-bucket did not finish cleanly: {migrated}")
        self.sql(
            f"DROP TABLE IF EXISTS {SEED_TASK}",
            f"DROP TABLE IF EXISTS {SEED_ASSET}",
            f"CREATE TABLE {SEED_TASK} AS SELECT * FROM task_state_store",
            f"CREATE TABLE {SEED_ASSET} AS SELECT * FROM asset_state_store",
        )
        task_rows, asset_rows, column_bytes = self.sql(
            "SELECT (SELECT COUNT(*) FROM task_state_store), (SELECT COUNT(*) FROM asset_state_store), "
            "(SELECT COALESCE(SUM(octet_length(value)), 0) FROM task_state_store) "
            "+ (SELECT COALESCE(SUM(octet_length(value)), 0) FROM asset_state_store)"
        )[0]
        return {
            "bench_rows": count,
            "task_rows": int(task_rows),
            "asset_rows": int(asset_rows),
            "bench_value_bytes": total,
            "column_bytes_after_seed": int(column_bytes),
            "objects": len(self.object_keys()),
            "seed_migrate_s": migrated["seconds"],
        }

    # -- between runs -----------------------------------------------------------------
    def wipe(self) -> None:
        """No state rows and an empty bucket; the dag run, its task instances and the assets stay."""
        self.sql("TRUNCATE task_state_store", "DELETE FROM asset_state_store")
        self.empty_bucket()

    def state(self) -> dict[str, Any]:
        """A fingerprint of the state: value text (and expires_at) per address, ref rows, the object keys."""
        task_md5, task_rows, task_refs = self.sql(
            "SELECT md5(string_agg(md5(concat_ws('|', dag_id, run_id, task_id, map_index, \"key\", value, "
            "expires_at)), '' ORDER BY dag_id, run_id, task_id, map_index, \"key\")), COUNT(*), "
            "COUNT(*) FILTER (WHERE value LIKE %s) FROM task_state_store",
            params=(f'{{"__airflow_state_ref__": "{self.store.scheme}://%',),
        )[0]
        asset_md5, asset_rows, asset_refs = self.sql(
            "SELECT md5(string_agg(md5(concat_ws('|', a.name, s.\"key\", s.value)), '' ORDER BY a.name, s.\"key\")), "
            "COUNT(*), COUNT(*) FILTER (WHERE s.value LIKE %s) "
            "FROM asset_state_store s JOIN asset a ON a.id = s.asset_id",
            params=(f'{{"__airflow_state_ref__": "{self.store.scheme}://%',),
        )[0]
        keys = self.object_keys()
        return {
            "task_values_md5": task_md5,
            "asset_values_md5": asset_md5,
            "rows": int(task_rows) + int(asset_rows),
            "object_refs": int(task_refs) + int(asset_refs),
            "objects": len(keys),
            "object_keys_md5": hashlib.md5("\n".join(sorted(keys)).encode()).hexdigest(),
        }

    # -- the runs -----------------------------------------------------------------------
    def run_statectl(self, *args: str, concurrency: int) -> dict[str, Any]:
        """One whole `statectl` process (-o json), with its peak RSS and the requests the store served meanwhile."""
        cmd = [STATECTL, "--concurrency", str(concurrency), *args, "-o", "json"]
        run = run_process(cmd, self.backend_env, self.requests)
        run["summary"] = json.loads(run.pop("stdout"))
        return run

    def profile(self, name: str, folder: Path, *args: str, concurrency: int) -> dict[str, Any]:
        """One more `statectl` run under cProfile (the main thread only: object I/O on the filesystem's event loop
        shows there as waiting): NAME.prof and NAME.txt (top functions by own time, statectl's by cumulative)."""
        import io
        import pstats

        prof = folder / f"{name}.prof"
        cmd = [PYTHON, "-m", "cProfile", "-o", str(prof), "-m", "statectl", "--concurrency", str(concurrency), *args]
        start = time.perf_counter()
        proc = subprocess.run([*cmd, "-o", "json"], env=self.backend_env, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"profiled statectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        text = io.StringIO()
        stats = pstats.Stats(str(prof), stream=text)
        stats.sort_stats("tottime").print_stats(15)
        stats.sort_stats("cumulative").print_stats("statectl/", 30)
        (folder / f"{name}.txt").write_text(text.getvalue())
        return {"seconds": round(seconds, 2), "prof": str(prof), "summary": str(folder / f"{name}.txt")}


def cpu_floor(snapshot: Path, threshold: int, level: int) -> dict[str, Any]:
    args = [PYTHON, "-c", CPU, str(snapshot), str(threshold), str(level)]
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"CPU floor run failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return dict(json.loads(proc.stdout))


# -- snapshots compared ---------------------------------------------------------------------


def statectl_entries(path: Path) -> set[tuple[Any, ...]]:
    import gzip

    entries = set()
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        next(lines)
        for text in lines:
            r = json.loads(text)
            if "error" in r:
                raise RuntimeError(f"statectl exported an unreadable value: {text[:500]}")
            scope = (
                (r["dag_id"], r["run_id"], r["task_id"], r["map_index"]) if r["kind"] == "task" else (r["asset_name"],)
            )
            entries.add((r["kind"], *scope, r["key"], r["sha256"].removeprefix("sha256:")))
    return entries


def naive_entries(path: Path) -> set[tuple[Any, ...]]:
    import gzip

    entries: set[tuple[Any, ...]] = set()
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        for text in lines:
            r = json.loads(text)
            s = r["scope"]
            if "dag_id" in s:
                entries.add(("task", s["dag_id"], s["run_id"], s["task_id"], s["map_index"], r["key"], r["sha256"]))
            else:
                entries.add(("asset", s["asset_name"], r["key"], r["sha256"]))
    return entries


# -- the benchmark --------------------------------------------------------------------------


def side_by_side(bed: TransferBed, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    seeded = bed.seed(args.rows, args.min_bytes, args.max_bytes, args.seed)
    log(f"seeded {seeded}")
    seed_state = bed.state()
    objects = seed_state["objects"]
    conc = args.concurrency
    total = seeded["task_rows"] + seeded["asset_rows"]
    statectl_file, naive_file = work / "statectl.jsonl.gz", work / "naive.jsonl.gz"

    # Warm-up (bytecode cache, page cache) for both tools: an export that selects nothing, the baseline's imports.
    bed.run_statectl("export", "--key", "no-such-key", "--file", str(work / "warm.jsonl"), concurrency=conc)
    bed.naive(NAIVE_IMPORTS + "print(0)")

    per_latency: dict[str, Any] = {}
    results: list[dict[str, Any]] = []
    cpu: dict[str, Any] = {}
    for latency in latencies(args):
        exports, imports, import_states = [], [], []
        for n in range(args.statectl_runs):
            log(f"{latency.label}: statectl export ({n + 1})")
            with at_latency(bed.store, latency):
                run = bed.run_statectl("export", "--file", str(statectl_file), concurrency=conc)
            run["file_bytes"] = statectl_file.stat().st_size
            exports.append(run)
            log(f"  {_brief(run)}")
        log(f"{latency.label}: naive export")
        with at_latency(bed.store, latency):
            n_export = bed.naive(NAIVE_EXPORT, str(naive_file), sample=args.naive_sample, total=total)
        log(f"  {_brief(n_export)}")
        mine, theirs = statectl_entries(statectl_file), naive_entries(naive_file)
        unchanged_by_export = bed.state() == seed_state

        for n in range(args.statectl_runs):
            bed.wipe()
            log(f"{latency.label}: statectl import ({n + 1})")
            with at_latency(bed.store, latency):
                run = bed.run_statectl("import", str(statectl_file), "--yes", concurrency=conc)
            imports.append(run)
            import_states.append(bed.state())
            log(f"  {_brief(run)}")
        bed.wipe()
        log(f"{latency.label}: naive import")
        with at_latency(bed.store, latency):
            n_import = bed.naive(NAIVE_IMPORT, str(statectl_file), sample=args.naive_sample, total=total)
        naive_state = bed.state()
        log(f"  {_brief(n_import)}")
        if n_import.get("extrapolated"):  # the rest of the seeded state, for the next latency and the profile
            bed.wipe()
            bed.run_statectl("import", str(statectl_file), "--yes", concurrency=conc)

        if not cpu:
            log(f"the unavoidable CPU: process start, gzip + JSON over the snapshot's {total:,} values")
            cpu = cpu_floor(statectl_file, args.threshold, args.snapshot_level)
            cpu["start_s"] = process_start_cpu(bed.backend_env, bed.store)
            log(f"  {cpu}")
        sampled = bool(n_export.get("extrapolated") or n_import.get("extrapolated"))
        checks: dict[str, Any] = {
            "export_left_state_unchanged": unchanged_by_export,
            "import_statectl_ends_in_seeded_state": all(s == seed_state for s in import_states),
        }
        if sampled:
            checks["export_naive_lines_are_statectl_lines"] = theirs <= mine and len(theirs) == n_export["rows"]
            checks["import_naive_wrote_its_sample"] = naive_state["rows"] == n_import["rows"]
        else:
            checks.update(
                export_same_scope_key_sha256_as_naive=mine == theirs,
                export_same_line_count_as_naive=all(r["summary"]["keys"] == n_export["rows"] for r in exports),
                import_naive_ends_in_seeded_state=naive_state == seed_state,
                import_statectl_same_as_naive=all(s == naive_state for s in import_states),
            )
        per_latency[latency.label] = {"checks": checks}
        start = cpu["start_s"]
        needs = {
            "export": Work(
                f"1 GET per object ({objects:,})", ops=objects, cpu={"start": start, "JSON + gzip": cpu["export_s"]}
            ),
            "import": Work(
                f"1 PUT per object ({objects:,})", ops=objects, cpu={"start": start, "JSON + gzip": cpu["import_s"]}
            ),
        }
        for op, runs, naive in (("export", exports, n_export), ("import", imports, n_import)):
            statectl = dict(runs[-1])
            statectl["seconds"] = round(statistics.median(r["seconds"] for r in runs), 2)
            statectl["runs_s"] = [r["seconds"] for r in runs]
            results.append(
                {
                    "operation": op,
                    "latency": latency.label,
                    "statectl": statectl,
                    "naive": naive,
                    "floor": floor(needs[op], latency, conc),
                }
            )

    profiles: dict[str, Any] = {}
    if args.profile is not None:  # the bucket and rows are in the seeded state again
        args.profile.mkdir(parents=True, exist_ok=True)
        log(f"profiling statectl export and import (cProfile) into {args.profile}")
        export_args = ("export", "--file", str(work / "profiled.jsonl.gz"))
        profiles["export"] = bed.profile("export", args.profile, *export_args, concurrency=conc)
        bed.wipe()
        import_args = ("import", str(statectl_file), "--yes")
        profiles["import"] = bed.profile("import", args.profile, *import_args, concurrency=conc)
        profiles["import_ends_in_seeded_state"] = bed.state() == seed_state
        log(f"  {profiles}")

    return {
        "data": {
            **seeded,
            "value_sizes": f"log-uniform {args.min_bytes}..{args.max_bytes} B, seed {args.seed}",
            "snapshot_bytes": statectl_file.stat().st_size,
        },
        "results": results,
        "latencies": per_latency,
        "cpu": cpu,
        "seed_state": seed_state,
        **({"profiles": profiles} if profiles else {}),
    }


def memory(bed: TransferBed, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for count in (args.rows, args.big_rows):
        seeded = bed.seed(count, args.min_bytes, args.mem_max_bytes, args.seed)
        snapshot = work / f"memory-{count}.jsonl.gz"
        log(f"memory: statectl export over {seeded}")
        export = bed.run_statectl("export", "--file", str(snapshot), concurrency=args.concurrency)
        log(f"  {_brief(export)}")
        bed.wipe()
        log("memory: statectl import")
        imported = bed.run_statectl("import", str(snapshot), "--yes", concurrency=args.concurrency)
        log(f"  {_brief(imported)}")
        results[str(count)] = {
            "data": seeded,
            "export": export,
            "import": imported,
            "snapshot_bytes": snapshot.stat().st_size,
        }
        snapshot.unlink()
    small, big = results[str(args.rows)], results[str(args.big_rows)]
    return {
        "value_sizes": f"log-uniform {args.min_bytes}..{args.mem_max_bytes} B, seed {args.seed}",
        "runs": results,
        "export_peak_ratio_big_over_small": round(big["export"]["peak_rss_mib"] / small["export"]["peak_rss_mib"], 3),
        "import_peak_ratio_big_over_small": round(big["import"]["peak_rss_mib"] / small["import"]["peak_rss_mib"], 3),
    }


def _brief(run: dict[str, Any]) -> str:
    parts = [f"{run['seconds']} s"]
    if "peak_rss_mib" in run:
        parts.append(f"peak {run['peak_rss_mib']} MiB")
    parts.append(", ".join(f"{k} {v}" for k, v in run["requests"].items()) or "no requests")
    return "; ".join(parts)


def table(report: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        f"{report['config']['store']}; statectl at {report['statectl_tree']}; "
        f"load before: {report['machine']['load_before'].split('average:')[-1].strip()}"
    ]
    if "results" in report:
        data, cpu = report["data"], report["cpu"]
        lines += [
            f"{data['task_rows']} task + {data['asset_rows']} asset rows ({data['value_sizes']}, "
            f"{data['bench_value_bytes'] / 1e6:.0f} MB of values); threshold {args.threshold} B, {args.compression}: "
            f"{data['objects']} objects; snapshot {data['snapshot_bytes'] / 1e6:.0f} MB; concurrency "
            f"{args.concurrency}; statectl: median of {args.statectl_runs} runs",
            "",
            *common_table(report["results"]),
        ]
        gz = cpu["snapshot_gzip_s"]
        lines.append(
            f"CPU (one core): export {cpu['export_s']} s, of which gzip -{cpu['snapshot_level']} of the "
            f"{cpu['snapshot_bytes'] / 1e6:.0f} MB snapshot {gz[str(cpu['snapshot_level'])]} s (-9: {gz['9']} s, "
            f"-1: {gz['1']} s); import {cpu['import_s']} s, most of it gzip -9 of the objects (the provider's level)"
        )
        for label, measured in report["latencies"].items():
            lines.append(f"checks at {label}: " + ", ".join(f"{k}={v}" for k, v in measured["checks"].items()))
    mem = report.get("peak_memory")
    if mem:
        lines += ["", f"peak RSS ({mem['value_sizes']}):", "", "| rows | export | import |", "|---|---|---|"]
        for count, run in mem["runs"].items():
            lines.append(
                f"| {int(count):,} ({run['data']['objects']} objects) | {run['export']['peak_rss_mib']} MiB, "
                f"{run['export']['seconds']} s | {run['import']['peak_rss_mib']} MiB, {run['import']['seconds']} s |"
            )
        lines.append(
            f"| big / small | {mem['export_peak_ratio_big_over_small']} | {mem['import_peak_ratio_big_over_small']} |"
        )
    return "\n".join(lines)


def tree() -> str:
    """The commit statectl runs from, and whether statectl/ differs from it (other work in the tree)."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    changed = git("status", "--porcelain", "--", "statectl")
    return git("rev-parse", "--short", "HEAD") + (" + uncommitted changes in statectl/" if changed else "")


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
    parser.add_argument("--statectl-runs", type=int, default=2, help="timed runs of each statectl command")
    parser.add_argument(
        "--snapshot-level", type=int, default=6, help="gzip level of the snapshot in the CPU floor (statectl's: 6)"
    )
    parser.add_argument("--memory-only", action="store_true", help="only the peak-memory runs")
    parser.add_argument("--profile", type=Path, metavar="DIR", help="also run each statectl command under cProfile")
    args = parser.parse_args()
    if args.memory_only and args.skip_memory:
        parser.error("--memory-only and --skip-memory exclude each other")
    latencies(args)  # refuse bad --latencies before the set-up
    report = new_report()
    report["config"] = {"threshold": args.threshold, "compression": args.compression, "concurrency": args.concurrency}
    report["statectl_tree"] = tree()
    with tempfile.TemporaryDirectory(prefix="statectl-bench-transfer-") as tmp:
        work = Path(tmp)
        bed = TransferBed(work, args.threshold, args.compression, args.store)
        bed.concurrency = args.concurrency
        report["config"]["store"] = bed.label
        try:
            started = time.perf_counter()
            run_id = bed.build_schema_and_run()
            report["config"]["base_path"] = bed.base
            report["setup_s"] = round(time.perf_counter() - started, 1)
            log(f"schema + dag run {run_id} in {report['setup_s']} s")
            if not args.memory_only:
                report.update(side_by_side(bed, args, work))
            if not args.skip_memory:
                report["peak_memory"] = memory(bed, args, work)
        finally:
            bed.close()
    write_json(report, args.out, f"bench-transfer-{args.store}-{args.rows}")
    print(table(report, args))


if __name__ == "__main__":
    main()
