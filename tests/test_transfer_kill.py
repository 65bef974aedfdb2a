"""SIGKILL `statectl import` and `statectl mv` mid-run; after each kill no value is lost and no row points
to a missing object, and re-running the same command finishes the job.

State: ~1900 task rows (task instances 'writer' and 'mapped'[0..2] of the seeded dag run) and 100 asset
rows ('ops_asset') of mixed sizes around a threshold of 256, inserted as plain JSON with sqlite3 into a
copy of the seeded DB, then put in worker form by `statectl migrate to-bucket` (file:// bucket, gzip).
Every command runs as a subprocess with `--batch-size 50 --concurrency 4`; a tight loop polls the DB
(read-only sqlite3) or the bucket directory and SIGKILLs it as soon as its kill point is reached (the test
fails if the command finished first).

- import: the state is exported (`statectl export --file`), both stores are wiped, then
  `statectl import --yes` is killed (a) once its first object exists (asserted: no row yet), (b) once
  300 rows and (c) once 1200 rows exist. After each kill every row present decodes (statectl's core) to
  its original value, every ref row's object exists and reads back through the installed provider.
  The re-run exits 0 and all 2000 keys read back (core and provider); a further import reports every
  key "same", writes no object and changes neither store.
- mv: a second dag run R2 of the same dag is inserted with sqlite3, then
  `statectl mv --dag D --run R1 --to-run R2 --yes` is killed once 300 target rows exist, as soon as a
  given source object (batch 15) is deleted, and once 1200 target rows exist. After each kill every key
  reads (core) at R1 or at R2 (at least one; the original value wherever it is), every ref row's object
  exists and reads through the provider. The re-run exits 0: every key is at R2 with its original value
  (core and provider, objects under R2's prefix), no task row of R1 remains, no object that a row
  references is under R1's prefix, and the asset rows and objects are untouched. A kill between a batch's
  source-row deletes and its object deletes leaves orphans under R1 (never a row without its object), as
  a worker's delete does: at most a batch per kill, and `statectl prune` removes them once past its grace.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.cli_support import DAG_ID, STATECTL, db_snapshot, files_snapshot, statectl
from tests.infra import AirflowEnv
from tests.migrate_support import (
    N_ASSET_ROWS,
    N_TASK_ROWS,
    REF_KEY,
    THRESHOLD,
    RowKey,
    core_values,
    provider,
    ref_url,
    same,
    seed_rows,
    worker_read,
)

pytest_plugins = ["tests.cli_support"]

TOTAL = N_TASK_ROWS + N_ASSET_ROWS
BATCH = ["--batch-size", "50", "--concurrency", "4"]
R2 = "manual__statectl_kill_target"

# (run_id or None for an asset row, (task_id or None, map_index, key))
Where = tuple[str | None, RowKey]


# --------------------------------------------------------------------------- set-up


def seed_worker_form(home: AirflowEnv, env: dict[str, str]) -> dict[RowKey, Any]:
    """Plain JSON rows inserted with sqlite3, then `migrate to-bucket`: the state as workers with the
    backend would have written it. Task rows in insertion (= id) order, then the asset rows."""
    expected = seed_rows(home)
    done = statectl(env, "migrate", "to-bucket", "--yes", "-o", "json")
    assert done.code == 0, str(done)
    rows = all_rows(home)
    assert len(rows) == TOTAL
    assert sum(1 for text in rows.values() if ref_url(text)) > TOTAL // 2  # most values are objects
    return expected


def add_dag_run(home: AirflowEnv, run_id: str) -> None:
    """A second run of the seeded dag: its first run's columns, with a new run_id, logical_date and run_after
    (unique per dag). Only dag_run is needed: task_state_store's FK is dag_run.id."""
    assert home.db_path is not None
    with sqlite3.connect(home.db_path) as conn:
        columns = [r[1] for r in conn.execute("PRAGMA table_info(dag_run)") if r[1] != "id"]
        new = {
            "run_id": "?",
            "logical_date": "'2001-01-01 00:00:00.000000'",
            "run_after": "'2001-01-01 00:00:00.000000'",
        }
        chosen = ", ".join(new.get(c, c) for c in columns)
        conn.execute(
            f"INSERT INTO dag_run ({', '.join(columns)}) SELECT {chosen} FROM dag_run WHERE dag_id = ?",
            (run_id, DAG_ID),
        )
        runs = conn.execute("SELECT run_id FROM dag_run WHERE dag_id = ?", (DAG_ID,)).fetchall()
    assert len(runs) == 2, runs


# --------------------------------------------------------------------------- observing


def count(db: Path, sql: str, *params: Any) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        return int(conn.execute(sql, params).fetchone()[0])


def all_rows(home: AirflowEnv) -> dict[Where, str]:
    """Every task and asset row's column text, by run."""
    rows: dict[Where, str] = {}
    query = 'SELECT run_id, task_id, map_index, "key", value FROM task_state_store'
    for run_id, task_id, map_index, key, value in home.query(query):
        rows[(run_id, (task_id, int(map_index), key))] = value
    for key, value in home.query('SELECT "key", value FROM asset_state_store'):
        rows[(None, (None, -1, key))] = value
    return rows


def core_by_run(environ: dict[str, str]) -> dict[Where, Any]:
    """Every value as statectl's core decodes it (StateStore.decode), by run (core_values merges runs)."""
    from statectl.core import codec
    from statectl.core.config import Config
    from statectl.core.filters import RowFilter
    from statectl.core.scopes import TaskScope
    from statectl.stores.store import StateStore

    store = StateStore(Config(environ=environ))
    try:
        values: dict[Where, Any] = {}
        for row in store.metastore.iter_rows(RowFilter()):
            scope = row.scope
            where: Where = (
                (scope.run_id, (scope.task_id, scope.map_index, row.key))
                if isinstance(scope, TaskScope)
                else (None, (None, -1, row.key))
            )
            values[where] = store.decode(codec.classify(row.value))[0]
        return values
    finally:
        store.close()


def assert_rows_resolve(home: AirflowEnv, env: dict[str, str], expected: dict[RowKey, Any]) -> dict[Where, str]:
    """No row references a missing object, and every row reads its original value through the provider
    (a worker with this configuration). Returns the rows."""
    rows = all_rows(home)
    dangling = [(w, url) for w, text in rows.items() if (url := ref_url(text)) and not object_path(url).is_file()]
    assert not dangling, f"{len(dangling)} rows reference a missing object, e.g. {dangling[:3]}"
    with provider(env) as backend:
        for (run_id, key), text in rows.items():
            assert text.startswith('{"' + REF_KEY), (run_id, key, text[:80])  # worker form: inline or object ref
            assert same(worker_read(backend, text, asset=run_id is None), expected[key]), (run_id, key)
    return rows


def object_path(url: str) -> Path:
    assert url.startswith("file://"), url
    return Path(url.removeprefix("file://"))


def provider_objects(root: Path) -> set[Path]:
    """Objects in the provider's layout (not statectl's probes or temporary files)."""
    return {p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".statectl")}


def kill_when(env: dict[str, str], argv: list[str], ready: Callable[[], bool], what: str) -> None:
    """Start statectl, SIGKILL it as soon as ready() holds; it must still be running then."""
    proc = subprocess.Popen([STATECTL, *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while not ready():
            if proc.poll() is not None:
                out, err = proc.communicate()
                raise AssertionError(
                    f"statectl finished before the kill point ({what}): {out[-2000:]!r} {err[-2000:]!r}"
                )
            assert time.monotonic() < deadline, f"kill point {what} not reached"
            time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL, (what, proc.returncode)


def run_json(env: dict[str, str], argv: list[str]) -> dict[str, Any]:
    done = subprocess.run([STATECTL, *argv], env=env, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stdout.decode()[-3000:] + done.stderr.decode()[-3000:]
    report: dict[str, Any] = json.loads(done.stdout)
    return report


# --------------------------------------------------------------------------- import


@pytest.mark.slow
def test_sigkill_import_then_rerun(seeded: AirflowEnv, tmp_path: Path) -> None:
    home = seeded
    assert home.db_path is not None
    db = home.db_path
    env = home.with_backend(home.bucket_url, THRESHOLD, "gzip")
    expected = seed_worker_form(home, env)
    refs_before = all_rows(home)
    snapshot = tmp_path / "snap.jsonl"
    exported = run_json(env, ["export", "--file", str(snapshot), "-o", "json"])
    assert (exported["keys"], exported["unreadable"]) == (TOTAL, 0), exported

    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM task_state_store")
        conn.execute("DELETE FROM asset_state_store")
    shutil.rmtree(home.bucket_dir)
    home.bucket_dir.mkdir()
    assert not all_rows(home)

    def rows() -> int:
        return count(db, "SELECT (SELECT COUNT(*) FROM task_state_store) + (SELECT COUNT(*) FROM asset_state_store)")

    def first_object() -> bool:
        return bool(provider_objects(home.bucket_dir))

    argv = ["import", str(snapshot), "--yes", *BATCH, "-o", "json"]
    present = []
    for what, ready, at_least in [
        ("first object written", first_object, 0),
        ("300 rows", lambda: rows() >= 300, 300),
        ("1200 rows", lambda: rows() >= 1200, 1200),
    ]:
        kill_when(env, argv, ready, what)
        got = core_values(env)
        assert at_least <= len(got) < TOTAL, (what, len(got))
        if at_least == 0:
            assert not got and provider_objects(home.bucket_dir), "killed after batch 1's rows: not the kill point"
        assert set(got) <= set(expected)
        bad = [k for k, v in got.items() if not same(v, expected[k])]
        assert not bad, f"after the kill at {what}: {len(bad)} values differ, e.g. {bad[:3]}"
        assert_rows_resolve(home, env, expected)
        present.append(len(got))
    assert present == sorted(present), present

    report = run_json(env, argv)
    assert report["interrupted"] is None and report["outcomes"]["failed"]["count"] == 0, report
    got = core_values(env)
    assert set(got) == set(expected)
    bad = [k for k, v in expected.items() if not same(got[k], v)]
    assert not bad, f"{len(bad)} values differ after the re-run, e.g. {bad[:3]}"
    rows_after = assert_rows_resolve(home, env, expected)
    assert rows_after == refs_before  # the same columns (refs) as the exported deployment's

    db_before, files_before = db_snapshot(home), files_snapshot(home.bucket_dir)
    again = run_json(env, argv)
    assert again["outcomes"]["same"]["count"] == TOTAL, again["outcomes"]
    assert (again["objects_written"], again["objects_deleted"]) == (0, 0), again
    assert db_snapshot(home) == db_before and files_snapshot(home.bucket_dir) == files_before


# --------------------------------------------------------------------------- mv


@pytest.mark.slow
def test_sigkill_mv_then_rerun(seeded: AirflowEnv) -> None:
    home = seeded
    assert home.db_path is not None
    db = home.db_path
    env = home.with_backend(home.bucket_url, THRESHOLD, "gzip")
    expected = seed_worker_form(home, env)
    (r1,) = (r[0] for r in home.query("SELECT run_id FROM dag_run WHERE dag_id = :d", d=DAG_ID))
    add_dag_run(home, R2)
    task_keys = {k: v for k, v in expected.items() if k[0] is not None}
    r1_prefix = home.bucket_dir / quote(DAG_ID, safe="") / quote(r1, safe="")
    r2_prefix = home.bucket_dir / quote(DAG_ID, safe="") / quote(R2, safe="")
    assets_before = db_snapshot(home)["asset"]
    asset_files_before = files_snapshot(home.bucket_dir / "assets")
    source_rows = all_rows(home)
    # The object of the first source row with one in batch 15 (rows 700..749, in id order).
    order = [w for w in source_rows if w[0] == r1][700:]
    watched = next(object_path(url) for w in order if (url := ref_url(source_rows[w])))
    assert watched.is_file()

    def at(run_id: str) -> Callable[[], int]:
        return lambda: count(db, "SELECT COUNT(*) FROM task_state_store WHERE run_id = ?", run_id)

    argv = ["mv", "--dag", DAG_ID, "--run", r1, "--to-run", R2, "--yes", *BATCH, "-o", "json"]
    kill_points: list[tuple[str, Callable[[], bool]]] = [
        ("300 target rows", lambda: at(R2)() >= 300),
        ("a source object of batch 15 deleted", lambda: not watched.exists()),
        ("1200 target rows", lambda: at(R2)() >= 1200),
    ]
    for what, ready in kill_points:
        kill_when(env, argv, ready, what)
        got = core_by_run(env)
        lost = [k for k in task_keys if (r1, k) not in got and (R2, k) not in got]
        assert not lost, f"after the kill at {what}: {len(lost)} keys at neither run, e.g. {lost[:3]}"
        bad = [(run, k) for (run, k), v in got.items() if not same(v, expected[k])]
        assert not bad, f"after the kill at {what}: {len(bad)} values differ, e.g. {bad[:3]}"
        assert set(got) <= {(run, k) for k in task_keys for run in (r1, R2)} | {(None, k) for k in expected}
        assert at(r1)() > 0 and at(R2)() < N_TASK_ROWS, (what, at(r1)(), at(R2)())
        assert_rows_resolve(home, env, expected)

    report = run_json(env, argv)
    assert report["interrupted"] is None and not report["sources_kept"], report
    got = core_by_run(env)
    assert set(got) == {(R2, k) for k in task_keys} | {(None, k) for k in expected if k[0] is None}
    bad = [(run, k) for (run, k), v in got.items() if not same(v, expected[k])]
    assert not bad, f"{len(bad)} values differ after the re-run, e.g. {bad[:3]}"
    rows = assert_rows_resolve(home, env, expected)
    assert at(r1)() == 0
    for (run_id, _), text in rows.items():
        url = ref_url(text)
        if run_id == R2 and url:
            assert r2_prefix in object_path(url).parents, url
    assert db_snapshot(home)["asset"] == assets_before
    assert files_snapshot(home.bucket_dir / "assets") == asset_files_before

    # What is left under R1's prefix is orphans of the kills (rows deleted, the process killed before
    # their objects): no row references them, at most a batch per kill, and prune removes them.
    referenced = {object_path(url) for text in rows.values() if (url := ref_url(text))}
    orphans = provider_objects(r1_prefix)
    assert not orphans & referenced
    assert len(orphans) <= 50 * len(kill_points), len(orphans)
    hour_ago = time.time() - 3700  # older than prune's default grace (1h)
    for orphan in orphans:
        os.utime(orphan, (hour_ago, hour_ago))
    pruned = statectl(env, "prune", "--yes", "-o", "json")
    assert pruned.code == 0, str(pruned)
    assert not provider_objects(r1_prefix), sorted(provider_objects(r1_prefix))[:5]
    assert all_rows(home) == rows
