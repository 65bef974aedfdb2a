"""Smoke tests for the test bed itself: each real component works as the other tests assume."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

from tests.infra import (
    PG_PASSWORD,
    AirflowEnv,
    GcsBucket,
    PostgresServer,
    S3Bucket,
    run_dag,
    run_python,
)

# Sets one task key above and one below the threshold (10 bytes) and one asset key.
SMOKE_DAG = """
from datetime import datetime

from airflow.sdk import Asset, dag, task

WATCHED = Asset(name="smoke_asset", uri="file:///tmp/statectl-smoke-asset")


@dag(schedule=None, start_date=datetime(2024, 1, 1), catchup=False)
def statectl_smoke():
    @task(outlets=[WATCHED])
    def writer(**context):
        context["task_state_store"].set("job/id:1 x%", {"payload": "x" * 50})
        context["task_state_store"].set("small", 1)
        context["asset_state_store"][WATCHED].set("watermark", "y" * 40)

    writer()


d = statectl_smoke()

if __name__ == "__main__":
    d.test()
"""


def test_sqlite_template_has_state_tables(airflow_home: AirflowEnv) -> None:
    assert airflow_home.db_path is not None and airflow_home.db_path.exists()
    assert airflow_home.sql_alchemy_conn == f"sqlite:///{airflow_home.db_path}"
    assert airflow_home.query("SELECT count(*) FROM task_state_store") == [(0,)]
    assert airflow_home.query("SELECT count(*) FROM asset_state_store") == [(0,)]
    assert not any(k.startswith("AIRFLOW__WORKERS") for k in airflow_home.env)
    assert not (airflow_home.home / "airflow.cfg").exists()


def test_postgres_template_clone(pg_airflow_home: AirflowEnv, postgres_server: PostgresServer):
    import psycopg

    assert PG_PASSWORD in pg_airflow_home.sql_alchemy_conn
    assert pg_airflow_home.db_name is not None
    with psycopg.connect(postgres_server.dsn(pg_airflow_home.db_name)) as conn:
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()}
    assert {"task_state_store", "asset_state_store", "dag_run", "asset"} <= tables


def test_s3_bucket_via_airflow_object_storage(s3_bucket: S3Bucket, airflow_home: AirflowEnv):
    # Through Airflow's own ObjectStoragePath -> amazon provider -> s3fs, in a clean process.
    code = (
        "import sys\n"
        "from airflow.sdk import ObjectStoragePath\n"
        "p = ObjectStoragePath(sys.argv[1])\n"
        "p.parent.mkdir(parents=True, exist_ok=True)\n"
        "p.write_text('hello')\n"
        "assert p.read_text() == 'hello', p.read_text()\n"
        "print('OK')\n"
    )
    env = {**airflow_home.env, **s3_bucket.conn_env}
    proc = run_python(env, code, args=[s3_bucket.url("dir/x")])
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout + proc.stderr
    assert s3_bucket.keys() == ["dir/x"]
    body = s3_bucket.client().get_object(Bucket=s3_bucket.bucket, Key="dir/x")["Body"].read()
    assert body == b"hello"


def test_gcs_bucket_with_gcsfs(gcs_bucket: GcsBucket) -> None:
    code = (
        "import sys, gcsfs\n"
        "fs = gcsfs.GCSFileSystem(endpoint_url=sys.argv[1], token='anon', project='test')\n"
        "b = sys.argv[2]\n"
        "fs.pipe(f'{b}/a/obj.json', b'{}')\n"
        "assert fs.cat(f'{b}/a/obj.json') == b'{}'\n"
        "assert fs.ls(f'{b}/a', detail=False) == [f'{b}/a/obj.json'], fs.ls(f'{b}/a')\n"
        "fs.rm(f'{b}/a/obj.json')\n"
        "fs.invalidate_cache()\n"
        "assert not fs.exists(f'{b}/a/obj.json')\n"
        "print('OK')\n"
    )
    env = {**os.environ, **gcs_bucket.env}
    proc = run_python(env, code, args=[gcs_bucket.endpoint_url, gcs_bucket.bucket], timeout=60)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout + proc.stderr
    # And in-process, through the helper.
    fs = gcs_bucket.fs()
    fs.pipe(f"{gcs_bucket.bucket}/k", b"v")
    assert fs.cat(f"{gcs_bucket.bucket}/k") == b"v"


def _check_smoke_rows(env: AirflowEnv) -> None:
    rows = env.query("SELECT task_id, key, value FROM task_state_store ORDER BY key")
    assert [(r[0], r[1]) for r in rows] == [("writer", "job/id:1 x%"), ("writer", "small")]
    big_ref = json.loads(rows[0][2])["__airflow_state_ref__"]
    assert json.loads(rows[1][2]) == {"__airflow_state_ref__": "1"}  # under threshold: inline
    assert big_ref.startswith(env.bucket_url + "/statectl_smoke/") and big_ref.endswith(
        "/writer/-1/job%2Fid%3A1%20x%25.gz"
    )
    big_obj = Path(big_ref.removeprefix("file://"))
    assert json.loads(gzip.decompress(big_obj.read_bytes())) == {"payload": "x" * 50}

    arows = env.query("SELECT a.name, s.key, s.value FROM asset_state_store s JOIN asset a ON a.id = s.asset_id")
    assert len(arows) == 1 and arows[0][:2] == ("smoke_asset", "watermark")
    assert json.loads(arows[0][2]) == {"__airflow_state_ref__": f"{env.bucket_url}/assets/smoke_asset/watermark.gz"}
    assert (env.bucket_dir / "assets" / "smoke_asset" / "watermark.gz").is_file()


@pytest.mark.slow
def test_dag_run_sqlite_object_storage(airflow_home: AirflowEnv, tmp_path: Path) -> None:
    import sqlite3

    env = airflow_home.with_backend(airflow_home.bucket_url, threshold=10, compression="gzip")
    run_dag(env, SMOKE_DAG, tmp_path)
    _check_smoke_rows(airflow_home)
    # Plain sqlite3 sees the same rows (what statectl itself may do).
    assert airflow_home.db_path is not None
    with sqlite3.connect(airflow_home.db_path) as conn:
        assert conn.execute("SELECT count(*) FROM task_state_store").fetchone() == (2,)
        assert conn.execute("SELECT state FROM dag_run").fetchall() == [("success",)]


@pytest.mark.slow
def test_dag_run_postgres_object_storage(
    pg_airflow_home: AirflowEnv, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    import psycopg2

    env = pg_airflow_home.with_backend(pg_airflow_home.bucket_url, threshold=10, compression="gzip")
    run_dag(env, SMOKE_DAG, tmp_path)
    _check_smoke_rows(pg_airflow_home)
    assert pg_airflow_home.db_name is not None
    dsn = postgres_server.dsn(pg_airflow_home.db_name)
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM task_state_store")
        assert cur.fetchone() == (2,)
        cur.execute("SELECT state FROM dag_run")
        assert cur.fetchall() == [("success",)]
