"""Cold start of `statectl get` (SQLite + file://): the current tree against a base checkout.

One SQLite metastore and file:// bucket are filled by a real DAG run through the provider
(examples/dags/statectl_demo.py, as scripts/demo does); the target is `checkpoint` of the `extract`
task, whose value is in a gzip object under the file:// base path. Each run is a fresh
`python -m statectl get checkpoint --dag .. --run .. --task .. -o json` process with the same
environment; only PYTHONPATH differs (the base tree, e.g. a git worktree of the commit before a
change, or this tree), both run by this venv's python, from a neutral working directory. The two
trees alternate run by run (and which goes first alternates too), so machine noise hits both alike.
Every run's output is checked: both print the same, expected value.

Also: `python -X importtime -c "import statectl.cli.main"`, the cumulative import time of
statectl.cli.main as a top-level import (statectl and statectl.cli are nested in it), median of a few runs.

And, with valgrind installed, the instructions one `get` executes (callgrind, run twice per tree): a count
that does not depend on what else the machine is doing, unlike wall time on a shared 2-core machine.
Both trees' bytecode is compiled first, as an installed package's is.

Usage: .venv/bin/python benchmarks/bench_cold_start.py [--base /tmp/base] [--runs 20] [--import-runs 7]
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
BACKEND = "airflow.providers.common.io.state_store.backend.StateStoreObjectStorageBackend"
DAG_ID, TASK, KEY = "statectl_demo", "extract", "checkpoint"
EXPECTED = {"offset": 123456, "files": [f"part-{i:05d}.parquet" for i in range(40)]}  # what the demo DAG sets
IMPORTED = "statectl.cli.main"


@dataclass
class Tree:
    name: str
    path: Path
    times: list[float] = field(default_factory=list)
    import_us: list[int] = field(default_factory=list)

    def env(self, base_env: dict[str, str]) -> dict[str, str]:
        return {**base_env, "PYTHONPATH": str(self.path)}


def setup_store(work: Path) -> tuple[dict[str, str], str]:
    """Migrate a SQLite metastore and fill it and a file:// bucket through a real DAG run with the provider."""
    home = work / "airflow"
    (home / "dags").mkdir(parents=True)
    (work / "bucket").mkdir()
    shutil.copy(ROOT / "examples" / "dags" / "statectl_demo.py", home / "dags")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("AIRFLOW", "_AIRFLOW", "PYTHON"))}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home / 'airflow.db'}",
        AIRFLOW__WORKERS__STATE_STORE_BACKEND=BACKEND,
        AIRFLOW__COMMON_IO__STATE_STORE_OBJECTSTORAGE_PATH=f"file://{work}/bucket/state",
        AIRFLOW__COMMON_IO__STATE_STORE_OBJECTSTORAGE_THRESHOLD="64",
        AIRFLOW__COMMON_IO__STATE_STORE_OBJECTSTORAGE_COMPRESSION="gzip",
    )
    for cmd in (
        [str(VENV_BIN / "airflow"), "db", "migrate"],
        [sys.executable, str(home / "dags" / "statectl_demo.py")],
    ):
        proc = subprocess.run(cmd, env=env, cwd=work, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    with sqlite3.connect(home / "airflow.db") as conn:
        [(run_id,)] = conn.execute("SELECT run_id FROM dag_run WHERE dag_id = ?", (DAG_ID,)).fetchall()
        [(value,)] = conn.execute(
            'SELECT value FROM task_state_store WHERE task_id = ? AND "key" = ?', (TASK, KEY)
        ).fetchall()
    ref = json.loads(value)["__airflow_state_ref__"]
    # the target's value is an object in the bucket, not an inline ref
    assert ref.startswith(f"file://{work}/bucket/state/") and Path(ref.removeprefix("file://")).is_file(), ref
    return env, run_id


def get_command(run_id: str) -> list[str]:
    return [sys.executable, "-m", "statectl", "get", KEY, "--dag", DAG_ID, "--run", run_id, "--task", TASK]


def run_get(tree: Tree, env: dict[str, str], cwd: Path, run_id: str) -> tuple[float, Any]:
    """Wall time of one fresh `statectl get` process, and the value it printed."""
    start = time.perf_counter()
    proc = subprocess.run(
        [*get_command(run_id), "-o", "json"],
        env=tree.env(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{tree.name}: statectl get failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return elapsed, json.loads(proc.stdout)


def import_time_us(tree: Tree, env: dict[str, str], cwd: Path) -> int:
    """Top-level cumulative import time (µs) of statectl.cli.main (its parent packages are nested in it)."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import statectl.cli.main"],
        env=tree.env(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    )
    # "import time: self [us] | cumulative | imported package", nested ones indented under the package
    top = [line.split("|") for line in proc.stderr.splitlines() if line.endswith(f"| {IMPORTED}")]
    assert len(top) == 1, (tree.name, proc.stderr[-2000:])
    return int(top[0][1])


def check_tree(tree: Tree, env: dict[str, str], cwd: Path) -> None:
    """The tree's statectl is the one imported (not the venv's editable install, not the cwd)."""
    proc = subprocess.run(
        [sys.executable, "-c", "import statectl; print(statectl.__file__)"],
        env=tree.env(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    )
    imported = Path(proc.stdout.strip()).resolve()
    if not imported.is_relative_to(tree.path.resolve()):
        sys.exit(f"{tree.name}: PYTHONPATH={tree.path} imports {imported}")


def instructions(tree: Tree, env: dict[str, str], cwd: Path, run_id: str) -> int:
    """Instructions executed by one `statectl get` (valgrind's callgrind; all threads)."""
    out = cwd / f"callgrind.{tree.name}"
    proc = subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *get_command(run_id), "-o", "json"],
        env=tree.env(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    )
    collected = [line for line in proc.stderr.splitlines() if "Collected :" in line]
    assert len(collected) == 1, proc.stderr[-2000:]
    return int(collected[0].rsplit(":", 1)[1])


def stats(values: list[float]) -> tuple[float, float]:
    return statistics.median(values), min(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, default=Path("/tmp/base"), help="the base checkout (default /tmp/base)")
    parser.add_argument("--runs", type=int, default=20, help="timed `get` runs per tree (default 20)")
    parser.add_argument("--import-runs", type=int, default=7, help="-X importtime runs per tree (default 7)")
    args = parser.parse_args()
    if not (args.base / "statectl" / "__main__.py").is_file():
        sys.exit(f"{args.base} holds no statectl checkout")
    base, current = Tree("base", args.base.resolve()), Tree("current", ROOT)

    with tempfile.TemporaryDirectory(prefix="statectl-cold-") as tmp:
        work = Path(tmp)
        print("setting up: airflow db migrate and a DAG run through the provider ...", file=sys.stderr, flush=True)
        env, run_id = setup_store(work)
        print(f"target: python {' '.join(get_command(run_id)[1:])} -o json", flush=True)
        for tree in (base, current):
            subprocess.run([sys.executable, "-m", "compileall", "-q", str(tree.path / "statectl")], check=True)
            check_tree(tree, env, work)
            _, value = run_get(tree, env, work, run_id)  # warm-up: page cache, .pyc files
            if value != EXPECTED:
                sys.exit(f"{tree.name}: printed {value!r}, expected {EXPECTED!r}")

        for i in range(args.runs):
            for tree in (base, current) if i % 2 == 0 else (current, base):
                elapsed, value = run_get(tree, env, work, run_id)
                if value != EXPECTED:
                    sys.exit(f"{tree.name}: run {i} printed {value!r}, expected {EXPECTED!r}")
                tree.times.append(elapsed)
        for i in range(args.import_runs):
            for tree in (base, current) if i % 2 == 0 else (current, base):
                tree.import_us.append(import_time_us(tree, env, work))
        counts: dict[str, list[int]] = {}
        if shutil.which("valgrind"):
            for tree in (base, current, base, current):
                counts.setdefault(tree.name, []).append(instructions(tree, env, work, run_id))

    print(f"cold `statectl get` on SQLite + file:// ({args.runs} runs each, alternating; both printed the same value)")
    print(f"{'tree':8} {'median_s':>9} {'min_s':>7} {'import_ms':>10}  path")
    for tree in (base, current):
        med, low = stats(tree.times)
        imp = statistics.median(tree.import_us) / 1000
        print(f"{tree.name:8} {med:9.3f} {low:7.3f} {imp:10.1f}  {tree.path}")
    (bm, bl), (cm, cl) = stats(base.times), stats(current.times)
    bi, ci = statistics.median(base.import_us), statistics.median(current.import_us)
    print(f"ratio current/base: median {cm / bm:.3f}, min {cl / bl:.3f}, import statectl.cli.main {ci / bi:.3f}")
    if counts:
        b, c = min(counts["base"]), min(counts["current"])
        print(f"instructions of one get (callgrind): base {b:,}, current {c:,}, ratio {c / b:.4f}")


if __name__ == "__main__":
    main()
