"""SIGKILL `statectl migrate` at several points; after each kill every value still reads the same,
and re-running the same command finishes the job (a further run changes nothing).

~2000 rows of mixed sizes (plain JSON, as workers without a backend store them) are inserted
with sqlite3 into a copy of the seeded DB (its dag run, task instances 'writer' and 'mapped'[0..2]
and its active asset). `migrate to-bucket --batch-size 50 --concurrency 4` runs as a subprocess
and is killed once the first object exists (objects written, no row yet), then when 200, 900 and
1600 rows have changed. After each kill every row decodes to its original value through statectl's
core (StateStore.decode) and, for ref rows, through the installed provider's deserialize (a worker
with the new configuration); plain rows are what a worker without the backend reads. The same
for `migrate to-metastore` from the migrated state, where a ref row must never lose its object.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.cli_support import ASSET, DAG_ID, STATECTL, db_snapshot, files_snapshot
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
    state_rows,
    worker_read,
)

pytest_plugins = ["tests.cli_support"]

BATCH = ["--batch-size", "50", "--concurrency", "4"]


def count_refs(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        sql = "SELECT (SELECT COUNT(*) FROM task_state_store WHERE value LIKE ?) + "
        sql += "(SELECT COUNT(*) FROM asset_state_store WHERE value LIKE ?)"
        pattern = '{"' + REF_KEY + '"%'
        return int(conn.execute(sql, (pattern, pattern)).fetchone()[0])


def kill_when(env: dict[str, str], args: list[str], ready: Callable[[], bool], what: str) -> None:
    """Start statectl, SIGKILL it as soon as ready() holds (it must not finish first)."""
    proc = subprocess.Popen(
        [STATECTL, "migrate", *args, "--yes", *BATCH, "-o", "json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    try:
        while not ready():
            assert proc.poll() is None, f"statectl finished before the kill point ({what}): {proc.communicate()}"
            assert time.monotonic() < deadline, f"kill point {what} not reached"
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL, (what, proc.returncode)


def assert_every_value_reads_the_same(home: AirflowEnv, env: dict[str, str], expected: dict[RowKey, Any]) -> int:
    """Through statectl's core and, for ref rows, the provider; return how many rows hold refs."""
    got = core_values(env)
    assert set(got) == set(expected)
    bad = [k for k, v in expected.items() if not same(got[k], v)]
    assert not bad, f"{len(bad)} values changed, e.g. {bad[:3]}"
    refs = 0
    with provider(env) as backend:
        for where, text in state_rows(home).items():
            if text.startswith('{"' + REF_KEY):
                refs += 1
                assert same(worker_read(backend, text, asset=where[0] is None), expected[where]), where
            else:
                assert same(json.loads(text), expected[where]), where  # a worker without the backend
    return refs


def finish(home: AirflowEnv, env: dict[str, str], args: list[str]) -> dict[str, Any]:
    """Re-run to completion, then once more: the second re-run changes nothing."""
    done = subprocess.run([STATECTL, "migrate", *args, "--yes", *BATCH, "-o", "json"], env=env, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    report = json.loads(done.stdout)
    db_before, files_before = db_snapshot(home), files_snapshot(home.bucket_dir)
    again = subprocess.run([STATECTL, "migrate", *args, "--yes", *BATCH, "-o", "json"], env=env, capture_output=True)
    assert again.returncode == 0, again.stderr.decode()[-3000:]
    second = json.loads(again.stdout)
    total = N_TASK_ROWS + N_ASSET_ROWS
    assert second["actions"]["done"]["rows"] == total, second["actions"]
    assert (second["objects_written"], second["objects_deleted"]) == (0, 0)
    assert db_snapshot(home) == db_before and files_snapshot(home.bucket_dir) == files_before
    return report


def provider_refs(env: dict[str, str], home: AirflowEnv, expected: dict[RowKey, Any]) -> dict[RowKey, str]:
    """The ref the provider stores for each value (its object path, from its own path builders)."""
    from airflow.sdk.state import AssetScope, TaskScope

    run_id = home.query("SELECT run_id FROM dag_run WHERE dag_id = :d", d=DAG_ID)[0][0]
    refs: dict[RowKey, str] = {}
    with provider(env) as backend:
        module = __import__(type(backend).__module__, fromlist=["_build_task_path"])
        for (task_id, map_index, key), value in expected.items():
            serialized = json.dumps(value)
            if len(serialized.encode()) < THRESHOLD:
                refs[(task_id, map_index, key)] = serialized
            elif task_id is None:
                refs[(None, map_index, key)] = str(module._build_asset_path(AssetScope(name=ASSET), key))
            else:
                scope = TaskScope(DAG_ID, run_id, task_id, map_index)
                refs[(task_id, map_index, key)] = str(module._build_task_path(scope, key))
    return refs


def object_of_row(refs: dict[RowKey, str], index: int) -> Path:
    """The object path of the first task row at or after insertion index `index` that has one."""
    rows = list(refs.items())[:N_TASK_ROWS]  # insertion order = id order = batch order
    for _, ref in rows[index:]:
        if ref.startswith("file://"):
            return Path(ref.removeprefix("file://"))
    raise AssertionError(index)


@pytest.mark.slow
def test_sigkill_to_bucket_then_to_metastore(seeded: AirflowEnv) -> None:
    home = seeded
    assert home.db_path is not None
    expected = seed_rows(home)
    total = len(expected)
    env = home.with_backend(home.bucket_url, THRESHOLD, "gzip")
    db = home.db_path
    refs = provider_refs(env, home, expected)

    # ---- to-bucket ------------------------------------------------------------------------------
    # Kill points: right after a batch's commit (rows changed), and between a batch's object
    # writes and its commit (a given row's object has just appeared; its row is not updated yet).
    def rows_changed(n: int) -> Callable[[], bool]:
        return lambda: count_refs(db) >= n

    def appeared(path: Path) -> Callable[[], bool]:
        return path.exists

    kill_points = [("an object of batch 1 written", appeared(object_of_row(refs, 10)))]
    kill_points += [("200 rows changed", rows_changed(200)), ("900 rows changed", rows_changed(900))]
    kill_points += [("an object of batch 25 written", appeared(object_of_row(refs, 1210)))]
    kill_points += [("1600 rows changed", rows_changed(1600))]
    changed = []
    for what, ready in kill_points:
        kill_when(env, ["to-bucket"], ready, what)
        changed.append(assert_every_value_reads_the_same(home, env, expected))
    assert changed == sorted(changed) and 0 < changed[-1] < total, changed
    finish(home, env, ["to-bucket"])
    assert assert_every_value_reads_the_same(home, env, expected) == total
    rows = state_rows(home)
    for where, ref in refs.items():
        assert rows[where] == json.dumps({REF_KEY: ref}), where
    objects = {p for p in home.bucket_dir.rglob("*") if p.is_file()}
    in_layout = {Path(r.removeprefix("file://")) for r in refs.values() if r.startswith("file://")}
    assert in_layout <= objects
    # A kill mid-write leaves statectl's temporary file beside the object (never a truncated object).
    partial = objects - in_layout
    assert all(".statectl-" in p.name and p.name.endswith(".tmp") for p in partial), partial
    assert len(partial) <= len(kill_points) * 4, partial  # at most --concurrency per kill

    # ---- to-metastore -------------------------------------------------------------------------------
    # Kill points: right after a batch's commit, and as soon as a given row's object is deleted.
    def plain_rows_at_least(n: int) -> Callable[[], bool]:
        return lambda: total - count_refs(db) >= n

    def gone(path: Path) -> Callable[[], bool]:
        return lambda: not path.exists()

    points = [("an object of batch 1 deleted", gone(object_of_row(refs, 10)))]
    points += [("600 rows plain", plain_rows_at_least(600))]
    points += [("an object of batch 21 deleted", gone(object_of_row(refs, 1010)))]
    points += [("1700 rows plain", plain_rows_at_least(1700))]
    for what, ready in points:
        kill_when(env, ["to-metastore"], ready, what)
        assert_every_value_reads_the_same(home, env, expected)
    finish(home, env, ["to-metastore"])
    rows = state_rows(home)
    for where, value in expected.items():
        assert rows[where] == json.dumps(value), where
    # A kill between a batch's commit and its deletes leaves objects no row references (an orphan,
    # never a row without its object); nothing else may remain.
    referenced = {ref_url(t) for t in rows.values()} - {None}
    assert not referenced
    leftovers = [p for p in home.bucket_dir.rglob("*") if p.is_file() and p not in partial]
    assert len(leftovers) <= len(points) * 50, f"{len(leftovers)} orphans: more than a batch per kill"
