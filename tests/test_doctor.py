"""`statectl doctor` on real stores: healthy set-ups (SQLite + file://, PostgreSQL + moto S3 through a
conn_id) and broken ones, each with the expected finding, its fix, the exit code and no secret printed.

Set-ups that need Airflow's own connection lookup or the real entry point run `statectl` in a
subprocess; configuration mismatches call the core (run_doctor) in-process, which is quicker.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from statectl.core.config import Config
from statectl.errors import ExitCode
from statectl.ops.doctor import CHECKS, Status, run_doctor
from tests.cli_support import Result, files_snapshot, statectl
from tests.infra import AWS_KEY, AWS_REGION, PG_PASSWORD, AirflowEnv, S3Bucket, dag_run_states, free_port, run_dag

ALL_CHECKS = {"config", *(name for name, _, _ in CHECKS)}
CONN_SECRET = "conn-S3cret-5d1e08"  # the connection's password: must never be printed
WRONG_PG_PASSWORD = "wrong-Pa55-c0ffee"


def doctor(env: dict[str, str], *extra: str) -> tuple[Result, dict[str, dict[str, str]]]:
    r = statectl(env, "doctor", "-o", "json", *extra)
    assert "Traceback" not in r.stderr, str(r)
    report = json.loads(r.stdout)
    findings = {f["check"]: f for f in report["findings"]}
    assert len(findings) == len(report["findings"]), "one finding per check"
    for finding in report["findings"]:
        assert finding["status"] in ("ok", "warn", "fail")
        assert finding["status"] == "ok" or finding["fix"], finding
        assert "\n" not in finding["fix"]
    return r, findings


def statuses(findings: dict[str, dict[str, str]]) -> dict[str, str]:
    return {name: f["status"] for name, f in findings.items()}


def s3_env(bucket: S3Bucket, endpoint: str | None = None, conn_id: str = "doctor_s3") -> dict[str, str]:
    conn = {
        "conn_type": "aws",
        "login": AWS_KEY,
        "password": CONN_SECRET,  # moto accepts any secret key
        "extra": {"endpoint_url": endpoint or bucket.endpoint_url, "region_name": AWS_REGION},
    }
    return {f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(conn)}


def assert_no_secret(r: Result, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in r.stdout and secret not in r.stderr, f"{secret!r} printed\n{r}"


# --------------------------------------------------------------------------- healthy


def test_healthy_sqlite_and_file_bucket(airflow_home: AirflowEnv) -> None:
    env = airflow_home.with_backend(airflow_home.bucket_url, threshold=100, compression="gzip")
    r, findings = doctor(env)
    assert r.code == 0, str(r)
    assert set(findings) == ALL_CHECKS
    assert set(statuses(findings).values()) == {"ok"}, findings
    assert "probe" in findings["bucket"]["detail"] and "gzip" in findings["bucket"]["detail"]
    assert files_snapshot(airflow_home.bucket_dir) == {}, "the probe object is deleted"
    report = json.loads(r.stdout)
    assert report["status"] == "ok"
    assert report["versions"]["apache-airflow-providers-common-io"]
    sources = {s["setting"]: s["source"] for s in report["settings"]}
    compression = "[common.io] state_store_objectstorage_compression"
    assert sources[compression] == "env AIRFLOW__COMMON_IO__STATE_STORE_OBJECTSTORAGE_COMPRESSION"
    table = statectl(env, "doctor", "-o", "table")
    assert table.code == 0 and "findings" in table.stdout and "configuration" in table.stdout


def test_healthy_postgres_and_s3_through_conn_id(pg_airflow_home: AirflowEnv, s3_bucket: S3Bucket) -> None:
    env = {
        **pg_airflow_home.with_backend("s3://doctor_s3@" + s3_bucket.bucket + "/state", compression="gzip"),
        **s3_env(s3_bucket),
    }
    r, findings = doctor(env)
    assert r.code == 0, str(r)
    assert set(statuses(findings).values()) == {"ok"}, findings
    assert "'doctor_s3' found" in findings["connection"]["detail"]
    assert "honours" in findings["create_if_absent"]["detail"]
    assert s3_bucket.keys() == [], "the probe object is deleted"
    assert_no_secret(r, PG_PASSWORD, CONN_SECRET)
    masked = {s["setting"]: s["value"] for s in r.json()["settings"]}["[database] sql_alchemy_conn"]
    assert ":***@" in masked


# --------------------------------------------------------------------------- broken stores


def test_wrong_db_password_still_checks_the_bucket(pg_airflow_home: AirflowEnv) -> None:
    wrong = pg_airflow_home.sql_alchemy_conn.replace(PG_PASSWORD, WRONG_PG_PASSWORD)
    env = {
        **pg_airflow_home.with_backend(pg_airflow_home.bucket_url),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": wrong,
    }
    r, findings = doctor(env)
    assert r.code == ExitCode.UNHEALTHY, str(r)
    assert findings["metastore"]["status"] == "fail"
    assert "password authentication failed" in findings["metastore"]["detail"]
    assert "sql_alchemy_conn" in findings["metastore"]["fix"]
    assert findings["bucket"]["status"] == "ok", "a DB that is down does not stop the other checks"
    assert_no_secret(r, WRONG_PG_PASSWORD, PG_PASSWORD)
    # Table output too.
    assert_no_secret(statectl(env, "doctor", "-o", "table"), WRONG_PG_PASSWORD, PG_PASSWORD)


def test_db_without_state_tables(airflow_home: AirflowEnv, tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()  # an SQLite file with no tables at all
    env = {**airflow_home.env, "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{empty}"}
    r, findings = doctor(env)
    assert r.code == ExitCode.UNHEALTHY
    assert findings["metastore"]["status"] == "fail"
    assert "no state store tables" in findings["metastore"]["detail"]
    assert "airflow db migrate" in findings["metastore"]["fix"]

    missing = tmp_path / "no" / "such.db"
    env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{missing}"
    r, findings = doctor(env)
    assert r.code == ExitCode.UNHEALTHY and findings["metastore"]["status"] == "fail"
    assert "cannot open the SQLite metastore" in findings["metastore"]["detail"]
    assert not missing.exists(), "doctor never creates a metastore"


@pytest.mark.slow  # botocore and s3fs retry a refused connection for about half a minute
def test_unreachable_s3_endpoint(airflow_home: AirflowEnv, s3_bucket: S3Bucket) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    env = {**airflow_home.with_backend(f"s3://doctor_s3@{s3_bucket.bucket}/state"), **s3_env(s3_bucket, closed)}
    r, findings = doctor(env)
    assert r.code == ExitCode.UNHEALTHY, str(r)
    assert findings["connection"]["status"] == "ok"
    assert findings["bucket"]["status"] == "fail"
    assert "Could not connect" in findings["bucket"]["detail"] and closed in findings["bucket"]["detail"]
    assert "endpoint" in findings["bucket"]["fix"]
    assert "create_if_absent" not in findings
    assert findings["metastore"]["status"] == "ok"
    assert_no_secret(r, CONN_SECRET)


def test_missing_connection(airflow_home: AirflowEnv, s3_bucket: S3Bucket) -> None:
    env = airflow_home.with_backend(f"s3://no_such_conn@{s3_bucket.bucket}/state")
    r, findings = doctor(env)
    assert r.code == ExitCode.UNHEALTHY, str(r)
    assert findings["connection"]["status"] == "fail"
    assert "'no_such_conn'" in findings["connection"]["detail"] and "not found" in findings["connection"]["detail"]
    assert "only on the workers" in findings["connection"]["detail"]
    assert "AIRFLOW_CONN_NO_SUCH_CONN" in findings["connection"]["fix"]
    assert findings["bucket"]["status"] == "warn" and "not probed" in findings["bucket"]["detail"]


def test_probe_fails_on_an_unwritable_base(airflow_home: AirflowEnv) -> None:
    # Running as root, a read-only directory would not stop the probe: a regular file as base does.
    blocker = airflow_home.bucket_dir / "not-a-dir"
    blocker.write_text("x")
    env = airflow_home.with_backend(blocker.resolve().as_uri())
    r, findings = doctor(env)
    assert r.code == ExitCode.UNHEALTHY, str(r)
    assert findings["bucket"]["status"] == "fail" and "probe" in findings["bucket"]["detail"]
    assert "permissions" in findings["bucket"]["fix"]
    assert findings["metastore"]["status"] == "ok"
    assert blocker.read_text() == "x"


@pytest.mark.slow  # three doctor runs, each importing Airflow
def test_exit_codes_of_warnings_and_failures(airflow_home: AirflowEnv) -> None:
    env = airflow_home.with_backend(airflow_home.bucket_url, threshold=70000)  # above the 65535 default
    r, findings = doctor(env)
    assert r.code == 0, "warnings alone do not fail"
    assert findings["threshold"]["status"] == "warn"
    env = airflow_home.with_backend(airflow_home.bucket_url, compression="snappy")
    r, findings = doctor(env)
    assert r.code == ExitCode.UNHEALTHY
    assert findings["compression"]["status"] == "fail"
    assert findings["bucket"]["status"] == "ok", "the probe still runs, uncompressed"
    # Plain output: one line per finding, tab-separated.
    plain = statectl(env, "doctor", "-o", "plain")
    assert plain.code == ExitCode.UNHEALTHY
    assert any(line.startswith("fail\tcompression\t") for line in plain.stdout.splitlines())


# --------------------------------------------------------------------------- configuration mismatches (in-process)


def findings_for(env: dict[str, str]) -> dict[str, tuple[Status, str, str]]:
    report = run_doctor(lambda: Config(environ=env))
    return {f.check: (f.status, f.detail, f.fix) for f in report.findings}


BACKEND = "AIRFLOW__WORKERS__STATE_STORE_BACKEND"
PATH = "AIRFLOW__COMMON_IO__STATE_STORE_OBJECTSTORAGE_PATH"


@pytest.mark.parametrize(
    ("settings", "check", "status", "in_detail", "in_fix"),
    [
        ({"AIRFLOW__COMMON_IO__STATE_STORE_OBJECTSTORAGE_COMPRESSION": "snappy"}, "compression", Status.FAIL,
         "no file extension", "gzip"),
        ({"AIRFLOW__COMMON_IO__STATE_STORE_OBJECTSTORAGE_COMPRESSION": "zstd"}, "compression", Status.FAIL,
         "'zstandard' library", "pip install zstandard"),
        ({"AIRFLOW__COMMON_IO__STATE_STORE_OBJECTSTORAGE_COMPRESSION": "brotli9"}, "compression", Status.FAIL,
         "not usable", "gzip"),
        ({BACKEND: "airflow.providers.nope.Backend"}, "worker_backend", Status.FAIL,
         "does not import", "StateStoreObjectStorageBackend"),
        ({BACKEND: "statectl.errors.NoSuchClass"}, "worker_backend", Status.FAIL, "AttributeError", "class path"),
        ({BACKEND: "statectl.errors.StatectlError"}, "worker_backend", Status.WARN, "only as the object storage", ""),
        ({"AIRFLOW__COMMON_IO__STATE_STORE_OBJECTSTORAGE_THRESHOLD": "70000"}, "threshold", Status.WARN,
         "stay inline", "32767"),
        ({"AIRFLOW__COMMON_IO__STATE_STORE_OBJECTSTORAGE_THRESHOLD": "-1"}, "threshold", Status.FAIL, ">= 0", ""),
        ({PATH: ""}, "base_path", Status.FAIL, "relative to their working directory", PATH),
        ({PATH: "/data/state"}, "base_path", Status.FAIL, "no URL scheme", "file:///"),
        ({BACKEND: ""}, "base_path", Status.WARN, "do not offload", "state_store_backend"),
        ({"AIRFLOW__STATE_STORE__BACKEND": "my.custom.Backend"}, "server_backend", Status.FAIL,
         "does not import", "unset"),
        ({"AIRFLOW__STATE_STORE__BACKEND": "statectl.errors.StatectlError"}, "server_backend", Status.WARN,
         "state-store clean", "unset"),
        ({"AIRFLOW__STATE_STORE__DEFAULT_RETENTION_DAYS": "0"}, "retention", Status.WARN, "prune", "retention"),
        ({"AIRFLOW__STATE_STORE__DEFAULT_RETENTION_DAYS": "-2"}, "retention", Status.FAIL, ">= 0", "retention"),
        ({"AIRFLOW__STATE_STORE__MAX_VALUE_STORAGE_BYTES": "lots"}, "threshold", Status.FAIL, "integer", ""),
    ],
)  # fmt: skip
def test_configuration_mismatch(
    airflow_home: AirflowEnv, settings: dict[str, str], check: str, status: Status, in_detail: str, in_fix: str
) -> None:
    env = {**airflow_home.with_backend(airflow_home.bucket_url), **settings}
    found = findings_for(env)
    got_status, detail, fix = found[check]
    assert got_status is status, found[check]
    assert in_detail in detail and in_fix in fix, found[check]
    # Everything else is still checked and, here, healthy.
    others = {name: s for name, (s, _, _) in found.items() if name != check}
    assert others["metastore"] is Status.OK
    assert set(found) >= ALL_CHECKS - {"create_if_absent"}


def test_server_backend_subclassing_the_metastore_one(
    airflow_home: AirflowEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `airflow state-store clean` checks isinstance(backend, MetastoreBackend): a subclass is cleaned.
    (tmp_path / "doctor_state_backend.py").write_text(
        "from airflow.state.metastore import MetastoreBackend\n\n\nclass Mine(MetastoreBackend):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    env = {**airflow_home.env, "AIRFLOW__STATE_STORE__BACKEND": "doctor_state_backend.Mine"}
    status, detail, _ = findings_for(env)["server_backend"]
    assert status is Status.OK and "a MetastoreBackend" in detail


def test_unreadable_configuration_is_one_finding(airflow_home: AirflowEnv) -> None:
    (airflow_home.home / "airflow.cfg").write_text("[database\nbroken")
    report = run_doctor(lambda: Config(environ=airflow_home.env))
    assert [(f.check, f.status) for f in report.findings] == [("config", Status.FAIL)]
    assert report.failed and report.versions["apache-airflow-core"]


# --------------------------------------------------------------------------- doctor's claims, on real workers

CLAIM_DAG = """
from datetime import datetime

from airflow.sdk import dag, task


@dag(dag_id={dag_id!r}, schedule=None, start_date=datetime(2024, 1, 1), catchup=False)
def claim():
    @task
    def w(**context):
        store = context["task_state_store"]
        store.set("k", {{"payload": "x" * 200}})
        assert store.get("k") == {{"payload": "x" * 200}}

    w()


d = claim()

if __name__ == "__main__":
    d.test()
"""


@pytest.mark.slow  # two real DAG runs
def test_what_doctor_says_is_what_workers_do(airflow_home: AirflowEnv, tmp_path: Path) -> None:
    # A worker backend without a base path: the write "works" (an object under the worker's cwd and a
    # ref without a scheme), reading it back fails; `where` says why.
    env = airflow_home.with_backend("")
    assert findings_for(env)["base_path"][0] is Status.FAIL
    proc = run_dag(env, CLAIM_DAG.format(dag_id="claim_nopath"), tmp_path, expect_success=False)
    assert dag_run_states(proc) == [("claim_nopath", "failed")]
    assert "JSONDecodeError" in proc.stdout + proc.stderr
    run_id, value = airflow_home.query("SELECT run_id, value FROM task_state_store")[0]
    ref = json.loads(value)["__airflow_state_ref__"]
    assert "://" not in ref and ref.startswith("claim_nopath/")
    r = statectl(env, "where", "k", "--dag", "claim_nopath", "--run", run_id, "--task", "w", "-o", "json")
    assert r.code == 0, str(r)
    assert any("neither JSON nor a URL" in note for note in r.json()["notes"]), r.json()

    # Threshold above max_value_storage_bytes: the value stays inline, over the limit; the worker only warns.
    env = {
        **airflow_home.with_backend(airflow_home.bucket_url, threshold=1000),
        "AIRFLOW__STATE_STORE__MAX_VALUE_STORAGE_BYTES": "50",
    }
    assert findings_for(env)["threshold"][0] is Status.WARN
    proc = run_dag(env, CLAIM_DAG.format(dag_id="claim_threshold"), tmp_path)
    assert "exceeds configured max_value_storage_bytes=50" in proc.stdout + proc.stderr
    (value,) = airflow_home.query("SELECT value FROM task_state_store WHERE dag_id = 'claim_threshold'")[0]
    assert len(value) > 50 and "__airflow_state_ref__" in value and "://" not in value
    assert files_snapshot(airflow_home.bucket_dir) == {}
