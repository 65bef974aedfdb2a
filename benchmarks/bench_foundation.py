"""Foundation benchmarks, side by side in one run (not timed tests).

1. Cold `statectl get` (SQLite + file://) as a whole process, against `airflow version`,
   alternating, median of N runs each: the ratio is what counts.
2. `statectl ls` over many rows (SQLite): time to the first row and peak memory at two
   sizes, against the naive baseline a user would write (Airflow's ORM, `.all()`).

Usage: .venv/bin/python benchmarks/bench_foundation.py [--runs 7] [--rows 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
BACKEND = "airflow.providers.common.io.state_store.backend.StateStoreObjectStorageBackend"

NAIVE_LS = """
import json, sys
from airflow.utils.session import create_session
from airflow.models.task_state_store import TaskStateStoreModel
from sqlalchemy import select
with create_session() as session:
    rows = session.scalars(select(TaskStateStoreModel)).all()
    first = True
    for r in rows:
        if first:
            print("FIRST", flush=True)
            first = False
        sys.stdout.write(json.dumps({"dag_id": r.dag_id, "run_id": r.run_id, "task_id": r.task_id,
                                     "map_index": r.map_index, "key": r.key, "bytes": len(r.value)}) + "\\n")
"""


def setup_store(work: Path) -> tuple[dict[str, str], str]:
    """Migrate a SQLite metastore and fill it through a real DAG run with the provider."""
    home = work / "airflow"
    (home / "dags").mkdir(parents=True)
    shutil.copy(ROOT / "examples" / "dags" / "statectl_demo.py", home / "dags")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_"))}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__WORKERS__STATE_STORE_BACKEND=BACKEND,
        AIRFLOW__COMMON_IO__STATE_STORE_OBJECTSTORAGE_PATH=f"file://{work}/bucket",
        AIRFLOW__COMMON_IO__STATE_STORE_OBJECTSTORAGE_THRESHOLD="64",
        AIRFLOW__COMMON_IO__STATE_STORE_OBJECTSTORAGE_COMPRESSION="gzip",
    )
    subprocess.run([VENV_BIN / "airflow", "db", "migrate"], env=env, check=True, capture_output=True)
    subprocess.run([sys.executable, home / "dags" / "statectl_demo.py"], env=env, check=True, capture_output=True)
    run_id = sqlite3.connect(home / "airflow.db").execute("SELECT run_id FROM dag_run").fetchone()[0]
    return env, run_id


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def bench_cold_get(env: dict[str, str], run_id: str, runs: int) -> dict[str, float]:
    get = [
        str(VENV_BIN / "statectl"),
        "get",
        "checkpoint",
        "--dag",
        "statectl_demo",
        "--run",
        run_id,
        "--task",
        "extract",
        "-o",
        "json",
    ]
    version = [str(VENV_BIN / "airflow"), "version"]
    timed(get, env), timed(version, env)  # warm the page cache and .pyc files for both
    gets, versions = [], []
    for _ in range(runs):
        gets.append(timed(get, env))
        versions.append(timed(version, env))
    g, v = statistics.median(gets), statistics.median(versions)
    return {"statectl_get_s": round(g, 3), "airflow_version_s": round(v, 3), "ratio": round(g / v, 3)}


def seed_rows(db: Path, run_id: str, count: int) -> None:
    """Add task rows for the demo's dag run, in one transaction (as many as a big deployment)."""
    conn = sqlite3.connect(db)
    dag_run_id = conn.execute("SELECT id FROM dag_run WHERE run_id = ?", (run_id,)).fetchone()[0]
    value = json.dumps({"__airflow_state_ref__": json.dumps({"offset": 12345, "note": "x" * 40})})
    conn.executemany(
        'INSERT INTO task_state_store (dag_run_id, task_id, map_index, "key", dag_id, run_id, value, updated_at, '
        "expires_at) VALUES (?, ?, -1, ?, 'statectl_demo', ?, ?, '2026-01-01 00:00:00.000000', NULL)",
        ((dag_run_id, f"bulk_{i // 1000:05d}", f"key_{i % 1000:04d}", run_id, value) for i in range(count)),
    )
    conn.commit()
    conn.close()


def first_row_and_peak(cmd: list[str], env: dict[str, str], marker: str | None = None) -> dict[str, float]:
    """Seconds from process start to the first output row, total seconds, peak RSS (MiB)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        ["/usr/bin/time", "-f", "%M", *cmd], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    first = None
    for line in proc.stdout:
        if first is None and (marker is None or line.startswith(marker)):
            first = time.perf_counter() - start
    _, stderr = proc.communicate()
    total = time.perf_counter() - start
    peak_kib = int(stderr.strip().splitlines()[-1])
    return {"first_row_s": round(first or total, 3), "total_s": round(total, 3), "peak_mib": round(peak_kib / 1024, 1)}


def bench_ls(env: dict[str, str], run_id: str, sizes: list[int]) -> list[dict[str, object]]:
    db = Path(env["AIRFLOW_HOME"]) / "airflow.db"
    results = []
    for size in sizes:
        conn = sqlite3.connect(db)
        conn.execute("DELETE FROM task_state_store WHERE task_id LIKE 'bulk_%'")
        conn.commit()
        conn.close()
        seed_rows(db, run_id, size)
        ls = first_row_and_peak([str(VENV_BIN / "statectl"), "ls", "--tasks", "-o", "jsonl"], env)
        naive = first_row_and_peak([sys.executable, "-c", NAIVE_LS], env, marker="FIRST")
        results.append(
            {
                "rows": size,
                "statectl_ls": ls,
                "naive_orm_all": naive,
                "ratio_total": round(ls["total_s"] / naive["total_s"], 3),
                "ratio_peak_memory": round(ls["peak_mib"] / naive["peak_mib"], 3),
            }
        )
    return results


def in_process_first_row(env: dict[str, str]) -> float:
    """First row from the core library once imported (the query's own latency)."""
    code = (
        "import time; from statectl.core.config import Config; from statectl.stores.store import StateStore; "
        "from statectl.core.filters import RowFilter; from statectl.ops.read import list_entries; "
        "s = StateStore(Config()); s.metastore.check_schema(); t = time.perf_counter(); "
        "next(iter(list_entries(s, RowFilter(assets=False)))); print(time.perf_counter() - t)"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True)
    return round(float(out.stdout.strip()), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="statectl-bench-") as tmp:
        env, run_id = setup_store(Path(tmp))
        report: dict[str, object] = {"cold_get": bench_cold_get(env, run_id, args.runs)}
        print(json.dumps(report["cold_get"]), flush=True)
        sizes = sorted({max(args.rows // 10, 1), args.rows})
        report["ls"] = bench_ls(env, run_id, sizes)
        report["ls_query_first_row_s"] = in_process_first_row(env)
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
