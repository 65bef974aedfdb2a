"""Every command on ``gs://<conn_id>@<bucket>/state``, reached through a REAL Airflow connection.

The connection is ``AIRFLOW_CONN_STATECTL_GCS`` (google_cloud_platform: anonymous credentials, the GCS
emulator's URL in the ``gcs.endpoint`` extra, project "test"). Workers and statectl both resolve it with
Airflow's object storage (``attach("gs", conn_id)`` -> apache-airflow-providers-google's ``get_fs``
-> gcsfs). ``STORAGE_EMULATOR_HOST`` is never set (and removed from every environment here), so the
emulator can only be found through the connection.

ONE real DAG run per module (SQLite metastore; the provider backend with threshold 64 and gzip) writes
task state (a mapped task, values that expire, a key with characters the layout quotes) and asset state
(name != uri) to the emulator. Every test gets a fresh copy of that DB, and the bucket restored to the
exact objects the worker wrote (the refs name the bucket, so it is restored in place: tests run serially).
The emulator runs in this process, started by this module, so a test can backdate an object's
last-modified time (GCS has no API for it) and record the uploads and deletes it serves.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from statectl.errors import ExitCode
from tests.cli_support import Result, db_snapshot, statectl
from tests.infra import (
    GCS_CONN_ID,
    AirflowEnv,
    GcsBucket,
    asset_reader_dag,
    create_gcs_bucket,
    gcs_backdate,
    gcs_conn_env,
    gcs_conn_url,
    gcs_objects,
    gcs_replace_objects,
    gcs_wait_for_object,
    json_literal,
    run_dag,
    s3_conn_env,
    sqlite_env,
    start_gcs_emulator,
    widen_gcs_emulator_backlog,
)
from tests.migrate_support import REF_KEY, RowKey, core_values, location, provider, ref_url, same, state_rows
from tests.parity_support import COMPRESSION_ENV, decompress, normalized, provider_configured, provider_module

DAG_ID = "statectl_gcs_writer"
READER_DAG = "statectl_gcs_reader"
ASSET_NAME = "statectl_gcs_asset"
ASSET_URI = "file:///tmp/statectl-gcs/asset%20one"  # name != uri: the provider names the folder by name
THRESHOLD = 64
COMPRESSION = "gzip"
PREFIX = "state"
LOCK = ".statectl~prune.lock"
CONN_VAR = f"AIRFLOW_CONN_{GCS_CONN_ID.upper()}"

TASK_VALUES: dict[str, Any] = {
    "tiny": 1,
    "note": "s" * 10,
    "big": {"rows": list(range(300))},
    "medium/obj:1 x%": {"payload": "m" * 200, "n": [1, 2.5, True, None]},  # quoted in the object name
    "unicode": {"text": "h\u00e9llo \u4e2d", "pad": "u" * 80},
    "forever": {"v": "f" * 100},  # NEVER_EXPIRE
}
EXPIRING: dict[str, Any] = {"expired_obj": {"v": "x" * 100}, "expired_inline": 1}  # retention 1 s
MAPPED_VALUES: dict[int, Any] = {0: {"i": 0}, 1: {"i": 1, "pad": "p" * 100}, 2: {"i": 2, "pad": "p" * 300}}
ASSET_VALUES: dict[str, Any] = {
    "watermark": {"w": "z" * 150},
    "tiny": 7,
    "cursor/at:1": "2024-01-01T00:00:00+00:00",
    "blob": list(range(100)),
}
EXPIRED_ROWS = {("writer", -1, "expired_obj"), ("writer", -1, "expired_inline")}

WRITER_SOURCE = f"""
import json
from datetime import datetime, timedelta

from airflow.sdk import Asset, dag, task
from airflow.sdk.execution_time.context import NEVER_EXPIRE

ASSET = Asset(name={ASSET_NAME!r}, uri={ASSET_URI!r})
TASK_VALUES = {json_literal(TASK_VALUES)}
EXPIRING = {json_literal(EXPIRING)}
MAPPED_VALUES = {json_literal(MAPPED_VALUES)}
ASSET_VALUES = {json_literal(ASSET_VALUES)}


@dag(dag_id={DAG_ID!r}, schedule=None, start_date=datetime(2024, 1, 1), catchup=False)
def writer_dag():
    @task(outlets=[ASSET])
    def writer(**context):
        store = context["task_state_store"]
        for key, value in TASK_VALUES.items():
            if key == "forever":
                store.set(key, value, retention=NEVER_EXPIRE)
            else:
                store.set(key, value)
        for key, value in EXPIRING.items():
            store.set(key, value, retention=timedelta(seconds=1))
        for key, value in ASSET_VALUES.items():
            context["asset_state_store"][ASSET].set(key, value)

    @task
    def mapped(i, **context):
        context["task_state_store"].set("m", MAPPED_VALUES[str(i)])

    writer() >> mapped.expand(i={sorted(MAPPED_VALUES)!r})


d = writer_dag()

if __name__ == "__main__":
    d.test()
"""


def reader_source(expected: dict[str, Any]) -> str:
    """A DAG whose task reads these asset values through the provider, as any worker does, and asserts them."""
    return asset_reader_dag(READER_DAG, ASSET_NAME, ASSET_URI, expected, "GCS_READER_OK")


def expected_values() -> dict[RowKey, Any]:
    values: dict[RowKey, Any] = {("writer", -1, k): v for k, v in {**TASK_VALUES, **EXPIRING}.items()}
    values.update({("mapped", i, "m"): v for i, v in MAPPED_VALUES.items()})
    values.update({(None, -1, k): v for k, v in ASSET_VALUES.items()})
    return values


def offloaded(value: Any) -> bool:
    return len(json.dumps(value).encode()) >= THRESHOLD


OBJECT_ROWS = {where for where, value in expected_values().items() if offloaded(value)}


def worker_env(home: AirflowEnv, bucket: GcsBucket, path: str = PREFIX) -> dict[str, str]:
    """A worker's (and statectl's) environment: the provider backend on gs://<conn_id>@<bucket>/<path>, the
    connection, and no STORAGE_EMULATOR_HOST."""
    env = {**home.with_backend(gcs_conn_url(bucket, path), THRESHOLD, COMPRESSION), **gcs_conn_env(bucket.endpoint_url)}
    env.pop("STORAGE_EMULATOR_HOST", None)
    return env


# --------------------------------------------------------------------------- fixtures


@dataclass(frozen=True)
class Seed:
    db: Path
    objects: dict[str, bytes]  # what the worker wrote: object name -> bytes
    run_id: str


@dataclass
class World:
    home: AirflowEnv
    env: dict[str, str]
    bucket: GcsBucket
    server: Any
    seed: Seed
    tmp_path: Path

    @property
    def base(self) -> str:
        return gcs_conn_url(self.bucket, PREFIX)

    @property
    def run_id(self) -> str:
        return self.seed.run_id

    def objects(self, prefix: str = "") -> dict[str, bytes]:
        return gcs_objects(self.bucket, prefix)

    def name_of(self, ref: str | None) -> str:
        """The object name (key in the bucket) of a gs://<conn_id>@<bucket>/... ref."""
        head = f"gs://{GCS_CONN_ID}@{self.bucket.bucket}/"
        assert ref is not None and ref.startswith(head), ref
        return ref.removeprefix(head)

    def snapshot(self) -> tuple[Any, dict[str, bytes]]:
        return db_snapshot(self.home), self.objects()

    def task_flags(self, task: str = "writer", map_index: int | None = None) -> list[str]:
        flags = ["--dag", DAG_ID, "--run", self.run_id, "--task", task]
        return flags + (["--map-index", str(map_index)] if map_index is not None else [])


@pytest.fixture(scope="module")
def gcs_emulator() -> Iterator[tuple[Any, str]]:
    """This module's own in-memory emulator: (server, endpoint URL)."""
    server, endpoint = start_gcs_emulator()
    widen_gcs_emulator_backlog(server)
    try:
        yield server, endpoint
    finally:
        server.stop()


@pytest.fixture(scope="module")
def bucket(gcs_emulator: tuple[Any, str]) -> GcsBucket:
    return create_gcs_bucket(gcs_emulator[1])


@pytest.fixture(scope="module")
def seed(airflow_template: Path, bucket: GcsBucket, tmp_path_factory: pytest.TempPathFactory) -> Seed:
    """The one DAG run of this module: a worker writes through the connection to the emulator."""
    root = tmp_path_factory.mktemp("gcs_conn_seed")
    home = sqlite_env(airflow_template / "airflow.db", root)
    run_dag(worker_env(home, bucket), WRITER_SOURCE, root)
    (run_id,) = home.query("SELECT run_id FROM dag_run WHERE dag_id = :d", d=DAG_ID)[0]
    assert home.db_path is not None
    # With gzip the provider's uploads finish on gcsfs's deferred-close thread (see gcs_wait_for_object): the
    # DAG process outlives them here; test_worker_wrote_gzip_objects_through_the_connection checks every one.
    return Seed(home.db_path, gcs_objects(bucket), run_id)


@pytest.fixture
def world(seed: Seed, bucket: GcsBucket, gcs_emulator: tuple[Any, str], tmp_path: Path) -> World:
    """A copy of the worker-written DB, and the bucket holding exactly what the worker wrote."""
    home = sqlite_env(seed.db, tmp_path)
    gcs_replace_objects(bucket, seed.objects)
    return World(home, worker_env(home, bucket), bucket, gcs_emulator[0], seed, tmp_path)


@pytest.fixture
def in_process(world: World, monkeypatch: pytest.MonkeyPatch) -> World:
    """For statectl's core and the provider in this process: Airflow resolves connections from os.environ,
    so the connection goes there (and no STORAGE_EMULATOR_HOST), with no filesystem cached by Airflow."""
    import airflow.sdk.io.store as airflow_store

    monkeypatch.setattr(airflow_store, "_STORE_CACHE", {})
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    for name, value in gcs_conn_env(world.bucket.endpoint_url).items():
        monkeypatch.setenv(name, value)
    return world


# --------------------------------------------------------------------------- helpers


def run(env: dict[str, str], *args: str, code: int = 0) -> Result:
    r = statectl(env, *args)
    assert r.code == code, str(r)
    assert "Traceback" not in r.stderr, str(r)
    return r


def run_json(env: dict[str, str], *args: str, code: int = 0) -> Any:
    return run(env, *args, "-o", "json", code=code).json()


def in_parallel(calls: list[Callable[[], Any]]) -> list[Any]:
    """statectl processes spend seconds importing Airflow: start a few at once (only commands that must not
    change anything, so their order cannot matter)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda call: call(), calls))


def get_args(world: World, where: RowKey) -> list[str]:
    task_id, map_index, key = where
    if task_id is None:
        return ["get", key, "--asset", ASSET_NAME]
    return ["get", key, *world.task_flags(task_id, map_index)]


def assert_one_error_line(r: Result, code: ExitCode) -> str:
    assert r.code == int(code), str(r)
    assert "Traceback" not in r.stderr + r.stdout, str(r)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("statectl: error: "), str(r)
    return lines[0]


def object_values(world: World, rows: dict[RowKey, str]) -> dict[str, Any]:
    """Object name -> value, for every row whose value is in an object."""
    expected = expected_values()
    return {world.name_of(ref_url(text)): expected[where] for where, text in rows.items() if ref_url(text)}


def gz_value(data: bytes) -> Any:
    assert data[:2] == b"\x1f\x8b", data[:16]
    return json.loads(gzip.decompress(data))


# --------------------------------------------------------------------------- what the worker wrote


def test_worker_wrote_gzip_objects_through_the_connection(world: World) -> None:
    # The emulator's URL is nowhere in the environment but in the connection: the endpoint came from it.
    assert [name for name, value in world.env.items() if world.bucket.endpoint_url in value] == [CONN_VAR]
    rows = state_rows(world.home)
    assert set(rows) == set(expected_values())
    assert 0 < len(OBJECT_ROWS) < len(rows)
    for where, value in expected_values().items():
        if where in OBJECT_ROWS:
            url = ref_url(rows[where])
            assert url is not None and url.startswith(world.base + "/") and url.endswith(".gz"), rows[where]
        else:
            assert location(rows[where]) == "inline" and json.loads(json.loads(rows[where])[REF_KEY]) == value
    objects = world.objects()
    wanted = object_values(world, rows)
    assert set(objects) == set(wanted) and len(objects) == len(OBJECT_ROWS)
    for name, value in wanted.items():
        assert same(gz_value(objects[name]), value), name
    # The provider's layout, segments quoted, the asset by name.
    run_segment = quote(world.run_id, safe="")
    assert f"{PREFIX}/{DAG_ID}/{run_segment}/writer/-1/{quote('medium/obj:1 x%', safe='')}.gz" in objects
    assert f"{PREFIX}/{DAG_ID}/{run_segment}/mapped/2/m.gz" in objects
    assert f"{PREFIX}/assets/{ASSET_NAME}/watermark.gz" in objects


# --------------------------------------------------------------------------- reading: ls, get, where


def test_ls_get_and_where(in_process: World) -> None:
    world = in_process
    env = world.env
    rows = state_rows(world.home)
    # Through the CLI: a quoted key's object, a mapped task's object, an inline asset value (the core reads all).
    sample: list[RowKey] = [("writer", -1, "medium/obj:1 x%"), ("mapped", 2, "m"), (None, -1, "tiny")]
    medium = ["where", "medium/obj:1 x%", *world.task_flags()]
    calls: list[Callable[[], Any]] = [
        lambda: run_json(env, "ls"),
        lambda: run_json(env, "ls", "--expired"),
        lambda: run_json(env, *medium),
        lambda: run_json(env, "where", "watermark", "--asset", ASSET_NAME),
        lambda: run_json(env, "get", "watermark", "--from-bucket", "--asset", ASSET_NAME),
        *[lambda where=where: run_json(env, *get_args(world, where)) for where in sample],
    ]
    listing, expired, where_task, where_asset, from_bucket, *got = in_parallel(calls)

    by_key = {(r["task_id"], -1 if r["map_index"] is None else r["map_index"], r["key"]): r for r in listing}
    assert set(by_key) == set(rows) and len(listing) == len(rows)
    for where, r in by_key.items():
        assert r["location"] == location(rows[where]), where
        assert r["object"] == ref_url(rows[where]), where
        assert r["compression"] == (COMPRESSION if where in OBJECT_ROWS else None), where
    assert {(r["task_id"], r["map_index"], r["key"]) for r in expired} == EXPIRED_ROWS

    expected = expected_values()
    for where, value in zip(sample, got, strict=True):
        assert same(value, expected[where]), where
    assert same(from_bucket, ASSET_VALUES["watermark"])
    # Every value, decoded by statectl's core through the same connection.
    values = core_values(env)
    assert set(values) == set(expected)
    for where, value in expected.items():
        assert same(values[where], value), where

    objects = world.objects()
    for report, where in ((where_task, ("writer", -1, "medium/obj:1 x%")), (where_asset, (None, -1, "watermark"))):
        ref = ref_url(rows[where])
        assert report["object"]["url"] == ref and report["row"]["ref"] == ref, report
        assert report["object"]["exists"] is True and report["object"]["compression"] == COMPRESSION, report
        assert report["object"]["size"] == len(objects[world.name_of(ref)]), report
        assert "the row points at the object the provider computes for this key" in report["notes"], report


# --------------------------------------------------------------------------- check and doctor


def test_check_is_clean_and_doctor_is_healthy(world: World) -> None:
    env = world.env
    before = world.snapshot()
    report = run_json(env, "check", "--deep")
    assert report["ok"] is True and report["problems"] == 0 and report["scan_complete"] is True, report
    assert {name: f["count"] for name, f in report["findings"].items() if f["count"]} == {}, report["findings"]
    n_objects = len(OBJECT_ROWS)
    assert report["base"] == world.base
    assert report["locations"] == {"plain": 0, "inline": len(expected_values()) - n_objects, "object": n_objects}
    assert report["objects_read"] == n_objects == report["totals"]["objects"]
    assert report["totals"]["object_bytes"] == sum(len(b) for b in world.seed.objects.values())

    r = run(env, "doctor", "-o", "json")
    doctor = r.json()
    findings = {f["check"]: f for f in doctor["findings"]}
    assert doctor["status"] in ("ok", "warn") and not [f for f in findings.values() if f["status"] == "fail"], doctor
    assert (
        findings["provider"]["status"] == "ok" and "apache-airflow-providers-google" in findings["provider"]["detail"]
    )
    assert findings["connection"] == {
        "check": "connection",
        "status": "ok",
        "detail": f"connection {GCS_CONN_ID!r} found (type google_cloud_platform)",
        "fix": "",
    }
    bucket = findings["bucket"]
    assert bucket["status"] == "ok" and bucket["detail"].startswith("wrote, read back (gzip) and deleted a probe"), (
        bucket
    )
    assert world.base in bucket["detail"]
    # gcp-storage-emulator accepts ifGenerationMatch=0 and overwrites anyway (see test_parity_remote's
    # test_if_absent_on_gcs): doctor says so, and prune's lock is best-effort here (asserted there).
    create = findings["create_if_absent"]
    assert create["status"] == "warn" and create["detail"].startswith("gs:// does not honour atomic"), create
    # check reads, doctor's probes are deleted: both stores exactly as before.
    assert world.snapshot() == before


# --------------------------------------------------------------------------- writing: put, rm, clear


def test_put_then_a_worker_reads_statectls_values(world: World) -> None:
    env = world.env
    big = {"from": "statectl", "pad": "q" * 200}
    put_big = run_json(env, "put", "from_statectl", json.dumps(big), "--asset", ASSET_NAME)
    put_small = run_json(env, "put", "small_from_statectl", "5", "--asset", ASSET_NAME)
    put_task = run_json(env, "put", "from_statectl", json.dumps(big), *world.task_flags(), "--ttl", "6h")

    asset_url = f"{world.base}/assets/{ASSET_NAME}/from_statectl.gz"
    task_url = f"{world.base}/{DAG_ID}/{quote(world.run_id, safe='')}/writer/-1/from_statectl.gz"
    assert (put_big["location"], put_big["object"]) == ("object", asset_url)
    assert (put_small["location"], put_small["object"]) == ("inline", None)
    assert (put_task["location"], put_task["object"]) == ("object", task_url)
    rows = state_rows(world.home)
    assert rows[(None, -1, "from_statectl")] == json.dumps({REF_KEY: asset_url})
    assert rows[(None, -1, "small_from_statectl")] == json.dumps({REF_KEY: "5"})
    assert rows[("writer", -1, "from_statectl")] == json.dumps({REF_KEY: task_url})
    objects = world.objects()
    new = {world.name_of(asset_url), world.name_of(task_url)}
    assert set(objects) == set(world.seed.objects) | new
    for name in new:
        assert same(gz_value(objects[name]), big), name

    expected = {**ASSET_VALUES, "from_statectl": big, "small_from_statectl": 5}
    proc = run_dag(env, reader_source(expected), world.tmp_path)
    assert f"GCS_READER_OK {len(expected)}" in proc.stdout + proc.stderr


def test_rm_and_clear_remove_rows_then_objects(world: World) -> None:
    env = world.env
    rows = state_rows(world.home)
    big_ref = ref_url(rows[("writer", -1, "big")])
    report = run_json(env, "rm", "big", *world.task_flags())
    assert report["objects"] == [big_ref] and [r["key"] for r in report["rows"]] == ["big"], report
    gone_rows: set[RowKey] = {("writer", -1, "big")}

    mapped = run_json(env, "clear", "--dag", DAG_ID, "--run", world.run_id, "--task", "mapped", "--all-map-indices")
    mapped_rows = {where for where in rows if where[0] == "mapped"}
    assert len(mapped["rows"]) == len(mapped_rows) == 3, mapped
    assert set(mapped["objects"]) == {ref_url(rows[w]) for w in mapped_rows & OBJECT_ROWS}, mapped
    gone_rows |= mapped_rows

    assets = run_json(env, "clear", "--asset", ASSET_NAME)
    asset_rows = {where for where in rows if where[0] is None}
    assert len(assets["rows"]) == len(asset_rows), assets
    assert set(assets["objects"]) == {ref_url(rows[w]) for w in asset_rows & OBJECT_ROWS}, assets
    gone_rows |= asset_rows

    assert state_rows(world.home) == {w: t for w, t in rows.items() if w not in gone_rows}
    gone_objects = {world.name_of(ref_url(rows[w])) for w in gone_rows & OBJECT_ROWS}
    assert len(gone_objects) == 1 + 2 + 2
    assert world.objects() == {n: b for n, b in world.seed.objects.items() if n not in gone_objects}


# --------------------------------------------------------------------------- migrate


def test_migrate_round_trip_and_relocate(in_process: World) -> None:
    world = in_process
    env = world.env
    rows = state_rows(world.home)
    expected = expected_values()

    # to-metastore: every value plain in its row, every object deleted.
    report = run_json(env, "migrate", "to-metastore", "--yes")
    assert report["ok"] and report["objects_deleted"] == len(OBJECT_ROWS) and report["objects_written"] == 0, report
    assert state_rows(world.home) == {where: json.dumps(value) for where, value in expected.items()}
    assert world.objects() == {}

    # to-bucket: the rows exactly as the worker wrote them, and its objects back, byte for byte (gzip mtime aside).
    report = run_json(env, "migrate", "to-bucket", "--yes")
    assert report["ok"] and report["objects_written"] == len(OBJECT_ROWS), report
    assert state_rows(world.home) == rows
    back = world.objects()
    assert set(back) == set(world.seed.objects)
    for name, data in back.items():
        assert normalized(data, COMPRESSION) == normalized(world.seed.objects[name], COMPRESSION), name
    values = core_values(env)
    assert all(same(values[where], value) for where, value in expected.items())

    # relocate to another prefix of the bucket, through the same connection.
    moved_base = gcs_conn_url(world.bucket, "moved")
    report = run_json(env, "migrate", "relocate", "--to", moved_base, "--yes")
    assert report["ok"] and report["objects_written"] == report["objects_deleted"] == len(OBJECT_ROWS), report
    assert world.objects(f"{PREFIX}/") == {}
    relocated = world.objects("moved/")
    assert set(relocated) == {"moved/" + name.removeprefix(f"{PREFIX}/") for name in world.seed.objects}
    after = state_rows(world.home)
    for where, text in after.items():
        if where in OBJECT_ROWS:
            assert ref_url(text) == moved_base + world.name_of(ref_url(rows[where])).removeprefix(PREFIX), where
            assert same(gz_value(relocated[world.name_of(ref_url(text))]), expected[where]), where
        else:
            assert text == rows[where], where
    values = core_values(worker_env(world.home, world.bucket, "moved"))
    assert all(same(values[where], value) for where, value in expected.items())


# --------------------------------------------------------------------------- prune


def test_prune_expired_rows_orphans_and_the_lock(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    env = world.env
    rows = state_rows(world.home)
    fs = world.bucket.fs()
    root = f"{world.bucket.bucket}/"
    old_orphan, fresh_orphan = f"{PREFIX}/gone_dag/r/t/-1/k.gz", f"{PREFIX}/fresh_dag/r/t/-1/k.gz"
    fs.pipe({root + old_orphan: gzip.compress(b'"old"'), root + fresh_orphan: gzip.compress(b'"fresh"')})
    gcs_backdate(world.server, world.bucket, old_orphan, 3 * 3600)
    expired_object = world.name_of(ref_url(rows[("writer", -1, "expired_obj")]))
    planted = world.snapshot()

    # The plan: expired rows and their object, the old orphan; the fresh orphan is kept (a write in flight?).
    plan = run_json(env, "prune", "--dry-run")["plan"]
    tallies = {name: (t["rows"], t["objects"]) for name, t in plan["categories"].items()}
    assert tallies == {
        "expired": (2, 1),
        "orphans": (0, 1),
        "older_than": (0, 0),
        "outside_base": (0, 0),
        "fresh_orphans": (0, 1),
    }
    assert plan["deletions"] == 4
    assert world.snapshot() == planted

    # Another run holds the lock: refused, nothing changed.
    holder = {"host": "other-host", "pid": 99, "token": "their-token"}
    now = datetime.now(tz=UTC).isoformat()
    fs.pipe(root + f"{PREFIX}/{LOCK}", json.dumps({**holder, "started": now, "heartbeat": now}).encode())
    r = statectl(env, "prune", "--yes")
    assert r.code == ExitCode.LOCKED and "other-host/99" in r.stderr, str(r)
    assert db_snapshot(world.home) == planted[0]
    fs.rm_file(root + f"{PREFIX}/{LOCK}")

    calls: list[tuple[str, str]] = []
    storage = world.server._storage
    create_file, delete_file = storage.create_file, storage.delete_file

    def recorded_create(bucket_name: str, file_name: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(("create", file_name))
        return create_file(bucket_name, file_name, *args, **kwargs)

    def recorded_delete(bucket_name: str, file_name: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(("delete", file_name))
        return delete_file(bucket_name, file_name, *args, **kwargs)

    monkeypatch.setattr(storage, "create_file", recorded_create)
    monkeypatch.setattr(storage, "delete_file", recorded_delete)
    report = run_json(env, "prune", "--yes")
    assert report["exit_code"] == 0 and report["deleted"]["expired"]["rows"] == 2, report
    assert any("best-effort" in note for note in report["lock"]), report["lock"]
    assert (report["deleted"]["expired"]["objects"], report["deleted"]["orphans"]["objects"]) == (1, 1), report
    # Its own lock, created under the base path and deleted at the end.
    lock_calls = [op for op, name in calls if name == f"{PREFIX}/{LOCK}"]
    assert lock_calls[0] == "create" and lock_calls[-1] == "delete", calls
    assert {("delete", expired_object), ("delete", old_orphan)} <= set(calls), calls
    assert state_rows(world.home) == {w: t for w, t in rows.items() if w not in EXPIRED_ROWS}
    kept = {n: b for n, b in planted[1].items() if n not in (expired_object, old_orphan)}
    assert world.objects() == kept and fresh_orphan in kept


# --------------------------------------------------------------------------- byte parity with the provider


def test_put_writes_the_providers_bytes_and_the_provider_reads_them(in_process: World) -> None:
    world = in_process
    value = {"parity": "v" * 120, "unicode": "\u00fcn\u00ef \u2603", "n": [1, 2.5, True, None]}
    report = run_json(world.env, "put", "par/ity:1", json.dumps(value), "--asset", ASSET_NAME)
    ref = report["object"]
    assert ref == f"{world.base}/assets/{ASSET_NAME}/{quote('par/ity:1', safe='')}.gz"
    name = world.name_of(ref)
    statectl_bytes = world.objects()[name]
    column = state_rows(world.home)[(None, -1, "par/ity:1")]
    with provider(world.env) as backend:
        assert same(backend.deserialize_asset_state_store_from_ref(ref), value)  # the provider reads statectl's
        world.bucket.fs().rm_file(f"{world.bucket.bucket}/{name}")
        from airflow.sdk.state import AssetScope

        theirs = backend.serialize_asset_state_store_to_ref(
            value=value, key="par/ity:1", scope=AssetScope(name=ASSET_NAME)
        )
    assert theirs == ref and column == json.dumps({REF_KEY: ref})
    provider_bytes = gcs_wait_for_object(world.bucket, name)  # the provider's compressed write is deferred
    assert normalized(statectl_bytes, COMPRESSION) == normalized(provider_bytes, COMPRESSION)
    assert gzip.decompress(statectl_bytes) == json.dumps(value).encode()


@pytest.mark.parametrize("kind", ["task", "asset"])
@pytest.mark.parametrize("compression", [None, "gzip", "bz2", "xz", "lzma", "zip"])
def test_object_bytes_match_the_provider(in_process: World, kind: str, compression: str | None) -> None:
    """statectl's write path and the provider, both on gs://<conn_id>@..., for every codec (in process)."""
    import airflow.sdk.state as sdk

    from statectl.core import codec
    from statectl.core.config import Config
    from statectl.core.scopes import AssetScope, TaskScope
    from statectl.stores.store import StateStore

    world = in_process
    value = {"payload": "x" * 80, "unicode": "\u00fcn\u00ef \u2603 \U0001f600", "n": [1, 2.5, True, None]}
    ids = ("dag/a b", "manual__2024-01-01T00:00:00+00:00", "task:1%", 2)
    key = "job/id:1 x%?#"
    p_scope, s_scope = (
        (sdk.TaskScope(*ids), TaskScope(*ids))
        if kind == "task"
        else (sdk.AssetScope(name="a/\u00fc"), AssetScope(name="a/\u00fc"))
    )
    base = gcs_conn_url(world.bucket, f"parity-{kind}-{compression}")
    with provider_configured(
        base, threshold=10, compression=compression, extra_env=gcs_conn_env(world.bucket.endpoint_url)
    ) as env:
        assert env[COMPRESSION_ENV] == (compression or "")
        backend = provider_module().StateStoreObjectStorageBackend()
        ref = getattr(backend, f"serialize_{kind}_state_store_to_ref")(value=value, key=key, scope=p_scope)
        store = StateStore(Config(environ={**env, "AIRFLOW_HOME": str(world.tmp_path)}))
        url = store.object_url_for(s_scope, key)
        assert str(url) == ref and url.conn_id == GCS_CONN_ID
        name = world.name_of(ref)
        provider_bytes = gcs_wait_for_object(world.bucket, name)  # deferred with a compression (see there)
        assert decompress(provider_bytes, compression) == json.dumps(value).encode()
        encoded = codec.encode(value, offload=True, threshold=10, url=url)
        assert encoded.object_text is not None
        assert store.decode(codec.classify(encoded.column_text)) == (value, url)  # statectl reads the provider's

        world.bucket.fs().rm_file(f"{world.bucket.bucket}/{name}")
        store.buckets.write_text(url, encoded.object_text, compression)
        statectl_bytes = world.objects(name)[name]  # statectl's write is verified before it returns
        assert normalized(statectl_bytes, compression) == normalized(provider_bytes, compression)
        if compression not in ("gzip", "zip"):
            assert statectl_bytes == provider_bytes
        deserialize = getattr(backend, f"deserialize_{kind}_state_store_from_ref")
        assert same(deserialize(ref), value)  # the provider reads statectl's


# --------------------------------------------------------------------------- a connection statectl cannot use


def bad_connections(world: World) -> dict[str, tuple[dict[str, str], list[str]]]:
    """name -> (environment, what the error line must say)."""
    undefined = {k: v for k, v in world.env.items() if k != CONN_VAR}
    aws = {**world.env, **s3_conn_env("http://127.0.0.1:9", GCS_CONN_ID)}  # the same conn_id, of type aws
    return {
        "undefined": (undefined, [f"connection {GCS_CONN_ID!r}", CONN_VAR]),
        "aws": (aws, [f"connection {GCS_CONN_ID!r} is of type 'aws'", "google_cloud_platform"]),
    }


def test_undefined_or_wrong_type_connection_is_a_config_error(world: World) -> None:
    before = world.snapshot()
    commands = [
        ["get", "big", *world.task_flags()],
        ["put", "k", json.dumps({"v": "w" * 100}), "--asset", ASSET_NAME],
        ["check"],
        ["migrate", "to-metastore", "--yes"],
        ["prune", "--yes"],
    ]
    cases = [(name, env, says, argv) for name, (env, says) in bad_connections(world).items() for argv in commands]
    results = in_parallel([partial(statectl, env, *argv) for _, env, _, argv in cases])
    for (name, _, says, argv), r in zip(cases, results, strict=True):
        line = assert_one_error_line(r, ExitCode.CONFIG)
        assert all(s in line for s in says), (name, argv, line)
    assert world.snapshot() == before

    for name, (env, _) in bad_connections(world).items():
        r = statectl(env, "doctor", "-o", "json")
        assert r.code == ExitCode.UNHEALTHY, (name, str(r))
        findings = {f["check"]: f for f in r.json()["findings"]}
        assert findings["connection"]["status"] == "fail", (name, findings)
        assert findings["bucket"]["status"] == "warn" and "not probed" in findings["bucket"]["detail"], (name, findings)
        if name == "undefined":
            assert CONN_VAR in findings["connection"]["fix"], findings
    assert world.snapshot() == before


def test_rm_and_clear_with_an_unusable_connection_change_nothing(world: World) -> None:
    before = world.snapshot()
    for name, (env, says) in bad_connections(world).items():
        for argv in (["rm", "big", *world.task_flags()], ["clear", "--asset", ASSET_NAME]):
            line = assert_one_error_line(statectl(env, *argv), ExitCode.CONFIG)
            assert all(s in line for s in says), (name, argv, line)
            assert world.snapshot() == before, (name, argv)
