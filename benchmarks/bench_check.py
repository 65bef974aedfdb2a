"""`statectl check -o json`: peak memory (RSS) and time at two sizes of SQLite + file:// (not a timed test).

The store is the demo's (a real DAG run through the provider makes the dag_run / task_instance rows),
plus N task rows seeded with SQL whose refs point at N objects written with statectl's own layout
(paths) and codec (column text, gzip objects); one object in a hundred has no row (a recent orphan)
so the finding lists have work to do. Memory must stay flat: the target is 100k within 20% of 20k.

Usage: .venv/bin/python benchmarks/bench_check.py [--sizes 20000 100000] [--deep]
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_foundation import VENV_BIN, first_row_and_peak, setup_store  # noqa: E402
from statectl.core import codec, layout  # noqa: E402
from statectl.core.scopes import TaskScope  # noqa: E402

DAG_ID = "statectl_demo"
BULK = "bulk_"
ORPHAN_EVERY = 100


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

    def rows():
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs=2, default=[20_000, 100_000])
    parser.add_argument("--deep", action="store_true", help="also measure check --deep (reads every object)")
    args = parser.parse_args()
    variants = [[]] + ([["--deep"]] if args.deep else [])
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


if __name__ == "__main__":
    main()
