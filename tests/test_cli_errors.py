"""Bad input through the real entry point: one `statectl: error:` line, a distinct exit code,
no traceback, and both stores (DB rows, bucket files) left exactly as they were."""

from __future__ import annotations

import gzip
import json
import sqlite3
from pathlib import Path

import pytest

from statectl.core.codec import wrap_ref
from statectl.core.scopes import AssetScope, TaskScope
from statectl.errors import ExitCode
from tests.cli_support import (
    ASSET,
    DAG_ID,
    MAPPED,
    TASK,
    Result,
    core_put,
    db_snapshot,
    files_snapshot,
    ref_of,
    statectl,
    task_flags,
    task_rows,
)
from tests.infra import PG_PASSWORD, AirflowEnv, S3Bucket, free_port, s3_conn_env

# Fixtures: seeded (SQLite copy per test), pg_seeded (PostgreSQL clone per test).
pytest_plugins = ["tests.cli_support"]


def assert_one_error_line(r: Result, code: ExitCode) -> str:
    assert r.code == int(code), str(r)
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, str(r)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, str(r)
    assert lines[0].startswith("statectl: error: "), str(r)
    return lines[0]


@pytest.fixture
def populated(seeded: AirflowEnv) -> tuple[AirflowEnv, dict[str, str]]:
    """Seeded DB + file:// bucket holding one task object, one task inline and one asset value."""
    env = seeded.with_backend(seeded.bucket_url, threshold=10, compression="gzip")
    run_id = seeded.query("SELECT run_id FROM dag_run")[0][0]
    task = TaskScope(DAG_ID, run_id, TASK)
    core_put(env, task, "big", {"payload": "x" * 50})
    core_put(env, task, "small", 1)
    core_put(env, AssetScope(name=ASSET), "wm", "y" * 40)
    assert len(list(seeded.bucket_dir.rglob("*.gz"))) == 2
    return seeded, env


def run_unchanged(seeded: AirflowEnv, env: dict[str, str], *args: str, code: ExitCode) -> str:
    before_db, before_files = db_snapshot(seeded), files_snapshot(seeded.bucket_dir)
    line = assert_one_error_line(statectl(env, *args), code)
    assert db_snapshot(seeded) == before_db
    assert files_snapshot(seeded.bucket_dir) == before_files
    return line


# (id, argv with {run} placeholder, exit code, substring of the message)
CASES = [
    ("get-unknown-run", ["get", "big", "--dag", DAG_ID, "--run", "nope", "--task", TASK], ExitCode.NOT_FOUND, "nope"),
    ("put-unknown-run", ["put", "k", "1", "--dag", DAG_ID, "--run", "nope", "--task", TASK], ExitCode.NOT_FOUND, ""),
    ("rm-unknown-run", ["rm", "big", "--dag", DAG_ID, "--run", "nope", "--task", TASK], ExitCode.NOT_FOUND, ""),
    ("clear-unknown-dag", ["clear", "--dag", "nodag", "--run", "{run}", "--task", TASK], ExitCode.NOT_FOUND, ""),
    (
        "put-unknown-task",
        ["put", "k", "1", "--dag", DAG_ID, "--run", "{run}", "--task", "nosuch"],
        ExitCode.NOT_FOUND,
        "task instance",
    ),
    ("put-unknown-map-index", ["put", "k", "1", *task_flags("{run}", MAPPED, 7)], ExitCode.NOT_FOUND, "map index 7"),
    ("get-unknown-asset", ["get", "wm", "--asset", "nosuch"], ExitCode.NOT_FOUND, "nosuch"),
    ("put-unknown-asset", ["put", "wm", "1", "--asset-uri", "s3://nope/x"], ExitCode.NOT_FOUND, ""),
    ("rm-unknown-asset", ["rm", "wm", "--asset", "nosuch"], ExitCode.NOT_FOUND, ""),
    ("get-missing-key", ["get", "nokey", *task_flags("{run}")], ExitCode.NOT_FOUND, "nokey"),
    ("rm-missing-key", ["rm", "big", "nokey", *task_flags("{run}")], ExitCode.NOT_FOUND, "nothing was removed"),
    ("incomplete-dag-only", ["get", "big", "--dag", DAG_ID], ExitCode.USAGE, "--run, --task"),
    ("incomplete-no-task", ["put", "k", "1", "--dag", DAG_ID, "--run", "{run}"], ExitCode.USAGE, "--task"),
    ("no-scope", ["get", "big"], ExitCode.USAGE, "no scope"),
    ("mixed-task-asset", ["get", "big", *task_flags("{run}"), "--asset", ASSET], ExitCode.USAGE, "not both"),
    ("mixed-asset-uri", ["rm", "wm", "--asset", ASSET, "--asset-uri", "x://y"], ExitCode.USAGE, ""),
    ("mixed-clear", ["clear", "--map-index", "1", "--asset", ASSET], ExitCode.USAGE, ""),
    ("empty-dag", ["put", "k", "1", "--dag", "", "--run", "{run}", "--task", TASK], ExitCode.USAGE, "dag id"),
    ("dot-run", ["get", "k", "--dag", DAG_ID, "--run", ".", "--task", TASK], ExitCode.USAGE, "run id"),
    ("dotdot-task", ["put", "k", "1", "--dag", DAG_ID, "--run", "{run}", "--task", ".."], ExitCode.USAGE, "task id"),
    ("empty-key", ["put", "", "1", *task_flags("{run}")], ExitCode.USAGE, "key"),
    ("dot-key", ["get", ".", *task_flags("{run}")], ExitCode.USAGE, "key"),
    ("dotdot-key", ["rm", "..", *task_flags("{run}")], ExitCode.USAGE, "key"),
    ("dotdot-asset", ["put", "k", "1", "--asset", ".."], ExitCode.USAGE, "asset"),
    ("long-key", ["put", "k" * 513, "1", *task_flags("{run}")], ExitCode.USAGE, "513"),
    ("long-key-get", ["get", "k" * 600, "--asset", ASSET], ExitCode.USAGE, "512"),
    ("value-not-json", ["put", "k", "{not json", *task_flags("{run}")], ExitCode.USAGE, "JSON"),
    ("value-bare-word", ["put", "k", "hello", "--asset", ASSET], ExitCode.USAGE, "JSON"),
    ("value-null", ["put", "k", "null", *task_flags("{run}")], ExitCode.USAGE, "null"),
    ("value-nan", ["put", "k", "NaN", *task_flags("{run}")], ExitCode.USAGE, "NaN"),
    ("value-nested-infinity", ["put", "k", '{"a": [Infinity]}', *task_flags("{run}")], ExitCode.USAGE, "Infinity"),
    ("value-missing", ["put", "k", *task_flags("{run}")], ExitCode.USAGE, "VALUE"),
    ("bad-ttl", ["put", "k", "1", "--ttl", "6 parsecs", *task_flags("{run}")], ExitCode.USAGE, "--ttl"),
    ("ttl-on-asset", ["put", "k", "1", "--ttl", "6h", "--asset", ASSET], ExitCode.USAGE, "expiry"),
    ("ttl-and-never", ["put", "k", "1", "--ttl", "6h", "--never-expire", *task_flags("{run}")], ExitCode.USAGE, ""),
    ("raw-and-from-bucket", ["get", "big", "--raw", "--from-bucket", *task_flags("{run}")], ExitCode.USAGE, ""),
    ("bad-backend", ["--backend", "redis", "get", "big", *task_flags("{run}")], ExitCode.USAGE, "backend"),
    ("unknown-option", ["get", "big", "--bogus"], ExitCode.USAGE, "--bogus"),
    ("bad-output", ["ls", "-o", "yaml"], ExitCode.USAGE, "yaml"),
    ("ls-assets-and-tasks", ["ls", "--assets", "--tasks"], ExitCode.USAGE, ""),
    ("all-map-indices-with-index", ["clear", "--all-map-indices", *task_flags("{run}", MAPPED, 1)], ExitCode.USAGE, ""),
    (
        "compression-snappy",
        ["--compression", "snappy", "--threshold", "0", "put", "k", "1", "--asset", ASSET],
        ExitCode.CONFIG,
        "snappy",
    ),
    ("compression-zstd", ["--compression", "zstd", "put", "k", "1", *task_flags("{run}")], ExitCode.CONFIG, "zstd"),
    ("compression-lz4", ["--compression", "lz4", "put", "k", "1", *task_flags("{run}")], ExitCode.CONFIG, "lz4"),
    (
        "compression-nonsense",
        ["--compression", "brotli9", "put", "k", "1", *task_flags("{run}")],
        ExitCode.CONFIG,
        "brotli9",
    ),
    (
        "path-without-scheme",
        ["--path", "/just/a/dir", "put", "k", "1", *task_flags("{run}")],
        ExitCode.CONFIG,
        "scheme",
    ),
]


@pytest.mark.parametrize(("args", "code", "needle"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(populated, args: list[str], code: ExitCode, needle: str) -> None:
    seeded, env = populated
    run_id = seeded.query("SELECT run_id FROM dag_run")[0][0]
    argv = [a.replace("{run}", run_id) for a in args]
    line = run_unchanged(seeded, env, *argv, code=code)
    assert needle in line


def test_compression_codecs_that_are_installed_work_and_others_are_config_errors(populated) -> None:
    """zstd / lz4 are refused only when their libraries are missing (as for the provider)."""
    from fsspec.utils import compressions

    seeded, env = populated
    run_id = seeded.query("SELECT run_id FROM dag_run")[0][0]
    for codec in ("zstd", "lz4"):
        r = statectl(env, "--compression", codec, "put", f"k_{codec}", "[1, 2, 3]", *task_flags(run_id), "-o", "json")
        if codec in compressions.values():
            assert r.code == 0, str(r)
        else:
            assert_one_error_line(r, ExitCode.CONFIG)


def test_too_large_refused_then_forced(populated) -> None:
    seeded, env = populated
    run_id = seeded.query("SELECT run_id FROM dag_run")[0][0]
    env = {**env, "AIRFLOW__STATE_STORE__MAX_VALUE_STORAGE_BYTES": "40"}
    env["AIRFLOW__COMMON_IO__STATE_STORE_OBJECTSTORAGE_THRESHOLD"] = "1000"  # stays inline: the row is big
    value = json.dumps({"payload": "z" * 60})
    line = run_unchanged(seeded, env, "put", "huge", value, *task_flags(run_id), code=ExitCode.TOO_LARGE)
    assert "max_value_storage_bytes=40" in line and "--force" in line
    line = run_unchanged(seeded, env, "put", "huge", value, "--asset", ASSET, code=ExitCode.TOO_LARGE)

    r = statectl(env, "put", "huge", value, "--force", *task_flags(run_id), "-o", "json")
    assert r.code == 0, str(r)
    assert r.stderr.startswith("statectl: warning: ") and "max_value_storage_bytes=40" in r.stderr
    assert json.loads(r.stdout)["location"] == "inline"
    assert json.loads(ref_of(task_rows(seeded)[(TASK, -1, "huge")])) == {"payload": "z" * 60}


def test_unreachable_sqlite_does_not_create_a_file(populated, tmp_path: Path) -> None:
    seeded, env = populated
    run_id = seeded.query("SELECT run_id FROM dag_run")[0][0]
    missing = tmp_path / "nodir" / "airflow.db"
    missing_in_existing_dir = tmp_path / "absent.db"
    for db in (missing, missing_in_existing_dir):
        bad = {**env, "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{db}"}
        for argv in (["get", "big", *task_flags(run_id)], ["put", "k", "1", "--asset", ASSET], ["ls"]):
            run_unchanged(seeded, bad, *argv, code=ExitCode.UNREACHABLE)
        assert not db.exists()
    assert not missing.parent.exists()


def test_unreachable_postgres_closed_port(populated) -> None:
    seeded, env = populated
    before_db, before_files = db_snapshot(seeded), files_snapshot(seeded.bucket_dir)
    assert len([name for name in before_files if name.endswith(".gz")]) == 2, before_files  # the populated objects
    url = f"postgresql+psycopg2://someone:{PG_PASSWORD}@127.0.0.1:{free_port()}/airflow"
    bad = {**env, "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": url}
    for argv in (["get", "wm", "--asset", ASSET], ["ls", "-o", "json"]):
        r = statectl(bad, *argv)
        assert_one_error_line(r, ExitCode.UNREACHABLE)
        assert PG_PASSWORD not in r.stdout + r.stderr
    # an unreachable metastore changes nothing: the bucket (and the SQLite DB it pairs with) exactly as before
    assert files_snapshot(seeded.bucket_dir) == before_files
    assert db_snapshot(seeded) == before_db


def test_unreachable_bucket_s3_closed_port(populated) -> None:
    seeded, env = populated
    run_id = seeded.query("SELECT run_id FROM dag_run")[0][0]
    bad = {**env, **s3_conn_env(f"http://127.0.0.1:{free_port()}", "dead_s3")}
    bad["AIRFLOW__COMMON_IO__STATE_STORE_OBJECTSTORAGE_PATH"] = "s3://dead_s3@bucket/state"
    bad["AWS_MAX_ATTEMPTS"] = "1"  # no minutes of retries against a closed port
    bad["AWS_RETRY_MODE"] = "standard"
    run_unchanged(seeded, bad, "put", "k", json.dumps("w" * 40), *task_flags(run_id), code=ExitCode.UNREACHABLE)


def test_db_without_state_store_tables(populated, tmp_path: Path) -> None:
    seeded, env = populated
    run_id = seeded.query("SELECT run_id FROM dag_run")[0][0]
    old = tmp_path / "old.db"
    with sqlite3.connect(old) as conn:
        conn.execute("CREATE TABLE dag (dag_id TEXT PRIMARY KEY)")
    before = old.read_bytes()
    bad = {**env, "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{old}"}
    for argv in (["get", "big", *task_flags(run_id)], ["ls"], ["put", "k", "1", "--asset", ASSET]):
        line = run_unchanged(seeded, bad, *argv, code=ExitCode.CONFIG)
        assert "Airflow 3.3" in line
    assert old.read_bytes() == before


def test_ref_outside_base_path_is_never_read_or_deleted(populated, tmp_path: Path) -> None:
    seeded, env = populated
    run_id = seeded.query("SELECT run_id FROM dag_run")[0][0]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    victim = elsewhere / "x"
    victim.write_text('"precious"')
    sibling = tmp_path / "bucket-sibling" / "y.gz"  # shares a prefix with the base path string
    sibling.parent.mkdir()
    sibling.write_bytes(gzip.compress(b'"also precious"'))
    escape = f"{seeded.bucket_url}/../elsewhere/x"
    refs = {"big": victim.as_uri(), "small": sibling.as_uri(), "esc": escape}
    seeded.query("UPDATE task_state_store SET value = :v WHERE \"key\" = 'big'", v=wrap_ref(refs["big"]))
    seeded.query("UPDATE task_state_store SET value = :v WHERE \"key\" = 'small'", v=wrap_ref(refs["small"]))
    core_put(env, TaskScope(DAG_ID, run_id, TASK), "esc", 1)
    seeded.query("UPDATE task_state_store SET value = :v WHERE \"key\" = 'esc'", v=wrap_ref(refs["esc"]))

    for key in refs:
        line = run_unchanged(seeded, env, "get", key, *task_flags(run_id), code=ExitCode.DATA)
        assert "outside" in line

    r = statectl(env, "rm", "big", *task_flags(run_id), "-o", "json")
    assert r.code == 0, str(r)
    assert json.loads(r.stdout)["objects"] == []
    assert "object left in place" in r.stderr
    r = statectl(env, "clear", *task_flags(run_id), "-o", "json")
    assert r.code == 0, str(r)
    assert json.loads(r.stdout)["objects"] == []
    assert task_rows(seeded) == {}
    assert victim.read_text() == '"precious"'
    assert gzip.decompress(sibling.read_bytes()) == b'"also precious"'


def test_object_missing_and_corrupt(populated) -> None:
    seeded, env = populated
    run_id = seeded.query("SELECT run_id FROM dag_run")[0][0]
    obj = Path(ref_of(task_rows(seeded)[(TASK, -1, "big")]).removeprefix("file://"))
    asset_obj = seeded.bucket_dir / "assets" / ASSET / "wm.gz"
    obj.write_bytes(b"this is not gzip at all \x00\xff")
    line = run_unchanged(seeded, env, "get", "big", *task_flags(run_id), code=ExitCode.DATA)
    assert "decompress" in line
    asset_obj.write_bytes(gzip.compress(b"{truncated json"))
    line = run_unchanged(seeded, env, "get", "wm", "--asset", ASSET, "-o", "json", code=ExitCode.DATA)
    assert "valid JSON" in line
    obj.unlink()
    line = run_unchanged(seeded, env, "get", "big", *task_flags(run_id), code=ExitCode.DATA)
    assert "does not exist" in line
    line = run_unchanged(seeded, env, "get", "big", "--from-bucket", *task_flags(run_id), code=ExitCode.DATA)
    # A ref that cannot be decoded without a base path is a data error too, not a crash.
    no_base = {k: v for k, v in env.items() if "OBJECTSTORAGE_PATH" not in k}
    line = run_unchanged(seeded, no_base, "get", "wm", "--asset", ASSET, code=ExitCode.DATA)
    assert "state_store_objectstorage_path" in line


# --------------------------------------------------------------------------- secrets


def _assert_secret_free(r: Result, secret: str) -> None:
    assert secret not in r.stdout and secret not in r.stderr, str(r)
    assert "Traceback" not in r.stderr, str(r)


def test_postgres_password_never_printed(pg_seeded: AirflowEnv) -> None:
    assert PG_PASSWORD in pg_seeded.sql_alchemy_conn
    env = pg_seeded.with_backend(pg_seeded.bucket_url, threshold=10, compression="gzip")
    run_id = pg_seeded.query("SELECT run_id FROM dag_run")[0][0]
    runs = [
        statectl(env, "config"),
        statectl(env, "config", "-o", "json"),
        statectl(env, "--sql-alchemy-conn", pg_seeded.sql_alchemy_conn, "config", "-o", "csv"),
        statectl(env, "put", "k", json.dumps({"v": "x" * 40}), *task_flags(run_id), "-o", "json"),
        statectl(env, "get", "k", *task_flags(run_id), "-o", "json"),
        statectl(env, "ls", "-o", "json"),
        statectl(env, "ls"),
        statectl(env, "get", "missing", *task_flags(run_id)),
    ]
    bad_db = pg_seeded.sql_alchemy_conn.rsplit("/", 1)[0] + "/no_such_database"
    runs.append(statectl({**env, "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": bad_db}, "ls"))
    wrong_user = pg_seeded.sql_alchemy_conn.replace("//statectl:", "//intruder:")
    runs.append(statectl({**env, "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": wrong_user}, "get", "k", "--asset", ASSET))
    for r in runs:
        _assert_secret_free(r, PG_PASSWORD)
    assert [r.code for r in runs] == [0, 0, 0, 0, 0, 0, 0, 3, 5, 5], [str(r) for r in runs]
    settings = {s["setting"]: s for s in runs[1].json()["settings"]}
    assert settings["[database] sql_alchemy_conn"]["value"].startswith("postgresql+psycopg2://statectl:***@127.0.0.1")
    assert json.loads(runs[4].stdout) == {"v": "x" * 40}


S3_SECRET = "aws-Secr3t-b81d2e"


def test_connection_password_never_printed_and_json_parses(populated, s3_bucket: S3Bucket) -> None:
    seeded, env = populated
    run_id = seeded.query("SELECT run_id FROM dag_run")[0][0]
    conn = json.loads(next(iter(s3_bucket.conn_env.values())))
    conn["password"] = S3_SECRET  # moto accepts any secret key
    env = {
        **env,
        f"AIRFLOW_CONN_{s3_bucket.conn_id.upper()}": json.dumps(conn),
        "AIRFLOW__COMMON_IO__STATE_STORE_OBJECTSTORAGE_PATH": s3_bucket.url("state"),
    }
    runs = {
        "config": statectl(env, "config", "-o", "json"),
        "put": statectl(env, "put", "s3key", json.dumps({"v": "s" * 40}), *task_flags(run_id), "-o", "json"),
        "get": statectl(env, "get", "s3key", *task_flags(run_id), "-o", "json"),
        "ls": statectl(env, "ls", "-o", "json"),
        "rm-dry": statectl(env, "rm", "s3key", "--dry-run", *task_flags(run_id), "-o", "json"),
    }
    for name, r in runs.items():
        _assert_secret_free(r, S3_SECRET)
        assert r.code == 0, f"{name}: {r}"
        json.loads(r.stdout)  # stdout is only the JSON document, whatever Airflow logs
    assert runs["get"].json() == {"v": "s" * 40}
    assert [k for k in s3_bucket.keys() if k.endswith("s3key.gz")] == [  # noqa: SIM118 - a method
        f"state/{DAG_ID}/{run_id.replace(':', '%3A').replace('+', '%2B')}/{TASK}/-1/s3key.gz"
    ]
    # Errors through the connection are secret-free too.
    s3_bucket.client().delete_object(Bucket=s3_bucket.bucket, Key=s3_bucket.keys()[0])
    r = statectl(env, "get", "s3key", *task_flags(run_id), "-o", "json")
    assert_one_error_line(r, ExitCode.DATA)
    _assert_secret_free(r, S3_SECRET)
    assert r.stdout == ""
