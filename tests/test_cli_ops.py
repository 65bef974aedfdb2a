"""put / get / ls / rm / clear through the real entry point, on real stores:
SQLite + file://, PostgreSQL + file://, SQLite + S3 (moto, through an Airflow conn_id)."""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import os
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from statectl.core.scopes import AssetScope, TaskScope
from statectl.errors import ExitCode
from statectl.ops.write import RemovalOptions, execute_removal, plan_removal, put_value
from tests.cli_support import (
    ASSET,
    ASSET_URI,
    DAG_ID,
    MAPPED,
    TASK,
    asset_rows,
    core_put,
    core_store,
    db_snapshot,
    files_snapshot,
    local_path,
    ref_of,
    statectl,
    task_flags,
    task_rows,
)
from tests.infra import AirflowEnv, S3Bucket

# Fixtures: seeded (SQLite copy per test), pg_seeded (PostgreSQL clone per test).
pytest_plugins = ["tests.cli_support"]


def run_id_of(env: AirflowEnv) -> str:
    return env.query("SELECT run_id FROM dag_run")[0][0]


def ok(env: dict[str, str], *args: str, input: str | None = None):
    r = statectl(env, *args, input=input)
    assert r.code == 0, str(r)
    assert "Traceback" not in r.stderr
    return r


def parse_ts(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


# --------------------------------------------------------------------------- put / get


def test_put_threshold_inline_or_object(seeded: AirflowEnv) -> None:
    env = seeded.with_backend(seeded.bucket_url, threshold=5, compression="gzip")
    run_id = run_id_of(seeded)
    # json.dumps("ab") is 4 bytes (< 5: inline); "abc" is 5 (== threshold: object); "abcd" 6.
    locations = {}
    for key, value in (("below", "ab"), ("at", "abc"), ("above", "abcd")):
        r = ok(env, "put", key, json.dumps(value), *task_flags(run_id), "-o", "json")
        locations[key] = r.json()["location"]
        assert ok(env, "get", key, *task_flags(run_id), "-o", "json").json() == value
    assert locations == {"below": "inline", "at": "object", "above": "object"}
    rows = task_rows(seeded)
    assert ref_of(rows[(TASK, -1, "below")]) == '"ab"'
    for key, value in (("at", "abc"), ("above", "abcd")):
        url = ref_of(rows[(TASK, -1, key)])
        assert (
            url == f"{seeded.bucket_url}/{DAG_ID}/{run_id.replace(':', '%3A').replace('+', '%2B')}/{TASK}/-1/{key}.gz"
        )
        assert json.loads(gzip.decompress(local_path(url).read_bytes())) == value

    # Without a worker backend the column holds the value itself.
    plain = seeded.env
    r = ok(plain, "put", "plain", '{"a": [1, 2]}', *task_flags(run_id), "-o", "json")
    assert r.json()["location"] == "plain"
    assert task_rows(seeded)[(TASK, -1, "plain")] == '{"a": [1, 2]}'

    # --raw shows the DB text; --from-bucket reads the object at the provider's path.
    raw = ok(env, "get", "above", "--raw", *task_flags(run_id), "-o", "plain").stdout
    assert raw == rows[(TASK, -1, "above")] + "\n"
    assert json.loads(raw) == {"__airflow_state_ref__": ref_of(rows[(TASK, -1, "above")])}
    assert ok(env, "get", "above", "--from-bucket", *task_flags(run_id), "-o", "json").json() == "abcd"
    # Values from a file and from stdin.
    (seeded.home / "v.json").write_text('{"from": "file"}')
    ok(env, "put", "f", "--file", str(seeded.home / "v.json"), *task_flags(run_id))
    ok(env, "put", "s", "-", *task_flags(run_id), input='["stdin"]')
    assert ok(env, "get", "f", *task_flags(run_id), "-o", "json").json() == {"from": "file"}
    assert ok(env, "get", "s", *task_flags(run_id), "-o", "json").json() == ["stdin"]


def test_expiry_as_the_sdk_computes_it(seeded: AirflowEnv) -> None:
    env = {**seeded.env, "AIRFLOW__STATE_STORE__DEFAULT_RETENTION_DAYS": "2"}
    run_id = run_id_of(seeded)

    def put(key: str, *extra: str, e: dict[str, str] = env) -> tuple[datetime, datetime, datetime | None]:
        before = datetime.now(tz=UTC)
        r = ok(e, "put", key, "1", *extra, *task_flags(run_id), "-o", "json")
        after = datetime.now(tz=UTC)
        return before, after, parse_ts(r.json()["expires_at"])

    before, after, exp = put("ttl", "--ttl", "6h")
    assert exp is not None and before + timedelta(hours=6) <= exp <= after + timedelta(hours=6)
    before, after, exp = put("default")
    assert exp is not None and before + timedelta(days=2) <= exp <= after + timedelta(days=2)
    assert put("never", "--never-expire")[2] is None
    assert put("zero", e={**env, "AIRFLOW__STATE_STORE__DEFAULT_RETENTION_DAYS": "0"})[2] is None
    before, after, exp = put("combo", "--ttl", "1d12h")
    assert exp is not None and before + timedelta(hours=36) <= exp <= after + timedelta(hours=36)
    # What the DB holds agrees with what put reported (naive UTC in SQLite).
    db = dict(seeded.query('SELECT "key", expires_at FROM task_state_store'))
    assert db["never"] is None and db["zero"] is None
    listed = {r["key"]: r["expires_at"] for r in ok(env, "ls", "-o", "json").json()}
    stored = parse_ts(str(db["ttl"]))
    assert stored is not None and stored.replace(tzinfo=UTC) == parse_ts(listed["ttl"])


def test_asset_put_records_api_writer(seeded: AirflowEnv) -> None:
    env = seeded.with_backend(seeded.bucket_url, threshold=10, compression="gzip")
    ok(env, "put", "wm", json.dumps("w" * 30), "--asset", ASSET)
    ok(env, "put", "small", "7", "--asset-uri", ASSET_URI)
    rows = asset_rows(seeded)
    assert rows["wm"][1] == "api" and rows["small"][1] == "api"
    assert ref_of(rows["wm"][0]) == f"{seeded.bucket_url}/assets/{ASSET}/wm.gz"
    # Addressed by uri, the provider names the folder after the uri (workers use name first).
    assert ok(env, "get", "small", "--asset", ASSET, "-o", "json").json() == 7
    assert ok(env, "get", "wm", "--asset-uri", ASSET_URI, "-o", "json").json() == "w" * 30
    full = seeded.query("SELECT last_updated_by_dag_id, last_updated_by_run_id FROM asset_state_store")
    assert set(full) == {(None, None)}


def test_put_replacing_object_with_other_codec_removes_stale_object_after_commit(seeded: AirflowEnv) -> None:
    env = seeded.with_backend(seeded.bucket_url, threshold=0, compression="gzip")
    run_id = run_id_of(seeded)
    scope = TaskScope(DAG_ID, run_id, TASK)
    gz_url = core_put(env, scope, "k", {"v": 1}).url
    gz = local_path(str(gz_url))
    assert gz.is_file()

    bz2_env = {**env, "AIRFLOW__COMMON_IO__STATE_STORE_OBJECTSTORAGE_COMPRESSION": "bz2"}
    store = core_store(bz2_env)
    seen: list[str] = []
    real_delete = store.buckets.delete_many

    def delete_many(urls):
        # The row is committed (visible to another connection) before the stale object goes.
        with sqlite3.connect(seeded.db_path) as other:
            seen.append(other.execute("SELECT value FROM task_state_store WHERE \"key\" = 'k'").fetchone()[0])
        assert gz.is_file()
        return real_delete(urls)

    store.buckets.delete_many = delete_many
    try:
        result = put_value(store, scope, "k", {"v": 2})
    finally:
        store.close()
    assert str(result.url).endswith("/k.bz2") and seen and ref_of(seen[0]) == str(result.url)
    assert not gz.exists()
    assert json.loads(bz2.decompress(local_path(str(result.url)).read_bytes())) == {"v": 2}

    # Through the CLI: back to gzip, and then inline (no object at all).
    ok(env, "put", "k", '{"v": 3}', *task_flags(run_id))
    assert gz.is_file() and not local_path(str(result.url)).exists()
    ok(env, "--threshold", "1000", "put", "k", '{"v": 4}', *task_flags(run_id))
    assert not gz.exists()
    assert list(seeded.bucket_dir.rglob("k.*")) == []


# --------------------------------------------------------------------------- ls


@pytest.fixture
def listed(seeded: AirflowEnv) -> tuple[AirflowEnv, dict[str, str], str]:
    env = seeded.with_backend(seeded.bucket_url, threshold=10, compression="gzip")
    run_id = run_id_of(seeded)
    core_put(env, TaskScope(DAG_ID, run_id, TASK), "job_a", {"big": "x" * 30})
    core_put(env, TaskScope(DAG_ID, run_id, TASK), "job_b", 1)
    core_put(env, TaskScope(DAG_ID, run_id, TASK), "other", 2)
    for i in range(3):
        core_put(env, TaskScope(DAG_ID, run_id, MAPPED, i), "part", i)
    core_put(env, AssetScope(name=ASSET), "job_w", "w" * 30)
    seeded.query("UPDATE task_state_store SET expires_at = '2000-01-01 00:00:00.000000' WHERE \"key\" = 'other'")
    return seeded, env, run_id


def _keys(records: list[dict]) -> list[tuple]:
    return [(r["kind"], r["task_id"], r["map_index"], r["asset"], r["key"]) for r in records]


def test_ls_filters_and_formats(listed) -> None:
    seeded, env, run_id = listed

    def ls(*args: str) -> list[dict]:
        return ok(env, "ls", *args, "-o", "json").json()

    everything = ls()
    assert _keys(everything) == [
        ("task", MAPPED, 0, None, "part"),
        ("task", MAPPED, 1, None, "part"),
        ("task", MAPPED, 2, None, "part"),
        ("task", TASK, -1, None, "job_a"),
        ("task", TASK, -1, None, "job_b"),
        ("task", TASK, -1, None, "other"),
        ("asset", None, None, ASSET, "job_w"),
    ]
    by_key = {(r["task_id"], r["map_index"], r["key"]): r for r in everything}
    big = by_key[(TASK, -1, "job_a")]
    assert big["location"] == "object" and big["compression"] == "gzip" and big["object"].endswith("/job_a.gz")
    assert by_key[(TASK, -1, "job_b")]["location"] == "inline"
    assert by_key[(TASK, -1, "job_b")]["bytes"] == len(task_rows(seeded)[(TASK, -1, "job_b")])

    assert len(ls("--dag", DAG_ID)) == 6
    assert len(ls("--dag", "nodag")) == 0
    assert len(ls("--run", run_id)) == 6
    assert [r["key"] for r in ls("--task", TASK)] == ["job_a", "job_b", "other"]
    assert [(r["task_id"], r["map_index"]) for r in ls("--map-index", "1")] == [(MAPPED, 1)]
    assert [r["key"] for r in ls("--asset", ASSET)] == ["job_w"]
    assert [r["key"] for r in ls("--asset-uri", ASSET_URI)] == ["job_w"]
    assert [r["kind"] for r in ls("--assets")] == ["asset"]
    assert {r["kind"] for r in ls("--tasks")} == {"task"} and len(ls("--tasks")) == 6
    assert [r["key"] for r in ls("--expired")] == ["other"]
    assert [r["key"] for r in ls("--key", "job_*")] == ["job_a", "job_b", "job_w"]
    assert [r["key"] for r in ls("--key", "job_?", "--tasks")] == ["job_a", "job_b"]

    jsonl = ok(env, "ls", "-o", "jsonl").stdout.splitlines()
    assert [json.loads(line) for line in jsonl] == everything
    rows = list(csv.DictReader(io.StringIO(ok(env, "ls", "-o", "csv").stdout)))
    assert [r["key"] for r in rows] == [r["key"] for r in everything]
    assert rows[-1]["map_index"] == "" and rows[0]["map_index"] == "0"
    plain = ok(env, "ls", "--key", "job_a").stdout.splitlines()  # not a terminal: plain
    assert plain == ok(env, "ls", "--key", "job_a", "-o", "plain").stdout.splitlines()
    assert len(plain) == 1 and plain[0].split("\t")[:7] == ["task", DAG_ID, run_id, TASK, "-1", "", "job_a"]
    assert ok(env, "ls", "--dag", "nodag", "-o", "json").json() == []
    assert ok(env, "ls", "--dag", "nodag", "-o", "table").stdout.strip() == "(nothing)"


# --------------------------------------------------------------------------- rm / clear


def test_rm_dry_run_missing_and_missing_ok(listed) -> None:
    seeded, env, run_id = listed
    before_db, before_files = db_snapshot(seeded), files_snapshot(seeded.bucket_dir)
    obj_url = ref_of(task_rows(seeded)[(TASK, -1, "job_a")])
    obj = local_path(obj_url)

    r = ok(env, "rm", "job_a", "job_b", "--dry-run", *task_flags(run_id), "-o", "json")
    assert r.json()["dry_run"] is True and r.json()["objects"] == [obj_url]
    assert [row["key"] for row in r.json()["rows"]] == ["job_a", "job_b"]
    r = ok(env, "clear", "--dry-run", "--asset", ASSET, "-o", "json")
    assert [row["key"] for row in r.json()["rows"]] == ["job_w"]
    ok(env, "clear", "--dry-run", "--all-map-indices", *task_flags(run_id, MAPPED))
    assert db_snapshot(seeded) == before_db and files_snapshot(seeded.bucket_dir) == before_files

    r = statectl(env, "rm", "job_a", "nope", *task_flags(run_id))
    assert r.code == ExitCode.NOT_FOUND and "nope" in r.stderr
    assert db_snapshot(seeded) == before_db and files_snapshot(seeded.bucket_dir) == before_files

    r = ok(env, "rm", "job_a", "nope", "--missing-ok", *task_flags(run_id), "-o", "json")
    assert [row["key"] for row in r.json()["rows"]] == ["job_a"] and r.json()["objects"] == [obj_url]
    assert (TASK, -1, "job_a") not in task_rows(seeded) and not obj.exists()
    assert (TASK, -1, "job_b") in task_rows(seeded)

    asset_obj = seeded.bucket_dir / "assets" / ASSET / "job_w.gz"
    assert asset_obj.is_file()
    ok(env, "rm", "job_w", "--asset", ASSET)
    assert asset_rows(seeded) == {} and not asset_obj.exists()


def test_clear_scopes_and_all_map_indices(listed) -> None:
    seeded, env, run_id = listed
    r = ok(env, "clear", *task_flags(run_id, MAPPED, 1), "-o", "json")
    assert [row["key"] for row in r.json()["rows"]] == ["part"]
    assert sorted(k for k in task_rows(seeded) if k[0] == MAPPED) == [(MAPPED, 0, "part"), (MAPPED, 2, "part")]
    ok(env, "clear", "--all-map-indices", *task_flags(run_id, MAPPED))
    assert sorted(task_rows(seeded)) == [(TASK, -1, "job_a"), (TASK, -1, "job_b"), (TASK, -1, "other")]
    ok(env, "clear", *task_flags(run_id))
    assert task_rows(seeded) == {} and list(seeded.bucket_dir.rglob("*.gz")) == [
        seeded.bucket_dir / "assets" / ASSET / "job_w.gz"
    ]
    ok(env, "clear", "--asset", ASSET)
    assert asset_rows(seeded) == {} and list(seeded.bucket_dir.rglob("*.gz")) == []


def test_conditional_delete_keeps_a_row_rewritten_meanwhile(listed) -> None:
    seeded, env, run_id = listed
    scope = TaskScope(DAG_ID, run_id, TASK)
    store = core_store(env)
    try:
        plan = plan_removal(store, RemovalOptions(scope, ("job_a", "job_b")))
        assert len(plan.objects) == 1
        obj = local_path(str(next(iter(plan.objects.values()))))
        # A worker rewrites job_a (same object path, new content) between plan and execute.
        new_value = task_rows(seeded)[(TASK, -1, "job_a")].replace('"}', '" }')
        with sqlite3.connect(seeded.db_path) as other:
            other.execute("UPDATE task_state_store SET value = ? WHERE \"key\" = 'job_a'", (new_value,))
        report = execute_removal(store, plan)
    finally:
        store.close()
    assert [r.key for r in report.rows_changed] == ["job_a"]
    assert [r.key for r in report.rows_deleted] == ["job_b"]
    assert report.objects_deleted == []
    assert task_rows(seeded)[(TASK, -1, "job_a")] == new_value and obj.is_file()


def test_conditional_delete_exit_code_8_through_the_entry_point(listed, monkeypatch, capsys) -> None:
    """The CLI path: a row rewritten between plan and execute gives exit 8 and a warning."""
    import statectl.ops.write
    from statectl.cli import main

    seeded, env, run_id = listed
    for name in [k for k in os.environ if k.startswith("AIRFLOW")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    real_execute = statectl.ops.write.execute_removal

    def racing_execute(store, plan, progress=None):
        with sqlite3.connect(seeded.db_path) as other:
            other.execute("UPDATE task_state_store SET value = '{\"rewritten\": 1}' WHERE \"key\" = 'job_a'")
        return real_execute(store, plan, progress)

    monkeypatch.setattr(statectl.ops.write, "execute_removal", racing_execute)
    monkeypatch.setattr("sys.argv", ["statectl", "rm", "job_a", "job_b", *task_flags(run_id), "-o", "json"])
    with pytest.raises(SystemExit) as exit_info:
        main.run()
    assert exit_info.value.code == ExitCode.PARTIAL
    out, err = capsys.readouterr()
    assert json.loads(out)["changed_meanwhile"] == ["job_a"]
    assert "rewritten meanwhile" in err
    rows = task_rows(seeded)
    assert rows[(TASK, -1, "job_a")] == '{"rewritten": 1}' and (TASK, -1, "job_b") not in rows


# --------------------------------------------------------------------------- other stores


def test_postgres_and_file_bucket(pg_seeded: AirflowEnv) -> None:
    env = pg_seeded.with_backend(pg_seeded.bucket_url, threshold=10, compression="gzip")
    run_id = run_id_of(pg_seeded)
    assert (
        ok(env, "put", "big", json.dumps({"p": "x" * 30}), *task_flags(run_id), "-o", "json").json()["location"]
        == "object"
    )
    r = ok(env, "put", "small", "1", "--ttl", "6h", *task_flags(run_id, MAPPED, 2), "-o", "json")
    assert r.json()["location"] == "inline"
    ok(env, "put", "wm", json.dumps("w" * 30), "--asset", ASSET)
    assert ok(env, "get", "big", *task_flags(run_id), "-o", "json").json() == {"p": "x" * 30}
    assert ok(env, "get", "small", *task_flags(run_id, MAPPED, 2), "-o", "json").json() == 1
    listed = ok(env, "ls", "-o", "json").json()
    assert _keys(listed) == [
        ("task", MAPPED, 2, None, "small"),
        ("task", TASK, -1, None, "big"),
        ("asset", None, None, ASSET, "wm"),
    ]
    exp = parse_ts(listed[0]["expires_at"])
    assert exp is not None and timedelta(hours=5) < exp - datetime.now(tz=UTC) <= timedelta(hours=6)
    assert pg_seeded.query("SELECT last_updated_by_kind FROM asset_state_store") == [("api",)]
    assert [r["key"] for r in ok(env, "ls", "--key", "b*", "-o", "json").json()] == ["big"]
    before = db_snapshot(pg_seeded), files_snapshot(pg_seeded.bucket_dir)
    ok(env, "clear", "--dry-run", *task_flags(run_id))
    assert (db_snapshot(pg_seeded), files_snapshot(pg_seeded.bucket_dir)) == before
    ok(env, "rm", "big", *task_flags(run_id))
    ok(env, "clear", "--asset", ASSET)
    ok(env, "clear", "--all-map-indices", *task_flags(run_id, MAPPED))
    assert ok(env, "ls", "-o", "json").json() == []
    assert files_snapshot(pg_seeded.bucket_dir) == {}


def test_sqlite_and_s3_through_conn_id(seeded: AirflowEnv, s3_bucket: S3Bucket) -> None:
    env = {**seeded.with_backend(s3_bucket.url("state"), threshold=10, compression="gzip"), **s3_bucket.conn_env}
    run_id = run_id_of(seeded)
    r = ok(env, "put", "big", json.dumps({"p": "s" * 30}), *task_flags(run_id), "-o", "json")
    quoted_run = run_id.replace(":", "%3A").replace("+", "%2B")
    assert r.json()["object"] == s3_bucket.url(f"state/{DAG_ID}/{quoted_run}/{TASK}/-1/big.gz")
    key = f"state/{DAG_ID}/{quoted_run}/{TASK}/-1/big.gz"
    assert s3_bucket.keys() == [key]
    body = s3_bucket.client().get_object(Bucket=s3_bucket.bucket, Key=key)["Body"].read()
    assert json.loads(gzip.decompress(body)) == {"p": "s" * 30}
    assert ok(env, "get", "big", *task_flags(run_id), "-o", "json").json() == {"p": "s" * 30}
    ok(env, "rm", "big", *task_flags(run_id))
    assert s3_bucket.keys() == [] and task_rows(seeded) == {}


def test_output_is_a_pipe_default_plain(seeded: AirflowEnv, tmp_path: Path) -> None:
    run_id = run_id_of(seeded)
    r = ok(seeded.env, "put", "k", '"text"', *task_flags(run_id))
    assert "location\tplain" in r.stdout.splitlines()
    assert ok(seeded.env, "get", "k", *task_flags(run_id)).stdout == "text\n"
