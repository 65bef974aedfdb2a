"""statectl check on real stores: state written by a real DAG run through the provider (SQLite + file://,
PostgreSQL + moto S3 with a conn_id), each problem planted for real and asserted in the JSON and the
table: a deleted object, old and fresh orphans, a ref outside the base path (with a file there),
corrupt gzip bytes (--deep only), .gz objects while the config says bz2, bad JSON in a row, a plain
row read by workers with a backend, ref rows read by workers without one. check never changes a store.
"""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path
from typing import Any

import pytest

from statectl.errors import ExitCode
from tests.cli_support import Result, db_snapshot, env_without, files_snapshot, statectl
from tests.infra import AirflowEnv, S3Bucket, WorkerBucketSeed, worker_bucket_copy
from tests.test_scan import (
    N_OBJECTS,
    SCAN_ASSET,
    SCAN_DAG,
    file_seed,
    make_old,
    ref_of_row,
    s3_written,
    set_row,
    worker_env_of,
    wrapper,
)

N_TASK_ROWS = 8 + 3  # writer's keys, and one per mapped index
N_ASSET_ROWS = 2


@pytest.fixture(scope="session")
def check_seed(airflow_template: Path, tmp_path_factory: pytest.TempPathFactory) -> WorkerBucketSeed:
    return file_seed(airflow_template, tmp_path_factory)


@pytest.fixture
def home(check_seed: WorkerBucketSeed, tmp_path: Path) -> AirflowEnv:
    h = worker_bucket_copy(check_seed, tmp_path)
    for path in h.bucket_dir.rglob("*"):  # the worker's objects are old; planted ones say their age
        if path.is_file():
            make_old(path)
    return h


def check(env: dict[str, str], *args: str, code: int = 0) -> dict[str, Any]:
    r = statectl(env, "check", *args, "-o", "json")
    assert r.code == code, str(r)
    assert "Traceback" not in r.stderr, str(r)
    return r.json()


def table(env: dict[str, str], *args: str, code: int) -> Result:
    r = statectl(env, "check", *args, "-o", "table")
    assert r.code == code, str(r)
    return r


def counts(report: dict[str, Any]) -> dict[str, int]:
    return {kind: f["count"] for kind, f in report["findings"].items() if f["count"]}


def items(report: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return report["findings"][kind]["items"]


@pytest.mark.slow
def test_check_clean_state_sqlite_file(home: AirflowEnv) -> None:
    env = worker_env_of(home)
    report = check(env)
    assert report["ok"] and report["problems"] == 0 and counts(report) == {}, report
    assert report["scan_complete"] and report["backend"] and report["compression"] == "gzip"
    assert report["locations"] == {"plain": 0, "inline": 1, "object": N_OBJECTS}
    dag, assets = report["per_dag"][SCAN_DAG], report["per_dag"]["(assets)"]
    assert (dag["rows"], dag["objects"], assets["rows"], assets["objects"]) == (N_TASK_ROWS, 10, N_ASSET_ROWS, 2)
    on_disk = sum(p.stat().st_size for p in home.bucket_dir.rglob("*") if p.is_file())
    assert report["totals"]["object_bytes"] == on_disk and report["totals"]["objects"] == N_OBJECTS
    assert any("--deep" in note for note in report["notes"])

    deep = check(env, "--deep")
    assert deep["ok"] and deep["objects_read"] == N_OBJECTS and not any("--deep" in n for n in deep["notes"])

    # The objects are .gz while the configuration now says bz2: warnings, fatal only with --strict.
    bz2_env = {**env, "AIRFLOW__COMMON_IO__STATE_STORE_OBJECTSTORAGE_COMPRESSION": "bz2"}
    report = check(bz2_env)
    assert report["ok"] and counts(report) == {"suffix_mismatch": N_OBJECTS}
    assert items(report, "suffix_mismatch")[0]["configured"] == ".bz2"
    strict = check(bz2_env, "--strict", code=ExitCode.PROBLEMS_FOUND)
    assert not strict["ok"] and strict["problems"] == N_OBJECTS

    # Workers without a backend read every ref row as the wrapper dict.
    no_backend = env_without(env, "AIRFLOW__WORKERS__STATE_STORE_BACKEND")
    report = check(no_backend, code=ExitCode.PROBLEMS_FOUND)
    assert counts(report) == {"refs_without_backend": N_OBJECTS + 1}

    # A filter narrows both passes.
    report = check(env, "--assets")
    assert list(report["per_dag"]) == ["(assets)"] and report["totals"]["objects"] == 2


@pytest.mark.slow
def test_check_planted_problems_sqlite_file(home: AirflowEnv, tmp_path: Path) -> None:
    env = worker_env_of(home)
    base = home.bucket_url
    # dangling: writer/a-b's object deleted
    dangling = ref_of_row(home, "writer", "a-b")
    Path(dangling.removeprefix("file://")).unlink()
    # orphans: an old one and a fresh one (a write in flight)
    k0 = ref_of_row(home, "writer", "k0")
    folder = Path(k0.removeprefix("file://")).parent
    (folder / "old-orphan.gz").write_bytes(gzip.compress(b"1"))
    make_old(folder / "old-orphan.gz")
    (folder / "fresh-orphan.gz").write_bytes(gzip.compress(b"2"))
    make_old(folder / "fresh-orphan.gz", hours=0.05)  # 3 minutes
    # outside the base path, with a file there
    elsewhere = tmp_path / "elsewhere.gz"
    elsewhere.write_bytes(gzip.compress(b"3"))
    set_row(home, "writer", "Z", wrapper(elsewhere.as_uri()))
    # corrupt gzip bytes in writer/k0's object (seen with --deep only)
    Path(k0.removeprefix("file://")).write_bytes(b"this is not gzip")
    # bad JSON in a row (its old object becomes an orphan)
    set_row(home, "writer", "0", '{"broken')
    # a plain row: workers with the backend return it raw and log a warning
    set_row(home, "writer", "a.b", json.dumps("plain value"))
    db_before, files_before = db_snapshot(home), files_snapshot(home.bucket_dir.parent)

    report = check(env, code=ExitCode.PROBLEMS_FOUND)
    # orphans: old-orphan, and the old objects of Z, 0 and a.b (their rows no longer point at them)
    assert counts(report) == {
        "dangling": 1,
        "orphans": 4,
        "recent_orphans": 1,
        "outside_base": 1,
        "undecodable": 1,
        "plain_with_backend": 1,
    }, counts(report)
    assert report["problems"] == 7 and not report["ok"]
    [d] = items(report, "dangling")
    assert (d["task_id"], d["key"], d["ref"]) == ("writer", "a-b", dangling)
    orphan_paths = {i["path"].rsplit("/", 1)[1] for i in items(report, "orphans")}
    assert orphan_paths == {"old-orphan.gz", "Z.gz", "0.gz", "a.b.gz"}
    assert items(report, "recent_orphans")[0]["path"].endswith("/fresh-orphan.gz")
    [o] = items(report, "outside_base")
    assert (o["key"], o["ref"]) == ("Z", elsewhere.as_uri()) and "outside" in o["reason"]
    [u] = items(report, "undecodable")
    assert (u["key"], u["what"]) == ("0", "row") and "not JSON" in u["reason"]
    assert items(report, "plain_with_backend")[0]["key"] == "a.b"
    assert f"{base}/" in items(report, "orphans")[0]["url"]

    deep = check(env, "--deep", code=ExitCode.PROBLEMS_FOUND)
    undecodable = {(i["key"], i["what"]): i["reason"] for i in items(deep, "undecodable")}
    assert set(undecodable) == {("0", "row"), ("k0", "object")}
    assert "does not decompress" in undecodable[("k0", "object")]

    # --grace 1m: the 3-minute-old orphan is an orphan too; --limit bounds the items, not the counts
    limited = check(env, "--grace", "1m", "--limit", "1", code=ExitCode.PROBLEMS_FOUND)
    assert limited["findings"]["orphans"]["count"] == 5 and len(items(limited, "orphans")) == 1
    assert "recent_orphans" not in counts(limited)

    # the table names each problem, and says how many more there are
    out = table(env, code=ExitCode.PROBLEMS_FOUND).stdout
    for text in ("7 problem(s)", "dangling", "a-b", "old-orphan.gz", elsewhere.as_uri(), "not JSON", "a.b", SCAN_DAG):
        assert text in out, (text, out)
    out = table(env, "--limit", "2", code=ExitCode.PROBLEMS_FOUND).stdout
    assert "orphans (first 2 of 4)" in out

    # check never changes either store
    assert db_snapshot(home) == db_before
    assert files_snapshot(home.bucket_dir.parent) == files_before


@pytest.mark.slow
def test_check_postgres_s3(pg_airflow_home: AirflowEnv, s3_bucket: S3Bucket, tmp_path: Path) -> None:
    home = pg_airflow_home
    env = s3_written(home, s3_bucket, tmp_path)
    report = check(env, "--deep")
    assert report["ok"] and counts(report) == {} and report["objects_read"] == N_OBJECTS, report

    client = s3_bucket.client()
    key_of = lambda url: url.split(f"{s3_bucket.bucket}/", 1)[1]  # noqa: E731
    dangling = ref_of_row(home, "writer", "a-b")
    client.delete_object(Bucket=s3_bucket.bucket, Key=key_of(dangling))
    client.put_object(Bucket=s3_bucket.bucket, Key="state/orphan.gz", Body=gzip.compress(b"1"))  # fresh only on S3
    k0 = ref_of_row(home, "writer", "k0")
    client.put_object(Bucket=s3_bucket.bucket, Key=key_of(k0), Body=b"not gzip at all")
    client.put_object(Bucket=s3_bucket.bucket, Key="elsewhere/x.gz", Body=gzip.compress(b"1"))
    set_row(home, "writer", "Z", wrapper(s3_bucket.url("elsewhere/x.gz")))
    set_row(home, "mapped", "m", "[1, 2", 1)
    planted = time.time()

    report = check(env, "--deep", code=ExitCode.PROBLEMS_FOUND)
    # recent: the planted orphan and the object of Z (mapped[1]'s object too: its row is bad JSON now)
    assert counts(report) == {"dangling": 1, "recent_orphans": 3, "outside_base": 1, "undecodable": 2}, counts(report)
    assert items(report, "dangling")[0]["ref"] == dangling
    assert items(report, "outside_base")[0]["ref"] == s3_bucket.url("elsewhere/x.gz")
    undecodable = {(i["key"], i["what"]) for i in items(report, "undecodable")}
    assert undecodable == {("k0", "object"), ("m", "row")}
    time.sleep(max(0.0, 2 - (time.time() - planted)))
    r = statectl(env, "check", "--grace", "1s", "-o", "json")
    assert r.code == ExitCode.PROBLEMS_FOUND and "Traceback" not in r.stderr, str(r)
    graceless = r.json()
    assert graceless["findings"]["orphans"]["count"] == 3
    assert {i["path"] for i in items(graceless, "orphans")} >= {"orphan.gz"}
    shown = table(env, "--deep", "--grace", "1s", code=ExitCode.PROBLEMS_FOUND)

    # the conn_id's credentials (and the metastore's password), all in the env statectl ran with, never
    # show up in its output, JSON or table, stdout or stderr
    [(conn_var, conn_json)] = s3_bucket.conn_env.items()
    assert env[conn_var] == conn_json
    conn = json.loads(conn_json)
    secrets = {"access key": conn["login"], "secret key": conn["password"]}
    from urllib.parse import urlsplit

    secrets["metastore password"] = urlsplit(home.sql_alchemy_conn).password
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == home.sql_alchemy_conn
    for what, secret in secrets.items():
        assert isinstance(secret, str) and len(secret) >= 4, (what, secret)  # a real secret to look for
        for result in (r, shown):
            assert secret not in result.stdout and secret not in result.stderr, (what, str(result))


@pytest.mark.slow
def test_check_bad_input_and_unreachable(home: AirflowEnv) -> None:
    env = worker_env_of(home)
    for args, code in (
        (["--grace", "soon"], ExitCode.USAGE),
        (["--limit", "-1"], ExitCode.USAGE),
        (["--dag", SCAN_DAG, "--asset", SCAN_ASSET], ExitCode.USAGE),
    ):
        r = statectl(env, "check", *args)
        assert r.code == code and r.stdout == "", str(r)
        assert r.stderr.startswith("statectl: error:") and len(r.stderr.strip().splitlines()) == 1, str(r)
    gone = {**env, "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home.home}/missing.db"}
    r = statectl(gone, "check")
    assert r.code == ExitCode.UNREACHABLE and "Traceback" not in r.stderr, str(r)
