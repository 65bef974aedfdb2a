"""statectl migrate (to-metastore, to-bucket, relocate) on real stores, end to end.

State is written by ONE real DAG run per session through the real provider (file:// bucket, gzip,
a threshold that sends some values inline and some to objects; a mapped task; an asset whose
name != uri); every test gets a copy of that DB and a fresh copy of its bucket directory (the
refs hold absolute paths, so the bucket directory is restored in place: tests run serially).

- Round trips (SQLite + file://): to-metastore -> to-bucket (new threshold, gzip) -> relocate (new
  base, bz2). After each: rows equal what the provider writes (the installed provider is the
  oracle), values equal `statectl get` before, a second run changes nothing, and a REAL worker
  (dag.test()) with the matching configuration reads every asset value back.
- PostgreSQL + S3 (moto, conn_id): worker-written plain values -> to-bucket -> worker reads -> to-metastore.
- Nothing lost: rows changed between plan and update, refs to missing/corrupt/outside objects,
  a worker's in-flight object at the target path, values over max_value_storage_bytes.
- --dry-run, the --yes guard, and bad input (filters, --to, codecs, an unreachable bucket).
"""

from __future__ import annotations

import bz2
import gzip
import json
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from statectl.core.scopes import TaskScope
from statectl.errors import ExitCode
from tests.cli_support import Result, core_put, core_store, db_snapshot, files_snapshot, statectl
from tests.infra import (
    AirflowEnv,
    S3Bucket,
    WorkerBucketSeed,
    asset_reader_dag,
    free_port,
    run_dag,
    s3_conn_env,
    seed_worker_bucket,
    state_writer_dag,
    worker_bucket_copy,
)
from tests.migrate_support import (
    REF_KEY,
    RowKey,
    core_values,
    location,
    provider,
    ref_url,
    same,
    state_rows,
    worker_column,
    worker_read,
)

pytest_plugins = ["tests.cli_support"]

WRITER_DAG = "statectl_mig_writer"
READER_DAG = "statectl_mig_reader"
ASSET_NAME = "statectl_mig_asset"
ASSET_URI = "file:///tmp/statectl-mig/asset%20one"  # name != uri: the provider names the folder by name
WRITER_THRESHOLD = 64

TASK_VALUES: dict[str, Any] = {
    "tiny": 1,
    "small str": "s" * 10,
    "medium/obj:1 x%": {"payload": "m" * 200, "n": [1, 2.5, True, None]},
    "big": {"rows": list(range(3000))},  # ~15 KB
    "unicode": {"text": "h\u00e9llo \u4e2d", "pad": "u" * 80},
    "edge63": "e" * 61,  # json.dumps is 63 bytes: inline at threshold 64
    "edge64": "e" * 62,  # 64 bytes: an object
}
MAPPED_VALUES: dict[int, Any] = {0: {"i": 0}, 1: {"i": 1, "pad": "p" * 100}, 2: {"i": 2, "pad": "p" * 300}}
ASSET_VALUES: dict[str, Any] = {
    "watermark": {"w": "z" * 150},
    "tiny": 7,
    "cursor/at:1": "2024-01-01T00:00:00+00:00",
    "blob": list(range(500)),
}


def expected_values() -> dict[RowKey, Any]:
    values: dict[RowKey, Any] = {("writer", -1, k): v for k, v in TASK_VALUES.items()}
    values.update({("mapped", i, "m"): v for i, v in MAPPED_VALUES.items()})
    values.update({(None, -1, k): v for k, v in ASSET_VALUES.items()})
    return values


WRITER_SOURCE = state_writer_dag(WRITER_DAG, ASSET_NAME, ASSET_URI, TASK_VALUES, MAPPED_VALUES, ASSET_VALUES)

# A real worker reads every asset value back (asset state is not per run, so a new run sees it).
READER_SOURCE = asset_reader_dag(READER_DAG, ASSET_NAME, ASSET_URI, ASSET_VALUES, "MIGRATE_READER_OK")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def worker_seed(airflow_template: Path, tmp_path_factory: pytest.TempPathFactory) -> WorkerBucketSeed:
    """One real DAG run writing through the real provider: file:// bucket, gzip, threshold 64."""
    root = tmp_path_factory.mktemp("migrate_worker_seed")
    return seed_worker_bucket(airflow_template / "airflow.db", root, WRITER_SOURCE, WRITER_THRESHOLD, "gzip")


@pytest.fixture
def worker_written(worker_seed: WorkerBucketSeed, tmp_path: Path) -> AirflowEnv:
    """A copy of the worker-written DB, and the worker's bucket directory restored as written."""
    return worker_bucket_copy(worker_seed, tmp_path)


# --------------------------------------------------------------------------- helpers


def run(env: dict[str, str], *args: str, code: int = 0) -> Result:
    r = statectl(env, *args)
    assert r.code == code, str(r)
    assert "Traceback" not in r.stderr, str(r)
    return r


def migrate(env: dict[str, str], *args: str, code: int = 0) -> dict[str, Any]:
    r = run(env, "migrate", *args, "-o", "json", code=code)
    report = r.json()
    report["_stderr"] = r.stderr
    return report


def rows_of(report: dict[str, Any], action: str) -> int:
    return report["actions"][action]["rows"]


def files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def writer_run_id(home: AirflowEnv) -> str:
    return home.query("SELECT run_id FROM dag_run WHERE dag_id = :d", d=WRITER_DAG)[0][0]


def get_flags(row: RowKey, run_id: str) -> list[str]:
    task_id, map_index, _ = row
    if task_id is None:
        return ["--asset", ASSET_NAME]
    return ["--dag", WRITER_DAG, "--run", run_id, "--task", task_id, "--map-index", str(map_index)]


# A few rows per kind of storage, read through the real CLI (the rest through the core: it is fast).
CLI_SAMPLE: list[RowKey] = [("writer", -1, "tiny"), ("writer", -1, "big"), ("mapped", 2, "m"), (None, -1, "watermark")]


def assert_values(env: dict[str, str], run_id: str, sample: list[RowKey] = CLI_SAMPLE) -> None:
    """Every value, as statectl decodes it, is the value the worker wrote; a sample via `statectl get`."""
    expected = expected_values()
    got = core_values(env)
    assert set(got) == set(expected)
    for where, value in expected.items():
        assert same(got[where], value), (where, got[where], value)

    def cli_get(where: RowKey) -> Any:
        return run(env, "get", where[2], *get_flags(where, run_id), "-o", "json").json()

    with ThreadPoolExecutor(max_workers=4) as pool:  # each process start costs seconds
        for where, out in zip(sample, pool.map(cli_get, sample), strict=True):
            assert same(out, expected[where]), (where, out)


def assert_second_run_changes_nothing(home: AirflowEnv, env: dict[str, str], *args: str) -> dict[str, Any]:
    db_before, files_before = db_snapshot(home), files_snapshot(home.bucket_dir.parent)
    report = migrate(env, *args, "--yes")
    assert report["ok"], report
    total = sum(t["rows"] for t in report["actions"].values())
    assert rows_of(report, "done") == total == len(expected_values()), report["actions"]
    assert (report["objects_written"], report["objects_deleted"]) == (0, 0)
    assert not report["skipped"] and not report["changed_meanwhile"]
    assert db_snapshot(home) == db_before
    assert files_snapshot(home.bucket_dir.parent) == files_before
    return report


def read_through_worker(env: dict[str, str], tmp_path: Path) -> None:
    proc = run_dag(env, READER_SOURCE, tmp_path)
    assert f"MIGRATE_READER_OK {len(ASSET_VALUES)}" in proc.stdout + proc.stderr


def decompress(data: bytes, compression: str) -> bytes:
    return gzip.decompress(data) if compression == "gzip" else bz2.decompress(data)


def assert_rows_as_provider_writes(
    home: AirflowEnv, env: dict[str, str], compression: str, read_object: Any, run_id: str
) -> None:
    """Each row equals the provider's own serialize_*_to_ref for the value; objects hold the same bytes."""
    rows = state_rows(home)
    expected = expected_values()
    assert set(rows) == set(expected)
    mine = {where: read_object(url) for where, text in rows.items() if (url := ref_url(text))}
    with provider(env) as backend:
        for where, value in expected.items():
            want = worker_column(backend, where, value, WRITER_DAG, run_id, ASSET_NAME)
            assert rows[where] == want, (where, rows[where], want)
            url = ref_url(want)
            if url is None:
                assert where not in mine
                continue
            theirs = read_object(url)  # the provider just wrote it at the same path
            assert decompress(mine[where], compression) == decompress(theirs, compression)
            assert decompress(mine[where], compression) == json.dumps(value).encode()
            assert same(worker_read(backend, rows[where], asset=where[0] is None), value)


def local_object(url: str) -> bytes:
    return Path(url.removeprefix("file://")).read_bytes()


# --------------------------------------------------------------------------- round trips


@pytest.mark.slow
def test_round_trip_sqlite_file(worker_written: AirflowEnv, tmp_path: Path) -> None:
    home = worker_written
    run_id = writer_run_id(home)
    worker_env = home.with_backend(home.bucket_url, WRITER_THRESHOLD, "gzip")
    written = state_rows(home)
    assert {location(t) for t in written.values()} == {"inline", "object"}, "the worker wrote both kinds of ref"
    assert location(written[("writer", -1, "edge63")]) == "inline"
    assert location(written[("writer", -1, "edge64")]) == "object"
    worker_objects = files(home.bucket_dir)
    assert len(worker_objects) == sum(location(t) == "object" for t in written.values())
    assert_values(worker_env, run_id)

    # ---- to-metastore: plain json.dumps(value) in every row, the objects deleted ---------------
    report = migrate(worker_env, "to-metastore", "--yes")
    assert report["ok"] and not report["dry_run"], report
    assert rows_of(report, "plain") == len(written) and rows_of(report, "done") == 0
    assert report["objects_deleted"] == len(worker_objects) and report["objects_written"] == 0
    assert "unset [workers] state_store_backend" in report["_stderr"]
    for where, value in expected_values().items():
        assert state_rows(home)[where] == json.dumps(value), where
    assert files(home.bucket_dir) == []
    plain_env = dict(home.env)
    assert_values(plain_env, run_id)
    assert_second_run_changes_nothing(home, worker_env, "to-metastore")
    read_through_worker(plain_env, tmp_path)

    # ---- to-bucket (threshold 100, gzip): every row as the provider writes it ------------------
    bucket_env = home.with_backend(home.bucket_url, 100, "gzip")
    report = migrate(bucket_env, "to-bucket", "--yes")
    assert report["ok"], report
    n_objects = sum(len(json.dumps(v).encode()) >= 100 for v in expected_values().values())
    assert 0 < n_objects < len(written)
    assert rows_of(report, "upload") == report["objects_written"] == n_objects
    assert rows_of(report, "inline") == len(written) - n_objects
    assert_second_run_changes_nothing(home, bucket_env, "to-bucket")
    assert_rows_as_provider_writes(home, bucket_env, "gzip", local_object, run_id)
    assert_values(bucket_env, run_id)
    read_through_worker(bucket_env, tmp_path)

    # ---- relocate to a new base with bz2: refs rewritten, old objects gone, new ones in place ----
    new_base = (tmp_path / "relocated").as_uri() + "/state"
    before = state_rows(home)
    old_objects = files(home.bucket_dir)
    r = run(bucket_env, "migrate", "relocate", "--to", new_base, "--compression", "bz2", "--yes", "-o", "json")
    report = r.json()
    assert report["ok"] and rows_of(report, "move") == n_objects == len(old_objects), report
    assert report["objects_written"] == report["objects_deleted"] == n_objects
    assert f"AIRFLOW__COMMON_IO__STATE_STORE_OBJECTSTORAGE_PATH={new_base}" in r.stderr
    assert "AIRFLOW__COMMON_IO__STATE_STORE_OBJECTSTORAGE_COMPRESSION=bz2" in r.stderr
    assert files(home.bucket_dir) == [], "the old objects are deleted"
    after = state_rows(home)
    for where, text in after.items():
        if location(before[where]) == "inline":
            assert text == before[where]
        else:
            assert ref_url(text).startswith(new_base + "/") and ref_url(text).endswith(".bz2"), text
    relocated_env = home.with_backend(new_base, 100, "bz2")
    # The same command again, with the configuration not yet changed: everything is done.
    report = migrate(bucket_env, "relocate", "--to", new_base, "--compression", "bz2", "--yes")
    assert report["ok"] and rows_of(report, "done") == len(after), report["actions"]
    assert (report["objects_written"], report["objects_deleted"]) == (0, 0) and state_rows(home) == after
    assert_rows_as_provider_writes(home, relocated_env, "bz2", local_object, run_id)
    assert_values(relocated_env, run_id)
    read_through_worker(relocated_env, tmp_path)


def s3_object(bucket: S3Bucket):
    def read(url: str) -> bytes:
        prefix = f"s3://{bucket.conn_id}@{bucket.bucket}/"
        assert url.startswith(prefix), url
        return bucket.client().get_object(Bucket=bucket.bucket, Key=url.removeprefix(prefix))["Body"].read()

    return read


@pytest.mark.slow
def test_round_trip_postgres_s3(pg_airflow_home: AirflowEnv, s3_bucket: S3Bucket, tmp_path: Path) -> None:
    """PostgreSQL + S3 through a conn_id: plain values a worker wrote -> to-bucket -> a worker reads -> back."""
    home = pg_airflow_home
    run_dag(home.env, WRITER_SOURCE, tmp_path)  # no worker backend: plain values
    run_id = writer_run_id(home)
    assert {location(t) for t in state_rows(home).values()} == {"plain"}
    env = {**home.with_backend(s3_bucket.url("state"), 100, "gzip"), **s3_bucket.conn_env}

    report = migrate(env, "to-bucket", "--yes", "--batch-size", "3", "--concurrency", "4")
    assert report["ok"], report
    n_objects = sum(len(json.dumps(v).encode()) >= 100 for v in expected_values().values())
    assert report["objects_written"] == rows_of(report, "upload") == n_objects == len(s3_bucket.keys())
    client = s3_bucket.client()

    def etags() -> dict[str, str]:
        listed = s3_bucket.keys()
        return {k: client.head_object(Bucket=s3_bucket.bucket, Key=k)["ETag"] for k in listed}

    written = etags()
    db_before = db_snapshot(home)
    report = migrate(env, "to-bucket", "--yes")
    assert rows_of(report, "done") == len(expected_values()) and report["objects_written"] == 0
    assert db_snapshot(home) == db_before
    assert etags() == written
    assert_rows_as_provider_writes(home, env, "gzip", s3_object(s3_bucket), run_id)
    assert_values(env, run_id, sample=[("writer", -1, "big"), (None, -1, "watermark")])
    read_through_worker(env, tmp_path)

    # relocate with the codec unchanged sends each object's stored bytes as they are (the same ETag), except
    # where the stored text is not the canonical one (a hand wrote it compact): that one is written afresh.
    moved = s3_bucket.url("moved")
    compact_value = expected_values()[("writer", -1, "big")]
    stored = s3_bucket.keys()
    for key in stored:  # gzip headers dated 1970: a fresh encoding could not match by chance
        text = gzip.decompress(client.get_object(Bucket=s3_bucket.bucket, Key=key)["Body"].read())
        if key.endswith("/big.gz"):
            compact_key, text = key, json.dumps(compact_value, separators=(",", ":")).encode()
        client.put_object(Bucket=s3_bucket.bucket, Key=key, Body=gzip.compress(text, mtime=0))
    written = etags()
    report = migrate(env, "relocate", "--to", moved, "--yes")
    assert report["ok"] and report["objects_written"] == report["objects_deleted"] == n_objects, report
    relocated = {k.replace("moved/", "state/", 1): e for k, e in etags().items()}
    assert set(relocated) == set(written)
    assert {k for k in written if relocated[k] != written[k]} == {compact_key}
    body = client.get_object(Bucket=s3_bucket.bucket, Key=compact_key.replace("state/", "moved/", 1))["Body"]
    assert gzip.decompress(body.read()) == json.dumps(compact_value).encode()
    env = {**home.with_backend(moved, 100, "gzip"), **s3_bucket.conn_env}
    assert_rows_as_provider_writes(home, env, "gzip", s3_object(s3_bucket), run_id)
    read_through_worker(env, tmp_path)

    report = migrate(env, "to-metastore", "--yes")
    assert report["ok"] and report["objects_deleted"] == n_objects, report
    assert s3_bucket.keys() == []
    for where, value in expected_values().items():
        assert state_rows(home)[where] == json.dumps(value), where
    assert_values(dict(home.env), run_id)


def test_to_metastore_keep_objects(worker_written: AirflowEnv) -> None:
    home = worker_written
    env = home.with_backend(home.bucket_url, WRITER_THRESHOLD, "gzip")
    objects = files_snapshot(home.bucket_dir)
    assert objects
    report = migrate(env, "to-metastore", "--keep-objects", "--yes")
    assert report["ok"] and report["objects_deleted"] == 0, report
    assert len(report["objects_left"]) == len(objects)
    assert {o["reason"] for o in report["objects_left"]} == {"--keep-objects"}
    assert files_snapshot(home.bucket_dir) == objects
    assert {location(t) for t in state_rows(home).values()} == {"plain"}
    assert_values(dict(home.env), writer_run_id(home))


def test_objects_are_verified_before_rows_point_to_them_and_deleted_after(worker_written: AirflowEnv) -> None:
    """relocate through the core API: at each batch's row update every new object already holds the
    value and every old one is still there; old objects go only once the rows are committed."""
    from statectl.core.filters import RowFilter
    from statectl.ops.migrate import Direction, Migration, build_target

    home = worker_written
    env = home.with_backend(home.bucket_url, WRITER_THRESHOLD, "gzip")
    new_base = home.bucket_dir.parent / "new"
    store = core_store(env)
    seen: list[str] = []

    class Watched(Migration):
        def _update_rows(self, items, report):
            for item in items:
                if item.target_url is not None and item.new_text is not None:
                    assert Path(item.source_url.path).exists(), "the old object is still there"
                    data = bz2.decompress(Path(item.target_url.path).read_bytes())
                    assert data.decode() == item.serialized, "the new object holds the value"
            return super()._update_rows(items, report)

        def _delete_old_objects(self, committed, report):
            with sqlite3.connect(home.db_path) as conn:  # another connection: only committed rows show
                texts = {
                    r[0]
                    for r in conn.execute(
                        "SELECT value FROM task_state_store UNION SELECT value FROM asset_state_store"
                    )
                }
            for item in committed:
                assert item.new_text in texts, "the row is committed before its old object goes"
                seen.append(str(item.source_url))
            super()._delete_old_objects(committed, report)

    try:
        target = build_target(store, Direction.RELOCATE, to=new_base.as_uri(), compression="bz2")
        report = Watched(store, target, RowFilter(), batch_size=2).execute()
    finally:
        store.close()
    assert report.ok and report.objects_deleted == len(seen) > 0, report.as_dict()
    assert files(home.bucket_dir) == []


# --------------------------------------------------------------------------- nothing lost


def _changing_migration(home: AirflowEnv, victim: RowKey, worker_text: str):
    """A Migration that lets a 'worker' rewrite one row right before the batch's conditional updates."""
    from statectl.ops.migrate import Migration

    class WorkerWritesMeanwhile(Migration):
        def _update_rows(self, items, report):
            task_id, map_index, key = victim
            in_batch = [
                i
                for i in items
                if i.row.key == key
                and getattr(i.row.scope, "task_id", None) == task_id
                and getattr(i.row.scope, "map_index", -1) == map_index
            ]
            if not in_batch:
                return super()._update_rows(items, report)
            with sqlite3.connect(home.db_path) as conn:
                if task_id is None:
                    conn.execute('UPDATE asset_state_store SET value = ? WHERE "key" = ?', (worker_text, key))
                else:
                    conn.execute(
                        'UPDATE task_state_store SET value = ? WHERE task_id = ? AND map_index = ? AND "key" = ?',
                        (worker_text, task_id, map_index, key),
                    )
            return super()._update_rows(items, report)

    return WorkerWritesMeanwhile


@pytest.mark.parametrize("victim", [("writer", -1, "big"), (None, -1, "watermark")], ids=["task", "asset"])
def test_row_changed_between_plan_and_update_is_skipped_and_reported(worker_written: AirflowEnv, victim) -> None:
    from statectl.core.filters import RowFilter
    from statectl.ops.migrate import Direction, build_target

    home = worker_written
    env = home.with_backend(home.bucket_url, WRITER_THRESHOLD, "gzip")
    old_object = Path(ref_url(state_rows(home)[victim]).removeprefix("file://"))
    worker_text = json.dumps({"rewritten": "by a worker"})
    store = core_store(env)
    try:
        migration = _changing_migration(home, victim, worker_text)(
            store, build_target(store, Direction.TO_METASTORE), RowFilter(), batch_size=100
        )
        report = migration.execute()
    finally:
        store.close()
    label = f"{'asset' if victim[0] is None else 'task'}"
    assert not report.ok and len(report.changed_meanwhile) == 1, report.as_dict()
    assert report.changed_meanwhile[0].startswith(label) and repr(victim[2]) in report.changed_meanwhile[0]
    rows = state_rows(home)
    assert rows[victim] == worker_text, "the worker's value is never overwritten"
    assert old_object.exists(), "an object whose row was not committed is not deleted"
    for where, value in expected_values().items():
        if where != victim:
            assert rows[where] == json.dumps(value)


def test_cli_exits_partial_when_a_row_changed_meanwhile(worker_written: AirflowEnv, monkeypatch) -> None:
    """The CLI path (in-process, same code as the entry point) exits 8 and names the row."""
    from typer.testing import CliRunner

    import statectl.ops.migrate
    from statectl.cli.main import app

    home = worker_written
    victim: RowKey = ("mapped", 1, "m")
    cls = _changing_migration(home, victim, json.dumps("worker"))
    monkeypatch.setattr(statectl.ops.migrate, "Migration", cls)
    environ = home.with_backend(home.bucket_url, WRITER_THRESHOLD, "gzip")
    for name in [n for n in os.environ if n.startswith("AIRFLOW")]:
        monkeypatch.delenv(name)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(app, ["migrate", "to-metastore", "--yes", "-o", "json"], standalone_mode=False)
    assert result.exception is None, result.output
    assert result.return_value == ExitCode.PARTIAL
    report = json.loads(result.stdout)
    assert report["changed_meanwhile"] and "'m'" in report["changed_meanwhile"][0] and not report["ok"]
    assert state_rows(home)[victim] == json.dumps("worker")


@pytest.mark.parametrize("direction", ["to-metastore", "to-bucket", "relocate"])
def test_broken_refs_are_skipped_reported_and_left_alone(worker_written: AirflowEnv, tmp_path: Path, direction) -> None:
    home = worker_written
    env = home.with_backend(home.bucket_url, WRITER_THRESHOLD, "gzip")
    rows = state_rows(home)
    missing, corrupt, outside = ("writer", -1, "big"), ("mapped", 2, "m"), (None, -1, "watermark")
    Path(ref_url(rows[missing]).removeprefix("file://")).unlink()
    Path(ref_url(rows[corrupt]).removeprefix("file://")).write_bytes(b"not gzip at all")
    elsewhere = tmp_path / "elsewhere" / "watermark.gz"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(gzip.compress(json.dumps(ASSET_VALUES["watermark"]).encode()))
    outside_text = json.dumps({REF_KEY: elsewhere.as_uri()})
    home.query('UPDATE asset_state_store SET value = :v WHERE "key" = :k', v=outside_text, k="watermark")
    broken = {missing: rows[missing], corrupt: rows[corrupt], outside: outside_text}
    elsewhere_bytes = elsewhere.read_bytes()

    if direction == "to-bucket":
        env = home.with_backend(home.bucket_url, WRITER_THRESHOLD, "bz2")  # every object moves to .bz2
        args = ["to-bucket"]
    elif direction == "relocate":
        args = ["relocate", "--to", (tmp_path / "new").as_uri()]
    else:
        args = ["to-metastore"]
    report = migrate(env, *args, "--yes", code=ExitCode.PARTIAL)
    assert not report["ok"]
    reasons = {r["row"]: r["reason"] for r in report["skipped"]}
    assert len(reasons) == 3 == rows_of(report, "skip"), report["skipped"]
    by_key = {
        key: reason for label, reason in reasons.items() for key in ("'big'", "'m'", "'watermark'") if key in label
    }
    assert "does not exist" in by_key["'big'"]
    assert "decompress" in by_key["'m'"]
    assert "outside the configured base path" in by_key["'watermark'"]
    for word in ("skipped", "big", "watermark"):
        assert word in report["_stderr"]
    after = state_rows(home)
    for where, text in broken.items():
        assert after[where] == text, f"{where} is left as it is"
    assert elsewhere.read_bytes() == elsewhere_bytes, "nothing outside the base path is touched"
    assert Path(ref_url(rows[corrupt]).removeprefix("file://")).read_bytes() == b"not gzip at all"
    for where, text in after.items():
        if where not in broken:
            assert text != rows[where] or location(text) != "object" or direction == "to-bucket", where


def test_in_flight_object_at_the_target_path_is_not_overwritten(worker_written: AirflowEnv) -> None:
    """A worker writes the object first, then the row: a recent object with another value is its write."""
    home = worker_written
    TASK = "writer"
    scope = TaskScope(WRITER_DAG, writer_run_id(home), TASK)
    core_put(dict(home.env), scope, "k", {"old": "x" * 50})  # plain, as without a backend
    env = home.with_backend(home.bucket_url, 0, "gzip")
    store = core_store(env)
    target = Path(store.object_url_for(scope, "k").path)
    store.close()
    target.parent.mkdir(parents=True, exist_ok=True)
    in_flight = gzip.compress(json.dumps({"new": "from a worker"}).encode())
    target.write_bytes(in_flight)
    plain = state_rows(home)[(TASK, -1, "k")]

    flags = ["--dag", WRITER_DAG, "--task", TASK]
    report = migrate(env, "to-bucket", *flags, "--yes", code=ExitCode.PARTIAL)
    assert rows_of(report, "skip") == 1 and "a worker may be writing" in report["skipped"][0]["reason"]
    assert target.read_bytes() == in_flight and state_rows(home)[(TASK, -1, "k")] == plain

    old = time.time() - 2 * 3600  # an object that old is no write in flight: an orphan, replaced
    os.utime(target, (old, old))
    report = migrate(env, "to-bucket", *flags, "--yes")
    assert report["ok"] and rows_of(report, "upload") == 1 and report["objects_written"] == 1
    assert json.loads(gzip.decompress(target.read_bytes())) == {"old": "x" * 50}
    assert ref_url(state_rows(home)[(TASK, -1, "k")]) == f"file://{target}"


def test_value_over_max_value_storage_bytes_is_moved_and_reported(worker_written: AirflowEnv) -> None:
    home = worker_written
    env = home.with_backend(home.bucket_url, WRITER_THRESHOLD, "gzip")
    env["AIRFLOW__STATE_STORE__MAX_VALUE_STORAGE_BYTES"] = "1000"
    report = migrate(env, "to-metastore", "--yes")
    assert report["ok"], report
    over = [v for v in expected_values().values() if len(json.dumps(v)) > 1000]
    assert len(over) == len(report["over_max_value_storage_bytes"]) == 2
    assert {label.split(" key ")[1].split(" ")[0] for label in report["over_max_value_storage_bytes"]} == {
        "'big'",
        "'blob'",
    }
    assert "max_value_storage_bytes" in report["_stderr"]
    assert state_rows(home)[("writer", -1, "big")] == json.dumps(TASK_VALUES["big"])


# --------------------------------------------------------------------------- dry run, --yes


@pytest.mark.parametrize(
    ("direction", "settings"),
    [
        ("to-metastore", (WRITER_THRESHOLD, "gzip")),
        ("to-bucket", (100, "bz2")),
        ("relocate", (WRITER_THRESHOLD, "gzip")),
    ],
)
def test_dry_run_changes_nothing_and_shows_the_plan(worker_written: AirflowEnv, tmp_path: Path, direction, settings):
    home = worker_written
    env = home.with_backend(home.bucket_url, *settings)
    args = [direction] + (["--to", (tmp_path / "new").as_uri()] if direction == "relocate" else [])
    db_before, files_before = db_snapshot(home), files_snapshot(home.bucket_dir.parent)
    plan = migrate(env, *args, "--dry-run")
    assert plan["dry_run"] and plan["ok"]
    assert db_snapshot(home) == db_before and files_snapshot(home.bucket_dir.parent) == files_before
    assert sum(t["rows"] for t in plan["actions"].values()) == len(expected_values())
    moving = {"to-metastore": "plain", "to-bucket": "move", "relocate": "move"}[direction]
    assert plan["actions"][moving]["rows"] > 0 and plan["actions"][moving]["bytes"] > 0
    outcome = migrate(env, *args, "--yes")
    assert outcome["ok"]
    for action in ("skip", "done"):
        assert plan["actions"][action]["rows"] == outcome["actions"][action]["rows"], (plan, outcome)
    changing = sum(t["rows"] for a, t in plan["actions"].items() if a not in ("skip", "done"))
    assert changing == sum(t["rows"] for a, t in outcome["actions"].items() if a not in ("skip", "done"))
    assert plan["objects_to_delete"] == outcome["objects_deleted"]
    if direction == "to-bucket":
        # An object whose value falls under the new threshold goes inline: the plan cannot tell
        # without reading it, so it counts the write (an upper bound).
        assert plan["objects_to_write"] >= outcome["objects_written"]
    else:
        assert plan["objects_to_write"] == outcome["objects_written"]


def test_without_yes_off_a_terminal_it_refuses(worker_written: AirflowEnv) -> None:
    home = worker_written
    env = home.with_backend(home.bucket_url, WRITER_THRESHOLD, "gzip")
    db_before, files_before = db_snapshot(home), files_snapshot(home.bucket_dir)
    r = run(env, "migrate", "to-metastore", code=ExitCode.USAGE)
    assert "--yes" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert db_snapshot(home) == db_before and files_snapshot(home.bucket_dir) == files_before


def test_on_a_terminal_the_plan_is_asked_for_and_no_changes_nothing(worker_written: AirflowEnv) -> None:
    from tests.cli_support import statectl_on_terminal

    home = worker_written
    env = home.with_backend(home.bucket_url, WRITER_THRESHOLD, "gzip")
    db_before, files_before = db_snapshot(home), files_snapshot(home.bucket_dir)
    r = statectl_on_terminal(env, "migrate", "to-metastore", answer="n")
    total = len(expected_values())
    assert r.code == 0 and f"Migrate {total} row(s) to-metastore?" in r.stderr, str(r)
    assert "nothing changed" in r.stderr and "Traceback" not in r.stderr, str(r)
    assert db_snapshot(home) == db_before and files_snapshot(home.bucket_dir) == files_before


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "flags", [["--dag", "no_such_dag"], ["--asset", "no_such_asset"], ["--task", "nope", "--map-index", "7"]]
)
def test_unknown_filter_values_match_nothing_and_say_so(worker_written: AirflowEnv, flags) -> None:
    home = worker_written
    env = home.with_backend(home.bucket_url, WRITER_THRESHOLD, "gzip")
    db_before, files_before = db_snapshot(home), files_snapshot(home.bucket_dir)
    report = migrate(env, "to-metastore", *flags, "--yes")
    assert "no rows match" in report["_stderr"]
    assert sum(t["rows"] for t in report["actions"].values()) == 0
    assert db_snapshot(home) == db_before and files_snapshot(home.bucket_dir) == files_before


def test_relocate_refuses_the_current_base_path_and_overlaps(worker_written: AirflowEnv) -> None:
    home = worker_written
    env = home.with_backend(home.bucket_url, WRITER_THRESHOLD, "gzip")
    db_before, files_before = db_snapshot(home), files_snapshot(home.bucket_dir)
    for to in (home.bucket_url, home.bucket_url + "/"):
        r = run(env, "migrate", "relocate", "--to", to, "--yes", code=ExitCode.USAGE)
        assert "current base path" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    for to in (home.bucket_url + "/inner", home.bucket_dir.parent.as_uri()):
        r = run(env, "migrate", "relocate", "--to", to, "--yes", code=ExitCode.USAGE)
        assert "contain one another" in r.stderr
    assert db_snapshot(home) == db_before and files_snapshot(home.bucket_dir) == files_before


def test_a_compression_the_provider_cannot_write_is_refused(worker_written: AirflowEnv, tmp_path: Path) -> None:
    home = worker_written
    db_before, files_before = db_snapshot(home), files_snapshot(home.bucket_dir)
    env = home.with_backend(home.bucket_url, WRITER_THRESHOLD, "snappy")
    r = run(env, "migrate", "to-bucket", "--yes", code=ExitCode.CONFIG)
    assert "snappy" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    env = home.with_backend(home.bucket_url, WRITER_THRESHOLD, "gzip")
    to = (tmp_path / "new").as_uri()
    r = run(env, "migrate", "relocate", "--to", to, "--compression", "snappy", "--yes", code=ExitCode.CONFIG)
    assert "snappy" in r.stderr
    assert db_snapshot(home) == db_before and files_snapshot(home.bucket_dir) == files_before


def test_unreachable_bucket_at_start_changes_nothing(worker_written: AirflowEnv) -> None:
    home = worker_written
    core_put(dict(home.env), TaskScope(WRITER_DAG, writer_run_id(home), "writer"), "k", {"v": "x" * 100})
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = {**home.with_backend("s3://statectl_s3@nowhere/state", 0, "gzip"), **s3_conn_env(dead)}
    env["AWS_MAX_ATTEMPTS"] = "1"
    db_before = db_snapshot(home)
    started = time.monotonic()
    r = run(env, "migrate", "to-bucket", "--yes", code=ExitCode.UNREACHABLE)
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert db_snapshot(home) == db_before
    assert time.monotonic() - started < 60
