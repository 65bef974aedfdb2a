"""`statectl where` on state written by real DAG runs through the real provider (SQLite + file://),
and on S3 (moto, through an Airflow conn_id).

One session seed: a DAG run with the object storage backend (gzip, threshold 30) writes an inline
and an object value for a task and for an asset (name != uri), and a run without a backend writes a
plain value. Each test gets its own copy of the DB and the bucket (refs rewritten to the copy).
"""

from __future__ import annotations

import gzip
import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from statectl.core.scopes import TaskScope
from statectl.errors import ExitCode
from tests.cli_support import DAG_ID as OPS_DAG
from tests.cli_support import TASK as OPS_TASK
from tests.cli_support import core_put, db_snapshot, files_snapshot, local_path, ref_of, statectl
from tests.infra import AirflowEnv, S3Bucket, free_port, json_literal, run_dag, sqlite_env

pytestmark = pytest.mark.slow  # the seed runs two DAGs (about 20 s, once per session)

pytest_plugins = ["tests.cli_support"]

DAG_ID = "statectl_where"
PLAIN_DAG_ID = "statectl_where_plain"
TASK = "writer"
ASSET_NAME = "where_asset"
ASSET_URI = "file:///tmp/statectl-where/asset"
THRESHOLD = 30
SMALL = {"n": 1}  # 8 bytes of JSON: inline
BIG = {"payload": "x" * 80}  # over the threshold: an object
TASK_VALUES = {"small": SMALL, "big": BIG}
ASSET_VALUES = {"a_small": 7, "a_big": ["y" * 60]}

WRITER = f"""
import json
from datetime import datetime

from airflow.sdk import Asset, dag, task

ASSET = Asset(name={ASSET_NAME!r}, uri={ASSET_URI!r})
TASK_VALUES = {json_literal(TASK_VALUES)}
ASSET_VALUES = {json_literal(ASSET_VALUES)}


@dag(dag_id={DAG_ID!r}, schedule=None, start_date=datetime(2024, 1, 1), catchup=False)
def where_dag():
    @task(outlets=[ASSET])
    def {TASK}(**context):
        for key, value in TASK_VALUES.items():
            context["task_state_store"].set(key, value)
        for key, value in ASSET_VALUES.items():
            context["asset_state_store"][ASSET].set(key, value)

    {TASK}()


d = where_dag()

if __name__ == "__main__":
    d.test()
"""

PLAIN_WRITER = f"""
from datetime import datetime

from airflow.sdk import dag, task


@dag(dag_id={PLAIN_DAG_ID!r}, schedule=None, start_date=datetime(2024, 1, 1), catchup=False)
def plain_dag():
    @task
    def {TASK}(**context):
        context["task_state_store"].set("plain", {{"p": [1, 2]}})

    {TASK}()


d = plain_dag()

if __name__ == "__main__":
    d.test()
"""


@dataclass(frozen=True)
class WhereSeed:
    home: Path
    bucket_url: str


@pytest.fixture(scope="session")
def where_seed(airflow_template: Path, tmp_path_factory: pytest.TempPathFactory) -> WhereSeed:
    env = sqlite_env(airflow_template / "airflow.db", tmp_path_factory.mktemp("where_seed"))
    run_dag(env.with_backend(env.bucket_url, threshold=THRESHOLD, compression="gzip"), WRITER, env.home)
    run_dag(env.env, PLAIN_WRITER, env.home)
    return WhereSeed(env.home.parent, env.bucket_url)


@pytest.fixture
def seeded_where(where_seed: WhereSeed, tmp_path: Path) -> AirflowEnv:
    """A copy of the seeded DB and bucket; refs point into the copy."""
    env = sqlite_env(where_seed.home / "airflow_home" / "airflow.db", tmp_path)
    shutil.rmtree(env.bucket_dir)
    shutil.copytree(where_seed.home / "bucket", env.bucket_dir)
    for table in ("task_state_store", "asset_state_store"):
        env.query(
            f"UPDATE {table} SET value = REPLACE(value, :old, :new)", old=where_seed.bucket_url, new=env.bucket_url
        )
    return env


def backend_env(env: AirflowEnv, compression: str | None = "gzip", path: str | None = None) -> dict[str, str]:
    return env.with_backend(path or env.bucket_url, threshold=THRESHOLD, compression=compression)


def run_id(env: AirflowEnv, dag_id: str = DAG_ID) -> str:
    return env.query("SELECT run_id FROM dag_run WHERE dag_id = :d", d=dag_id)[0][0]


def flags(env: AirflowEnv, dag_id: str = DAG_ID) -> list[str]:
    return ["--dag", dag_id, "--run", run_id(env, dag_id), "--task", TASK]


def where_json(env: dict[str, str], key: str, *scope: str) -> dict:
    r = statectl(env, "where", key, *scope, "-o", "json")
    assert r.code == 0, str(r)
    assert "Traceback" not in r.stderr
    return r.json()


def row_value(env: AirflowEnv, key: str) -> str:
    return env.query('SELECT value FROM task_state_store WHERE "key" = :k', k=key)[0][0]


def test_object_inline_and_plain_rows_written_by_workers(seeded_where: AirflowEnv) -> None:
    env = backend_env(seeded_where)
    big = where_json(env, "big", *flags(seeded_where))
    url = ref_of(row_value(seeded_where, "big"))
    assert url.endswith(f"/{DAG_ID}/{run_id(seeded_where).replace(':', '%3A').replace('+', '%2B')}/{TASK}/-1/big.gz")
    on_disk = local_path(url)
    assert json.loads(gzip.decompress(on_disk.read_bytes())) == BIG
    assert big["object"]["url"] == url
    assert big["object"]["exists"] is True
    assert big["object"]["size"] == on_disk.stat().st_size
    assert big["object"]["compression"] == "gzip"
    assert big["object"]["last_modified"] is not None
    assert big["row"]["location"] == "object"
    assert big["row"]["ref"] == url
    assert big["row"]["stored_bytes"] == len(row_value(seeded_where, "big").encode())
    assert big["row"]["expires_at"] is not None and big["row"]["updated_at"] is not None
    assert big["row_object"] is None and big["leftovers"] == []
    assert any("points at the object the provider computes" in n for n in big["notes"]), big["notes"]

    small = where_json(env, "small", *flags(seeded_where))
    assert small["row"]["location"] == "inline"
    assert small["row"]["text"] == row_value(seeded_where, "small")
    assert small["object"]["exists"] is False and small["object"]["url"].endswith("/small.gz")
    assert small["notes"] == []

    plain = where_json(env, "plain", *flags(seeded_where, PLAIN_DAG_ID))
    assert plain["row"]["location"] == "plain"
    assert json.loads(plain["row"]["text"]) == {"p": [1, 2]}
    assert any("plain value" in n for n in plain["notes"]), plain["notes"]
    # With no worker backend configured, a plain row is what workers read; the object ref is not.
    no_backend_plain = where_json(seeded_where.env, "plain", *flags(seeded_where, PLAIN_DAG_ID))
    assert no_backend_plain["notes"] == [
        "no [common.io] state_store_objectstorage_path: workers cannot offload values to objects",
        "[workers] state_store_backend is empty: workers store values in the row and read no objects",
    ]
    no_backend = where_json(seeded_where.env, "big", *flags(seeded_where))
    assert no_backend["object"] is None
    assert any("workers have no backend: they read the ref wrapper" in n for n in no_backend["notes"])

    # Assets: resolved by name (the folder workers use), id/name/uri reported.
    asset = where_json(env, "a_big", "--asset", ASSET_NAME)
    assert asset["asset"]["name"] == ASSET_NAME and asset["asset"]["uri"] == ASSET_URI
    assert asset["object"]["url"] == f"{seeded_where.bucket_url}/assets/{ASSET_NAME}/a_big.gz"
    assert asset["object"]["exists"] is True and asset["row"]["location"] == "object"
    assert asset["row"]["expires_at"] is None
    by_uri = where_json(env, "a_small", "--asset-uri", ASSET_URI)
    assert by_uri["row"]["location"] == "inline"
    assert any("addressed by uri" in n for n in by_uri["notes"])

    # Table output for people.
    table = statectl(env, "where", "big", *flags(seeded_where), "-o", "table")
    assert table.code == 0 and url in table.stdout and "gzip" in table.stdout


def test_object_without_row_then_nothing(seeded_where: AirflowEnv) -> None:
    env = backend_env(seeded_where)
    url = ref_of(row_value(seeded_where, "big"))
    seeded_where.query("DELETE FROM task_state_store WHERE \"key\" = 'big'")
    report = where_json(env, "big", *flags(seeded_where))
    assert report["row"] is None and report["object"]["exists"] is True
    assert any("orphan" in n and "statectl prune" in n for n in report["notes"]), report["notes"]

    local_path(url).unlink()
    before = db_snapshot(seeded_where), files_snapshot(seeded_where.bucket_dir)
    r = statectl(env, "where", "big", *flags(seeded_where))
    assert r.code == ExitCode.NOT_FOUND, str(r)
    assert r.stderr.startswith("statectl: error: no row and no object for key 'big'") and r.stderr.count("\n") == 1
    assert r.stdout == ""
    assert (db_snapshot(seeded_where), files_snapshot(seeded_where.bucket_dir)) == before


def test_compression_changed_after_writing(seeded_where: AirflowEnv) -> None:
    gz_url = ref_of(row_value(seeded_where, "big"))
    bz2_env = backend_env(seeded_where, compression="bz2")
    report = where_json(bz2_env, "big", *flags(seeded_where))
    assert report["object"]["url"] == gz_url[: -len(".gz")] + ".bz2"
    assert report["object"]["exists"] is False
    assert report["row_object"]["url"] == gz_url and report["row_object"]["exists"] is True
    assert report["row_object"]["compression"] == "gzip"
    assert any("written with compression gzip, configured now bz2" in n for n in report["notes"]), report["notes"]
    assert report["notes"][0].startswith("the row points at"), "the likely cause comes first"

    # A worker with the new codec rewrites the key: its object goes to .bz2, the .gz stays behind.
    core_put(bz2_env, TaskScope(DAG_ID, run_id(seeded_where), TASK), "other", BIG)  # unrelated key, same codec
    shutil.copyfile(local_path(gz_url), local_path(gz_url).with_name("keep.gz"))
    put = core_put(bz2_env, TaskScope(DAG_ID, run_id(seeded_where), TASK), "big", BIG)
    assert str(put.url).endswith("big.bz2")
    shutil.copyfile(local_path(gz_url).with_name("keep.gz"), local_path(gz_url))  # as a worker leaves it
    report = where_json(bz2_env, "big", *flags(seeded_where))
    assert report["object"]["exists"] is True and report["row"]["ref"] == report["object"]["url"]
    assert [o["url"] for o in report["leftovers"]] == [gz_url]
    assert any("other compression suffixes" in n for n in report["notes"])


def test_ref_outside_the_base_path(seeded_where: AirflowEnv, tmp_path: Path) -> None:
    moved = (tmp_path / "elsewhere").resolve()
    moved.mkdir()
    env = backend_env(seeded_where, path=moved.as_uri())
    report = where_json(env, "big", *flags(seeded_where))
    assert report["object"]["url"].startswith(moved.as_uri()) and report["object"]["exists"] is False
    assert report["row_object"] is None  # never read outside the base
    assert any("outside the configured base path" in n for n in report["notes"]), report["notes"]


def test_bad_input(seeded_where: AirflowEnv) -> None:
    env = backend_env(seeded_where)
    before = db_snapshot(seeded_where), files_snapshot(seeded_where.bucket_dir)
    for args, code in (
        (["big"], ExitCode.USAGE),
        (["big", "--dag", DAG_ID], ExitCode.USAGE),
        (["..", *flags(seeded_where)], ExitCode.USAGE),
        (["big", "--asset", "no_such_asset"], ExitCode.NOT_FOUND),
        (["big", "--dag", DAG_ID, "--run", "no_such_run", "--task", TASK], ExitCode.NOT_FOUND),
        (["absent", *flags(seeded_where)], ExitCode.NOT_FOUND),
    ):
        r = statectl(env, "where", *args)
        assert r.code == code, str(r)
        assert r.stderr.startswith("statectl: error: ") and r.stderr.count("\n") == 1, str(r)
        assert "Traceback" not in r.stderr
        if "no_such_run" in args:
            assert "no dag run 'no_such_run'" in r.stderr
    assert (db_snapshot(seeded_where), files_snapshot(seeded_where.bucket_dir)) == before


def test_where_on_s3_through_a_conn_id(seeded: AirflowEnv, s3_bucket: S3Bucket) -> None:
    env = {**seeded.with_backend(s3_bucket.url("state"), threshold=0, compression="gzip"), **s3_bucket.conn_env}
    scope = ["--dag", OPS_DAG, "--run", seeded.query("SELECT run_id FROM dag_run")[0][0], "--task", OPS_TASK]
    put = statectl(env, "put", "k", '{"v": 1}', *scope, "-o", "json")
    assert put.code == 0, str(put)
    url = put.json()["object"]
    report = where_json(env, "k", *scope)
    key = url.split(f"{s3_bucket.bucket}/", 1)[1]
    head = s3_bucket.client().head_object(Bucket=s3_bucket.bucket, Key=key)
    assert report["object"]["url"] == url and url.startswith(f"s3://{s3_bucket.conn_id}@")
    assert report["object"]["exists"] is True and report["object"]["size"] == head["ContentLength"]
    assert report["object"]["last_modified"] is not None
    assert any("points at the object the provider computes" in n for n in report["notes"])


def test_unreachable_bucket(seeded_where: AirflowEnv, s3_bucket: S3Bucket) -> None:
    """The row is still shown when the store does not answer; with no row, exit UNREACHABLE."""
    closed = f"http://127.0.0.1:{free_port()}"
    conn = json.dumps({"conn_type": "aws", "login": "where", "password": "where-pw", "extra": {"endpoint_url": closed}})
    env = {**seeded_where.with_backend(s3_bucket.url("state")), "AIRFLOW_CONN_STATECTL_S3": conn}
    with ThreadPoolExecutor(2) as pool:  # botocore and s3fs retry for about half a minute each
        shown, absent = pool.map(
            lambda key: statectl(env, "where", key, *flags(seeded_where), "-o", "json"), ["small", "absent"]
        )
    assert shown.code == 0, str(shown)
    assert shown.json()["row"]["location"] == "inline" and shown.json()["object"]["error"]
    assert any("object storage not reachable" in n for n in shown.json()["notes"])
    assert absent.code == ExitCode.UNREACHABLE, str(absent)
    assert absent.stderr.startswith("statectl: error: object storage s3://") and absent.stderr.count("\n") == 1
