"""statectl prune on real stores: expired rows and their objects, orphans, --older-than, the lock.

State is written by ONE real DAG run per session through the real provider (file:// bucket, gzip,
threshold 16) with real retentions: 1 s (expired by the time a test runs), NEVER_EXPIRE, the default
(30 days) and 1 hour; a mapped task with 1 s retention; an asset value; and a second DAG whose run a
test deletes (ON DELETE CASCADE takes its rows, leaving its objects orphaned). Every test gets a copy
of the DB and the bucket restored in place (the refs hold its absolute path; tests run serially) and
asserts the rows and files before and after. PostgreSQL + moto S3 (conn_id) runs its own DAG.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import socket
import sqlite3
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from statectl.core import layout
from statectl.core.filters import RowFilter
from statectl.core.layout import ObjectURL, TaskAddress, object_url
from statectl.core.scopes import AssetScope, TaskScope
from statectl.errors import ExitCode
from statectl.ops.prune import DELETES_IN_FLIGHT, Category
from tests.cli_support import STATECTL, db_snapshot, files_snapshot, statectl
from tests.infra import AirflowEnv, S3Bucket, WorkerBucketSeed, run_dag, seed_worker_bucket, worker_bucket_copy

pytest_plugins = ["tests.cli_support"]

DAG = "statectl_prune_writer"
GONE_DAG = "statectl_prune_gone"
ASSET_NAME = "statectl_prune_asset"
THRESHOLD = 16
LOCK = ".statectl~prune.lock"

WRITER_SOURCE = f"""
from datetime import datetime, timedelta

from airflow.sdk import Asset, dag, task
from airflow.sdk.execution_time.context import NEVER_EXPIRE

ASSET = Asset(name={ASSET_NAME!r}, uri="file:///tmp/statectl-prune-asset")
BIG = "x" * 100


@dag(dag_id={DAG!r}, schedule=None, start_date=datetime(2024, 1, 1), catchup=False)
def writer_dag():
    @task(outlets=[ASSET])
    def writer(**context):
        store = context["task_state_store"]
        store.set("expired_obj", {{"v": BIG}}, retention=timedelta(seconds=1))
        store.set("expired_inline", 1, retention=timedelta(seconds=1))
        store.set("forever", {{"v": BIG}}, retention=NEVER_EXPIRE)
        store.set("default", {{"v": BIG}})
        store.set("hour", {{"v": BIG}}, retention=timedelta(hours=1))
        context["asset_state_store"][ASSET].set("watermark", {{"w": BIG}})

    @task
    def mapped(i, **context):
        context["task_state_store"].set("m", {{"i": i, "v": BIG}}, retention=timedelta(seconds=1))

    writer() >> mapped.expand(i=[0, 1])


@dag(dag_id={GONE_DAG!r}, schedule=None, start_date=datetime(2024, 1, 1), catchup=False)
def gone_dag():
    @task
    def doomed(**context):
        context["task_state_store"].set("k", {{"v": BIG}})

    doomed()


a = writer_dag()
b = gone_dag()

if __name__ == "__main__":
    a.test()
    b.test()
"""

EXPIRED = {("writer", -1, "expired_obj"), ("writer", -1, "expired_inline"), ("mapped", 0, "m"), ("mapped", 1, "m")}
LIVE = {("writer", -1, "forever"), ("writer", -1, "default"), ("writer", -1, "hour")}


@pytest.fixture(scope="session")
def prune_seed(airflow_template: Path, tmp_path_factory: pytest.TempPathFactory) -> WorkerBucketSeed:
    root = tmp_path_factory.mktemp("prune_seed")
    return seed_worker_bucket(airflow_template / "airflow.db", root, WRITER_SOURCE, THRESHOLD, "gzip")


@pytest.fixture
def home(prune_seed: WorkerBucketSeed, tmp_path: Path) -> AirflowEnv:
    """A copy of the worker-written DB; the worker's bucket restored as written."""
    return worker_bucket_copy(prune_seed, tmp_path)


def env_of(home: AirflowEnv) -> dict[str, str]:
    return home.with_backend(home.bucket_url, THRESHOLD, "gzip")


# --------------------------------------------------------------------------- helpers


def prune(env: dict[str, str], *args: str, code: int = 0) -> dict[str, Any]:
    r = statectl(env, "prune", *args, "-o", "json")
    assert r.code == code, str(r)
    assert "Traceback" not in r.stderr, str(r)
    report = r.json()
    report["_stderr"] = r.stderr
    return report


def task_rows(home: AirflowEnv) -> dict[tuple[str, int, str], str]:
    rows = home.query('SELECT task_id, map_index, "key", value FROM task_state_store WHERE dag_id = :d', d=DAG)
    return {(r[0], int(r[1]), r[2]): r[3] for r in rows}


def ref_path(value: str) -> Path | None:
    ref = json.loads(value).get("__airflow_state_ref__", "")
    return Path(ref.removeprefix("file://")) if ref.startswith("file://") else None


def all_refs(home: AirflowEnv) -> list[Path]:
    values = [
        r[0] for r in home.query("SELECT value FROM task_state_store UNION ALL SELECT value FROM asset_state_store")
    ]
    return [p for v in values if (p := ref_path(v)) is not None]


def files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def age(path: Path, delta: timedelta) -> None:
    when = time.time() - delta.total_seconds()
    os.utime(path, (when, when))


def write_gz(path: Path, value: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(json.dumps(value).encode()))
    return path


def delete_dag_run(home: AirflowEnv, dag_id: str) -> None:
    """As Airflow deletes a run: ON DELETE CASCADE takes the state rows (SQLite needs the pragma)."""
    assert home.db_path is not None
    with sqlite3.connect(home.db_path) as conn:
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("DELETE FROM dag_run WHERE dag_id = ?", (dag_id,))


def lock_text(host: str, pid: int, heartbeat: datetime, token: str = "their-token") -> str:
    started = (heartbeat - timedelta(minutes=1)).isoformat()
    return json.dumps(
        {"host": host, "pid": pid, "token": token, "started": started, "heartbeat": heartbeat.isoformat()}
    )


def assert_live_intact(home: AirflowEnv, live: set[tuple[str, int, str]] = LIVE) -> None:
    """The live rows are there, and every row's object exists."""
    rows = task_rows(home)
    assert set(rows) >= live
    for path in all_refs(home):
        assert path.exists(), f"a row references {path}, which is gone"


# --------------------------------------------------------------------------- expiry


def test_expired_rows_then_their_objects(home: AirflowEnv) -> None:
    env = env_of(home)
    before = task_rows(home)
    assert set(before) == EXPIRED | LIVE
    assert ref_path(before[("writer", -1, "expired_inline")]) is None  # inline: a row, no object
    expired_objects = [p for k in EXPIRED if (p := ref_path(before[k])) is not None]
    assert len(expired_objects) == 3 and all(p.exists() for p in expired_objects)
    (gone_run_value,) = home.query("SELECT value FROM task_state_store WHERE dag_id = :d", d=GONE_DAG)[0]

    report = prune(env, "--yes")
    assert report["deleted"]["expired"]["rows"] == 4
    assert report["deleted"]["expired"]["objects"] == 3
    assert report["exit_code"] == 0
    after = task_rows(home)
    assert set(after) == LIVE
    assert not any(p.exists() for p in expired_objects)
    assert_live_intact(home)
    assert home.query('SELECT "key" FROM asset_state_store') == [("watermark",)]  # asset rows never expire
    assert ref_path(gone_run_value).exists()  # the other dag's default retention: not expired
    # Fresh objects of live rows are no orphans; nothing else to do on a second run.
    assert report["plan"]["categories"]["fresh_orphans"]["objects"] == 0
    again = prune(env, "--yes")
    assert again["deletions"] == 0 and again["plan"]["deletions"] == 0
    assert not (home.bucket_dir / LOCK).exists()


def test_an_object_rows_elsewhere_reference_stays(home: AirflowEnv) -> None:
    """A hand copied expired refs into an asset row and into another dag's row: their objects stay
    (prune looks for such rows once per run; its per-batch check probes only the object's own task)."""
    env = env_of(home)
    before = task_rows(home)
    into_asset, into_task = before[("writer", -1, "expired_obj")], before[("mapped", 0, "m")]
    home.query("UPDATE asset_state_store SET value = :v", v=into_asset)
    home.query("UPDATE task_state_store SET value = :v WHERE dag_id = :d", v=into_task, d=GONE_DAG)
    report = prune(env, "--yes")
    assert report["deleted"]["expired"]["rows"] == 4
    assert report["deleted"]["expired"]["objects"] == 1  # mapped 1's; the other two are referenced
    kept = {k["object"]: k["reason"] for k in report["kept"]}
    assert set(kept) == {f"file://{ref_path(into_asset)}", f"file://{ref_path(into_task)}"}
    assert all("another task instance or an asset" in why for why in kept.values())
    assert set(task_rows(home)) == LIVE
    assert_live_intact(home)


segments = st.text(min_size=1, max_size=30).filter(lambda s: s not in (".", ".."))


@given(
    segments,
    segments,
    segments,
    st.integers(min_value=-1, max_value=10**6),
    segments,
    st.integers(min_value=0, max_value=3),
    st.sampled_from(["gzip", None]),
)
def test_the_task_address_of_an_object_is_its_writers(
    dag: str, run: str, task: str, map_index: int, key: str, region: int, compression: str | None
) -> None:
    """The per-batch check probes the rows of the task instance the object's path names: for the
    provider's exact layout that is the instance that wrote it (any text, region or not)."""
    base = ObjectURL.parse("s3://conn@bucket/state")
    url = object_url(base, TaskScope(dag, run, task, map_index, region), key, compression)
    assert layout.task_address(url, base) == (dag, run, task, map_index)
    assert layout.task_address(object_url(base, AssetScope(name=dag, uri="s3://x"), key, compression), base) is None
    assert layout.task_address(ObjectURL.parse(f"s3://other@bucket/state/{url.path.split('/', 2)[2]}"), base) is None


@given(
    st.lists(
        st.tuples(
            st.tuples(segments, segments, segments, st.integers(min_value=-1, max_value=3)),
            st.tuples(segments, segments, segments, st.integers(min_value=-1, max_value=3)),
            st.booleans(),
            segments,
            st.integers(min_value=0, max_value=1),
            st.sampled_from(["", "sub/", "../"]),
        ),
        max_size=8,
    )
)
def test_rows_holding_another_instances_object_are_found(
    rows: list[tuple[TaskAddress, TaskAddress, bool, str, int, str]],
) -> None:
    """The once-per-run read tells a row's own objects from the text alone; what it finds is exactly what
    the object's parsed path says: objects at another task instance's path than the holder's."""
    from statectl.core import codec
    from statectl.ops.prune import refs_held_elsewhere

    base = ObjectURL.parse("s3://conn@bucket/state")
    holders = []
    for holder, other, own, key, region, extra in rows:
        url = object_url(base, TaskScope(*(holder if own else other), region_id=region), key, "gzip")
        ref = f"{url.path.rsplit('/', 1)[0]}/{extra}{url.path.rsplit('/', 1)[1]}" if extra else url.path
        holders.append((holder, codec.wrap_ref(f"s3://conn@{ref}")))

    class Rows:
        def iter_ref_holders(self, head: str) -> Any:
            return iter(holders)

    expected = set()
    for holder, text in holders:
        url = ObjectURL.parse(json.loads(text)["__airflow_state_ref__"])
        if (at := layout.task_address(url, base)) is not None and at != holder:
            expected.add(url.path)
    assert refs_held_elsewhere(Rows(), base) == expected  # type: ignore[arg-type]


def test_batched_lookups_probe_the_index_on_sqlite(home: AirflowEnv) -> None:
    """The many-rows lookups (prune's last check, import's existing rows and dag runs) on Airflow's own SQLite
    schema: each statement searches an index per row and scans no table, however large it grows."""
    from statectl.core.config import Config
    from statectl.core.scopes import AssetScope as Asset
    from statectl.stores.metastore import NewValue
    from statectl.stores.store import StateStore

    rows = home.query('SELECT dag_id, run_id, task_id, map_index, "key", value, dag_run_id FROM task_state_store')
    (asset_id,) = home.query("SELECT asset_id FROM asset_state_store")[0]
    store = StateStore(Config(environ=env_of(home)))
    statements: list[str] = []
    try:
        metastore = store.metastore
        metastore.conn.set_trace_callback(statements.append)
        found = metastore.referenced_texts([r[5] for r in rows], [(r[0], r[1], r[2], int(r[3])) for r in rows])
        assert found == {r[5] for r in rows}
        wanted = [NewValue(TaskScope(r[0], r[1], r[2], int(r[3])), r[4], "x", dag_run_id=r[6]) for r in rows]
        wanted.append(NewValue(Asset(name=ASSET_NAME, uri="x", asset_id=asset_id), "watermark", "x"))
        assert len(metastore.existing_rows(wanted)) == len(rows) + 1
        assert len(metastore.dag_run_ids([(r[0], r[1]) for r in rows])) == len({(r[0], r[1]) for r in rows})
        metastore.conn.set_trace_callback(None)
        looked = [sql for sql in statements if sql.startswith("WITH p(")]
        assert len(looked) == 4
        for sql in looked:
            plan = " / ".join(r[3] for r in metastore.conn.execute(f"EXPLAIN QUERY PLAN {sql}"))
            assert "SEARCH" in plan and not any(
                f"SCAN {t}" in plan for t in ("task_state_store", "asset_state_store", "dag_run")
            ), plan
    finally:
        store.close()


def test_an_object_a_worker_references_again_stays(home: AirflowEnv) -> None:
    """Between the deletion of an expired row and of its object, a worker writes the key again with
    the same ref (its object rewritten at the same path): the object stays and the report says why."""
    from statectl.core.config import Config
    from statectl.ops.prune import PruneOptions, run_prune
    from statectl.stores.store import StateStore

    before = task_rows(home)
    value = before[("writer", -1, "expired_obj")]
    (row,) = home.query(
        'SELECT dag_id, dag_run_id, run_id, task_id, map_index, "key", updated_at FROM task_state_store '
        'WHERE task_id = :t AND "key" = :k',
        t="writer",
        k="expired_obj",
    )
    store = StateStore(Config(environ=env_of(home)))
    delete_rows = store.metastore.delete_many_if_unchanged

    def delete_then_a_worker_writes(rows: Any, **kwargs: Any) -> Any:
        deleted = delete_rows(rows, **kwargs)
        home.query(
            "INSERT INTO task_state_store (dag_id, dag_run_id, run_id, task_id, map_index, \"key\", value, "
            "updated_at) VALUES (:d, :dr, :r, :t, :m, :k, :v, :u)",
            d=row[0], dr=row[1], r=row[2], t=row[3], m=row[4], k=row[5], v=value, u=row[6],
        )  # fmt: skip
        return deleted

    store.metastore.delete_many_if_unchanged = delete_then_a_worker_writes  # type: ignore[method-assign]
    try:
        report = run_prune(store, PruneOptions(flt=RowFilter(dag_id=DAG, task_id="writer")))
    finally:
        store.close()
    assert report.deleted[Category.EXPIRED].rows == 2  # expired_obj (then written again), expired_inline
    assert report.kept == [(f"file://{ref_path(value)}", "a row references it again (a worker wrote it meanwhile)")]
    assert task_rows(home)[("writer", -1, "expired_obj")] == value
    assert_live_intact(home)


def test_dry_run_changes_nothing_and_shows_the_plan(home: AirflowEnv) -> None:
    env = env_of(home)
    orphan = write_gz(home.bucket_dir / "old_dag" / "r" / "t" / "-1" / "k.gz", {"o": 1})
    age(orphan, timedelta(hours=3))
    db_before, files_before = db_snapshot(home), files_snapshot(home.bucket_dir)
    report = prune(env, "--dry-run")
    assert report["dry_run"] is True and report["deletions"] == 0
    cats = report["plan"]["categories"]
    assert (cats["expired"]["rows"], cats["expired"]["objects"]) == (4, 3)
    assert cats["expired"]["bytes"] > 3 * 100  # row texts and the objects' sizes from the listing
    assert cats["orphans"]["objects"] == 1 and cats["orphans"]["first"] == [orphan.as_uri()]
    assert any("expired_obj" in label for label in cats["expired"]["first"])
    assert db_snapshot(home) == db_before and files_snapshot(home.bucket_dir) == files_before
    # The table form names the first entries too.
    r = statectl(env, "prune", "--dry-run")
    assert r.code == 0 and "expired_obj" in r.stderr and "dry run: nothing changed" in r.stderr, str(r)
    assert db_snapshot(home) == db_before and files_snapshot(home.bucket_dir) == files_before


# --------------------------------------------------------------------------- orphans


def test_orphans_old_go_fresh_stay_and_deleted_runs(home: AirflowEnv) -> None:
    env = env_of(home)
    old = write_gz(home.bucket_dir / "removed_dag" / "run1" / "t" / "-1" / "k.gz", {"o": "old"})
    old_asset = write_gz(home.bucket_dir / "assets" / "gone_asset" / "w.gz", {"o": "asset"})
    fresh = write_gz(home.bucket_dir / "removed_dag" / "run2" / "t" / "-1" / "k.gz", {"o": "fresh"})
    age(old, timedelta(hours=2))
    age(old_asset, timedelta(days=2))
    # Objects of a deleted dag run: the rows go by cascade, the objects stay behind.
    gone_objects = [p for p in all_refs(home) if f"/{GONE_DAG}/" in str(p)]
    assert len(gone_objects) == 1
    delete_dag_run(home, GONE_DAG)
    assert home.query("SELECT COUNT(*) FROM task_state_store WHERE dag_id = :d", d=GONE_DAG) == [(0,)]
    for path in gone_objects:
        age(path, timedelta(hours=2))
    # Live rows' objects, however old, are no orphans.
    for path in all_refs(home):
        age(path, timedelta(days=5))

    report = prune(env, "--yes")
    assert report["deleted"]["orphans"]["objects"] == 3, report
    assert not old.exists() and not old_asset.exists() and not any(p.exists() for p in gone_objects)
    assert fresh.exists()
    assert report["plan"]["categories"]["fresh_orphans"]["first"] == [fresh.as_uri()]
    assert_live_intact(home)
    assert home.query('SELECT "key" FROM asset_state_store') == [("watermark",)]


def test_no_orphans_option_and_grace(home: AirflowEnv) -> None:
    env = env_of(home)
    orphan = write_gz(home.bucket_dir / "d" / "r" / "t" / "-1" / "k.gz", {"o": 1})
    age(orphan, timedelta(minutes=30))
    report = prune(env, "--yes", "--no-orphans")
    assert report["deleted"]["orphans"]["objects"] == 0 and orphan.exists()
    report = prune(env, "--yes")  # 30 minutes old: within the default grace of 1 hour
    assert orphan.exists() and report["plan"]["categories"]["fresh_orphans"]["objects"] == 1
    report = prune(env, "--yes", "--grace", "20m")
    assert not orphan.exists() and report["deleted"]["orphans"]["objects"] == 1


def test_ref_outside_the_base_path_is_reported_and_survives(home: AirflowEnv, tmp_path: Path) -> None:
    env = env_of(home)
    outside = write_gz(tmp_path / "elsewhere" / "expired_obj.gz", {"v": "mine"})
    age(outside, timedelta(days=3))
    content = outside.read_bytes()
    value = json.dumps({"__airflow_state_ref__": outside.as_uri()})
    home.query("UPDATE task_state_store SET value = :v WHERE \"key\" = 'expired_obj'", v=value)
    report = prune(env, "--yes", "--older-than", "1d")
    assert outside.exists() and outside.read_bytes() == content
    assert ("writer", -1, "expired_obj") not in task_rows(home)  # the expired row itself goes
    outside_cat = report["plan"]["categories"]["outside_base"]
    assert outside_cat["rows"] == 1 and outside.as_uri() in outside_cat["first"][0]
    assert "outside the base path" in report["_stderr"]
    assert report["exit_code"] == 0


def test_incomplete_scan_refuses_orphans_and_says_why(home: AirflowEnv) -> None:
    env = env_of(home)
    orphan = write_gz(home.bucket_dir / "d" / "r" / "t" / "-1" / "k.gz", {"o": 1})
    age(orphan, timedelta(hours=5))
    # A ref to the base path through another scheme that the scan cannot place in path order (a trailing
    # slash): the provider would read it, so the scan cannot tell what is referenced.
    odd_ref = home.bucket_url.replace("file://", "local://") + "/d/r/t/-1/other/"
    odd = json.dumps({"__airflow_state_ref__": odd_ref})
    home.query("UPDATE task_state_store SET value = :v WHERE \"key\" = 'default'", v=odd)
    report = prune(env, "--yes", code=ExitCode.PARTIAL)
    assert orphan.exists()
    assert "not every row could be read" in report["orphans_refused"]
    assert "orphans not deleted" in report["_stderr"]
    assert report["deleted"]["expired"]["rows"] == 4  # the expired rows still go


# --------------------------------------------------------------------------- --older-than, filters


def test_older_than_removes_old_objects_and_their_rows(home: AirflowEnv) -> None:
    env = env_of(home)
    rows = task_rows(home)
    forever = ref_path(rows[("writer", -1, "forever")])
    (asset_value,) = home.query("SELECT value FROM asset_state_store")[0]
    asset_object = ref_path(asset_value)
    assert forever is not None and asset_object is not None
    age(forever, timedelta(days=10))
    age(asset_object, timedelta(days=10))
    report = prune(env, "--yes", "--older-than", "7d")
    assert report["deleted"]["older_than"]["rows"] == 2 and report["deleted"]["older_than"]["objects"] == 2
    assert not forever.exists() and not asset_object.exists()
    assert home.query("SELECT COUNT(*) FROM asset_state_store") == [(0,)]
    assert set(task_rows(home)) == LIVE - {("writer", -1, "forever")}
    assert_live_intact(home, LIVE - {("writer", -1, "forever")})


def test_filters_limit_what_goes(home: AirflowEnv) -> None:
    env = env_of(home)
    (run_id,) = home.query("SELECT run_id FROM dag_run WHERE dag_id = :d", d=DAG)[0]
    elsewhere = write_gz(home.bucket_dir / "other_dag" / "r" / "t" / "-1" / "k.gz", {"o": 1})
    age(elsewhere, timedelta(hours=2))
    report = prune(env, "--yes", "--dag", DAG, "--run", run_id, "--task", "mapped", "--map-index", "1")
    assert report["deleted"]["expired"]["rows"] == 1 and report["deleted"]["orphans"]["objects"] == 0
    assert set(task_rows(home)) == (EXPIRED | LIVE) - {("mapped", 1, "m")}
    assert elsewhere.exists()
    report = prune(env, "--yes", "--asset", ASSET_NAME)  # asset rows have no expiry: nothing
    assert report["deletions"] == 0 and elsewhere.exists()
    assert len(task_rows(home)) == 6


def test_max_delete_stops_before_exceeding(home: AirflowEnv) -> None:
    env = env_of(home)
    report = prune(env, "--yes", "--max-delete", "3", code=ExitCode.MAX_DELETE)
    assert report["deletions"] <= 3 and "max-delete" in report["stopped"]
    assert len(EXPIRED & set(task_rows(home))) >= 2
    assert_live_intact(home)
    report = prune(env, "--yes")
    assert set(task_rows(home)) == LIVE
    assert_live_intact(home)


# --------------------------------------------------------------------------- the lock


def test_lock_held_by_another_run_refuses(home: AirflowEnv) -> None:
    env = env_of(home)
    lock = home.bucket_dir / LOCK
    lock.write_text(lock_text("other-host", 4242, datetime.now(tz=UTC)))
    db_before = db_snapshot(home)
    r = statectl(env, "prune", "--yes")
    assert r.code == ExitCode.LOCKED, str(r)
    assert r.stderr.count("\n") == 1 and "other-host/4242" in r.stderr, str(r)
    assert db_snapshot(home) == db_before and lock.exists()
    assert json.loads(lock.read_text())["token"] == "their-token"


def test_stale_lock_is_taken_over_and_released(home: AirflowEnv) -> None:
    env = env_of(home)
    lock = home.bucket_dir / LOCK
    lock.write_text(lock_text("other-host", 4242, datetime.now(tz=UTC) - timedelta(minutes=11)))
    report = prune(env, "--yes")
    assert any("took over a stale lock held by other-host/4242" in note for note in report["lock"]), report
    assert set(task_rows(home)) == LIVE
    assert not lock.exists()
    assert not [p for p in home.bucket_dir.iterdir() if p.name.startswith(".statectl~")]
    # A dead process on this host: taken over at once, heartbeat fresh or not.
    lock.write_text(lock_text(socket.gethostname(), 2**22 + 7, datetime.now(tz=UTC)))
    report = prune(env, "--yes", "--lock-timeout", "1h")
    assert any("its process is gone" in note for note in report["lock"]), report
    assert not lock.exists()


def test_lock_released_after_a_failure(home: AirflowEnv) -> None:
    from statectl.core.layout import parse_base_path
    from statectl.stores.bucket import Buckets
    from statectl.stores.lock import BucketLock, LockHeld

    base = parse_base_path(home.bucket_url)
    with pytest.raises(RuntimeError), BucketLock(Buckets(), base) as held:
        assert (home.bucket_dir / LOCK).exists()
        assert json.loads((home.bucket_dir / LOCK).read_text())["token"] == held.token
        with pytest.raises(LockHeld), BucketLock(Buckets(), base):
            pass
        raise RuntimeError("boom")
    assert not (home.bucket_dir / LOCK).exists()


def test_heartbeat_refreshes_and_a_lost_lock_stops_the_holder(home: AirflowEnv) -> None:
    from statectl.core.layout import parse_base_path
    from statectl.stores.bucket import Buckets
    from statectl.stores.lock import BucketLock, LockLost

    base = parse_base_path(home.bucket_url)
    lock_file = home.bucket_dir / LOCK
    with BucketLock(Buckets(), base, heartbeat_every=0.2) as held:
        first = json.loads(lock_file.read_text())["heartbeat"]
        time.sleep(0.7)
        assert json.loads(lock_file.read_text())["heartbeat"] > first
        held.check()
        lock_file.write_text(lock_text("thief", 1, datetime.now(tz=UTC)))  # taken over meanwhile
        time.sleep(0.7)
        with pytest.raises(LockLost):
            held.check()
    assert json.loads(lock_file.read_text())["host"] == "thief"  # release never deletes another's lock


# --------------------------------------------------------------------------- no bucket, bad input


def test_without_a_base_path_prunes_rows_only(home: AirflowEnv) -> None:
    env = dict(home.env)  # no worker backend, no base path
    before_files = files(home.bucket_dir)
    report = prune(env, "--yes")
    assert set(task_rows(home)) == LIVE
    assert files(home.bucket_dir) == before_files  # objects are never touched without a base path
    assert report["plan"]["categories"]["outside_base"]["rows"] == 3
    assert any("rows only" in n for n in report["plan"]["notes"])
    assert report["exit_code"] == 0


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--grace", "10x"], "--grace"),
        (["--grace", "30s"], "at least 1m"),
        (["--older-than", "soon"], "--older-than"),
        (["--max-delete", "-1"], "--max-delete"),
        (["--batch-size", "5000"], "--batch-size"),
        (["--lock-timeout", "0s"], "--lock-timeout"),
        (["--dag", "d", "--asset", "a"], "exclude each other"),
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(home: AirflowEnv, args: list[str], needle: str) -> None:
    env = env_of(home)
    db_before, files_before = db_snapshot(home), files_snapshot(home.bucket_dir)
    r = statectl(env, "prune", "--yes", *args)
    assert r.code == ExitCode.USAGE, str(r)
    assert r.stderr.count("\n") == 1 and needle in r.stderr and "Traceback" not in r.stderr, str(r)
    assert db_snapshot(home) == db_before and files_snapshot(home.bucket_dir) == files_before


def test_refuses_without_yes_off_a_terminal(home: AirflowEnv) -> None:
    env = env_of(home)
    db_before = db_snapshot(home)
    r = statectl(env, "prune")
    assert r.code == ExitCode.USAGE and "--yes" in r.stderr, str(r)
    assert db_snapshot(home) == db_before


def test_quiet_prints_nothing_on_success(home: AirflowEnv) -> None:
    r = statectl(env_of(home), "prune", "--yes", "--quiet")
    assert r.code == 0 and r.stdout == "" and r.stderr == "", str(r)
    assert set(task_rows(home)) == LIVE


# --------------------------------------------------------------------------- kill -9


def seed_expired_bulk(home: AirflowEnv, count: int) -> list[Path]:
    """`count` expired rows with objects at the provider's paths, and as many live ones."""
    from statectl.core.layout import parse_base_path

    assert home.db_path is not None
    base = parse_base_path(home.bucket_url)
    with sqlite3.connect(home.db_path) as conn:
        dag_run_id, run_id = conn.execute("SELECT id, run_id FROM dag_run WHERE dag_id = ?", (DAG,)).fetchone()
        scope = TaskScope(DAG, run_id, "writer", -1)
        rows, live = [], []
        for i in range(2 * count):
            key = f"bulk_{i:05d}"
            url = object_url(base, scope, key, "gzip")
            write_gz(Path(url.path), {"i": i})
            expired = i % 2 == 0
            value = json.dumps({"__airflow_state_ref__": str(url)})
            expires = "2020-01-01 00:00:00.000000" if expired else "2999-01-01 00:00:00.000000"
            rows.append((dag_run_id, "writer", -1, key, DAG, run_id, value, "2020-01-01 00:00:00.000000", expires))
            if not expired:
                live.append(Path(url.path))
        conn.executemany(
            'INSERT INTO task_state_store (dag_run_id, task_id, map_index, "key", dag_id, run_id, value, '
            "updated_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
    return live


def test_kill_9_mid_prune_then_rerun_finishes(home: AirflowEnv) -> None:
    env = env_of(home)
    live = seed_expired_bulk(home, 2000)
    assert home.db_path is not None

    def expired_left() -> int:
        with sqlite3.connect(f"file:{home.db_path}?mode=ro", uri=True, timeout=30) as conn:
            return conn.execute(
                # A full timestamp: SQLite would compare a bare '2021' as a number (NUMERIC affinity).
                "SELECT COUNT(*) FROM task_state_store WHERE \"key\" LIKE 'bulk_%' "
                "AND expires_at < '2021-01-01 00:00:00'"
            ).fetchone()[0]

    objects_dir = live[0].parent
    total = len(os.listdir(objects_dir))
    proc = subprocess.Popen(
        [STATECTL, "prune", "--yes", "--batch-size", "10"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 60
    # Watch the files, not the DB: a polling SQLite reader would be starved by the writer's locks.
    while total - len(os.listdir(objects_dir)) < 500:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 0 < expired_left() <= 1500
    assert (home.bucket_dir / LOCK).exists()  # the killed run's lock stays behind
    assert_live_intact(home)  # every row still has its object

    report = prune(env, "--yes")
    assert any("its process is gone" in n for n in report["lock"])
    assert expired_left() == 0
    assert all(p.exists() for p in live)
    assert_live_intact(home)
    # Objects the kill left behind (rows deleted, objects not yet) are fresh orphans now, taken after the grace.
    leftovers = report["plan"]["categories"]["fresh_orphans"]["objects"]
    assert leftovers <= (DELETES_IN_FLIGHT + 1) * 10  # the batches whose deletes were in flight
    for p in files(home.bucket_dir):
        age(p, timedelta(hours=2))
    prune(env, "--yes")
    kept = {p for p in files(home.bucket_dir)}
    assert kept == set(all_refs(home)), kept ^ set(all_refs(home))


# --------------------------------------------------------------------------- PostgreSQL + S3


@pytest.mark.slow
def test_postgres_and_s3_with_conn_id(pg_airflow_home: AirflowEnv, s3_bucket: S3Bucket, tmp_path: Path) -> None:
    home = pg_airflow_home
    base = s3_bucket.url("state")
    env = home.with_backend(base, THRESHOLD, "gzip")
    env.update(s3_bucket.conn_env)
    run_dag(env, WRITER_SOURCE, tmp_path)
    keys_before = set(s3_bucket.keys())
    rows = task_rows(home)
    assert set(rows) == EXPIRED | LIVE
    expired_keys = {
        json.loads(rows[k])["__airflow_state_ref__"].split(f"{s3_bucket.bucket}/", 1)[1]
        for k in EXPIRED
        if k != ("writer", -1, "expired_inline")
    }
    assert expired_keys <= keys_before
    client = s3_bucket.client()
    client.put_object(Bucket=s3_bucket.bucket, Key="state/nodag/r/t/-1/k.gz", Body=gzip.compress(b"1"))
    # Someone else's lock, fresh: refused, nothing changed.
    client.put_object(
        Bucket=s3_bucket.bucket, Key=f"state/{LOCK}", Body=lock_text("other-host", 99, datetime.now(tz=UTC)).encode()
    )
    r = statectl(env, "prune", "--yes")
    assert r.code == ExitCode.LOCKED and "other-host/99" in r.stderr, str(r)
    assert task_rows(home) == rows
    client.delete_object(Bucket=s3_bucket.bucket, Key=f"state/{LOCK}")

    report = prune(env, "--yes")
    assert report["deleted"]["expired"] == {**report["deleted"]["expired"], "rows": 4, "objects": 3}
    assert set(task_rows(home)) == LIVE
    keys_after = set(s3_bucket.keys())
    assert keys_after == (keys_before - expired_keys) | {"state/nodag/r/t/-1/k.gz"}  # fresh orphan kept, lock gone
    assert report["plan"]["categories"]["fresh_orphans"]["objects"] == 1
    assert "testing" not in r.stderr + json.dumps(report)  # the connection's secret never shows


# --------------------------------------------------------------------------- the documented schedules


def test_documented_crontab_line_runs_quietly(home: AirflowEnv) -> None:
    crontab = (Path(__file__).parent.parent / "examples" / "maintenance" / "crontab").read_text()
    (line,) = [ln for ln in crontab.splitlines() if ln.strip() and not ln.startswith("#")]
    args = line.split("statectl ", 1)[1].split()
    r = statectl(env_of(home), *args)
    assert r.code == 0 and r.stdout == "" and r.stderr == "", str(r)
    assert set(task_rows(home)) == LIVE


def test_example_maintenance_dag_skips_when_the_lock_is_held(home: AirflowEnv) -> None:
    from tests.infra import run_python

    dag_file = Path(__file__).parent.parent / "examples" / "maintenance" / "statectl_prune_dag.py"
    code = (
        "import runpy, json; ns = runpy.run_path(__import__('sys').argv[1]); "
        "from airflow.sdk import DAG; (d,) = [v for v in ns.values() if isinstance(v, DAG)] or "
        "[ns['statectl_prune']()]; t = d.get_task('prune'); "
        "print(json.dumps([d.dag_id, t.bash_command, sorted(t.skip_on_exit_code)]))"
    )
    proc = run_python(home.env, code, args=[str(dag_file)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    dag_id, command, skip = json.loads(proc.stdout.strip().splitlines()[-1])
    assert dag_id == "statectl_prune" and command.startswith("statectl prune --yes")
    assert skip == [ExitCode.LOCKED]


# --------------------------------------------------------------------------- exactly what was planned


def test_a_confirmed_plan_is_run_at_its_moment_and_never_exceeded(home: AirflowEnv) -> None:
    """Between the plan and its confirmation a row's expiry passes, another row is made expired
    and an old orphan appears: execution judges at the plan's moment and deletes no more than the
    plan counted; the new orphan and the newly expired row are left for the next run and counted."""
    from statectl.ops.prune import PruneOptions, PrunePlan, run_prune
    from tests.cli_support import core_store

    env = env_of(home)
    before = task_rows(home)
    hour_object = ref_path(before[("writer", -1, "hour")])
    forever_object = ref_path(before[("writer", -1, "forever")])
    assert hour_object is not None and forever_object is not None
    late_orphan = home.bucket_dir / "late_dag" / "r" / "t" / "-1" / "k.gz"
    shown: list[int] = []

    def confirm(plan: PrunePlan) -> bool:
        shown.append(plan.deletions)
        assert home.db_path is not None
        with sqlite3.connect(home.db_path) as conn:
            soon = (plan.at + timedelta(milliseconds=300)).strftime("%Y-%m-%d %H:%M:%S.%f")
            past = (plan.at - timedelta(minutes=1)).strftime("%Y-%m-%d %H:%M:%S.%f")
            conn.execute("UPDATE task_state_store SET expires_at = ? WHERE \"key\" = 'hour'", (soon,))
            # Re-set with a retention that has passed already (a writer stamps updated_at).
            conn.execute(
                "UPDATE task_state_store SET expires_at = ?, updated_at = ? WHERE \"key\" = 'forever'",
                (past, (plan.at + timedelta(milliseconds=100)).strftime("%Y-%m-%d %H:%M:%S.%f")),
            )
        age(write_gz(late_orphan, {"late": 1}), timedelta(hours=3))
        time.sleep(0.5)  # 'hour' has expired by the wall clock now, not at the plan's moment
        return True

    store = core_store(env)
    try:
        report = run_prune(store, PruneOptions(), confirm=confirm)
    finally:
        store.close()
    document = report.as_dict()
    assert shown == [report.plan.deletions] and report.plan.deletions == 7  # 4 expired rows, 3 objects
    assert report.deletions == 7 and report.deletions <= shown[0], document
    assert document["beyond_plan"] == {"expired": 2, "orphans": 1}, document
    assert report.exit_code == ExitCode.OK
    after = task_rows(home)
    assert ("writer", -1, "hour") in after and hour_object.exists(), "expired after the plan's moment: kept"
    assert ("writer", -1, "forever") in after and forever_object.exists(), "not in the confirmed plan: kept"
    assert late_orphan.exists(), "not in the confirmed plan: kept"
    # The next run takes what was left, by its own plan.
    again = prune(env, "--yes")
    assert again["deleted"]["orphans"]["objects"] == 1 and not late_orphan.exists()
    assert ("writer", -1, "hour") not in task_rows(home) and ("writer", -1, "forever") not in task_rows(home)


def test_unconfirmed_runs_take_what_is_eligible_at_the_plans_moment(home: AirflowEnv) -> None:
    """--yes (no question): nothing is capped, but the moment is still the plan's."""
    from statectl.ops.prune import PruneOptions, execute_prune, plan_prune
    from tests.cli_support import core_store

    store = core_store(env_of(home))
    try:
        plan = plan_prune(store, PruneOptions())
        assert home.db_path is not None
        with sqlite3.connect(home.db_path) as conn:
            soon = (plan.at + timedelta(milliseconds=200)).strftime("%Y-%m-%d %H:%M:%S.%f")
            conn.execute("UPDATE task_state_store SET expires_at = ? WHERE \"key\" = 'hour'", (soon,))
        time.sleep(0.4)
        report = execute_prune(store, plan)
    finally:
        store.close()
    assert report.deletions == plan.deletions and report.beyond_plan == {}
    assert ("writer", -1, "hour") in task_rows(home)


def test_declined_confirmation_exits_0_and_changes_nothing(home: AirflowEnv) -> None:
    from tests.cli_support import statectl_on_terminal

    env = env_of(home)
    db_before, files_before = db_snapshot(home), files_snapshot(home.bucket_dir)
    r = statectl_on_terminal(env, "prune", answer="n")
    assert r.code == 0, str(r)
    assert "Delete 7 row(s) and object(s)?" in r.stderr and "nothing changed" in r.stderr, str(r)
    assert "Traceback" not in r.stderr
    assert db_snapshot(home) == db_before and files_snapshot(home.bucket_dir) == files_before
    # Confirmed, it deletes what it showed.
    r = statectl_on_terminal(env, "prune", "-o", "json", answer="y")
    assert r.code == 0 and json.loads(r.stdout)["deletions"] == 7, str(r)


def test_plain_output_names_its_columns(home: AirflowEnv) -> None:
    env = env_of(home)
    r = statectl(env, "prune", "--dry-run", "-o", "plain")
    assert r.code == 0, str(r)
    lines = r.stdout.splitlines()
    assert lines[0] == "category\trows\tobjects\tbytes"
    assert lines[1].split("\t")[:3] == ["expired", "4", "3"]
