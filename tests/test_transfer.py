"""statectl export / import on real stores, with real workers as the oracle.

State is written by ONE real DAG run (at a fixed logical date) through the real provider: file:// bucket,
gzip, threshold 64; a mapped task; an asset whose name != uri; one key that never expires, the others
with a 7-day retention.

- Into a freshly migrated second deployment with another configuration (no compression, threshold 16):
  a DAG run there at the same logical date (so the same run_id) imports the snapshot from inside its own
  task and then reads every task, mapped and asset value through the worker. Rows equal what the
  installed provider writes for that configuration; expires_at is kept. SQLite + file:// and
  PostgreSQL + S3 (moto, conn_id).
- export -> wipe -> import round trip: every value reads as before (statectl's core, the provider, and a
  real worker for the asset values); a second import changes nothing.
- Conflicts (skip, overwrite, fail), rows without a target, unreadable values, filters, and bad input:
  each refused with one line, its exit code, and both stores unchanged.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from statectl.errors import ExitCode
from tests.cli_support import STATECTL, Result, db_snapshot, files_snapshot, statectl
from tests.infra import (
    AirflowEnv,
    PostgresServer,
    S3Bucket,
    WorkerBucketSeed,
    asset_reader_dag,
    pg_env,
    run_dag,
    seed_worker_bucket,
    sqlite_env,
    worker_bucket_copy,
)
from tests.migrate_support import core_values, provider, same, state_rows, worker_column, worker_read
from tests.transfer_support import (
    ASSET_VALUES,
    MAPPED_VALUES,
    NEVER_EXPIRE_KEYS,
    TASK_VALUES,
    acting_reader_dag,
    close_in_time,
    expected_values,
    expiries,
    run_acting_reader,
    writer_dag,
)

pytest_plugins = ["tests.cli_support"]

DAG = "statectl_xfer"
ASSET_NAME = "statectl_xfer_asset"
ASSET_URI = "file:///tmp/statectl-xfer/asset%20one"
SOURCE_THRESHOLD = 64
TARGET_THRESHOLD = 16
KEYS = len(TASK_VALUES) + len(MAPPED_VALUES) + len(ASSET_VALUES)


@pytest.fixture(scope="session")
def worker_seed(airflow_template: Path, tmp_path_factory: pytest.TempPathFactory) -> WorkerBucketSeed:
    root = tmp_path_factory.mktemp("transfer_seed")
    source = writer_dag(DAG, ASSET_NAME, ASSET_URI)
    return seed_worker_bucket(airflow_template / "airflow.db", root, source, SOURCE_THRESHOLD, "gzip")


@pytest.fixture
def source(worker_seed: WorkerBucketSeed, tmp_path: Path) -> tuple[AirflowEnv, dict[str, str]]:
    """A copy of the worker-written deployment, and the environment its workers (and statectl) use."""
    home = worker_bucket_copy(worker_seed, tmp_path)
    return home, home.with_backend(home.bucket_url, SOURCE_THRESHOLD, "gzip")


def subdir(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    return folder


def run(env: dict[str, str], *args: str, code: int = 0) -> Result:
    result = statectl(env, *args)
    assert result.code == code, str(result)
    return result


def snapshot_lines(path: Path) -> list[dict[str, Any]]:
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return [json.loads(line) for line in data.decode().splitlines()]


def run_id_of(env: AirflowEnv, dag_id: str = DAG) -> str:
    (run_id,) = env.query("SELECT run_id FROM dag_run WHERE dag_id = :d", d=dag_id)[0]
    return str(run_id)


def assert_rows_are_the_providers(env: AirflowEnv, worker_env: dict[str, str]) -> None:
    """Each row holds exactly the column text the installed provider writes for its value."""
    run_id = run_id_of(env)
    expected = expected_values()
    rows = state_rows(env)
    assert set(rows) == set(expected)
    with provider(worker_env) as backend:
        for where, text in rows.items():
            assert text == worker_column(backend, where, expected[where], DAG, run_id, ASSET_NAME), where
            assert same(worker_read(backend, text, asset=where[0] is None), expected[where]), where


def unchanged(env: AirflowEnv, before: tuple[Any, Any], result: Result, code: ExitCode, words: str) -> None:
    assert result.code == code, str(result)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("statectl: error:") and words in lines[0], str(result)
    assert (db_snapshot(env), files_snapshot(env.bucket_dir)) == before


# --------------------------------------------------------------------------- into another deployment


def _into_a_fresh_deployment(
    src: AirflowEnv, src_env: dict[str, str], tgt: AirflowEnv, tgt_env: dict[str, str], tmp_path: Path
) -> None:
    snapshot = tmp_path / "state.jsonl.gz"
    exported = run(src_env, "export", "--file", str(snapshot), "-o", "json").json()
    assert exported["keys"] == KEYS and exported["unreadable"] == 0
    lines = snapshot_lines(snapshot)
    header, records = lines[0], lines[1:]
    assert header["format"] == "statectl-snapshot" and header["version"] == 1
    assert header["source"]["compression"] == "gzip" and header["source"]["threshold"] == SOURCE_THRESHOLD
    assert "password" not in json.dumps(header).lower()
    assert {r["stored"] for r in records} == {"inline", "object"}
    values = expected_values()
    for r in records:
        where = (r.get("task_id"), r.get("map_index", -1), r["key"])
        assert same(r["value"], values[where]), where
        assert r["sha256"].startswith("sha256:")

    marker = "STATECTL_IMPORT_READ_OK"
    dag = acting_reader_dag(
        DAG,
        [(ASSET_NAME, ASSET_URI)],
        [[STATECTL, "import", str(snapshot), "--yes"]],
        task_values=TASK_VALUES,
        mapped_values=MAPPED_VALUES,
        asset_values=ASSET_VALUES,
        marker=marker,
    )
    # The import runs inside the target's own task; the worker then reads every value.
    run_acting_reader(tgt_env, dag, tmp_path, marker, readers=1 + len(MAPPED_VALUES))
    assert run_id_of(tgt) == run_id_of(src)
    assert_rows_are_the_providers(tgt, tgt_env)
    source_expiry, target_expiry = expiries(src, DAG), expiries(tgt, DAG)
    assert set(source_expiry) == set(target_expiry)
    for where, when in source_expiry.items():
        assert close_in_time(target_expiry[where], when), where
        assert (when is None) == (where[2] in NEVER_EXPIRE_KEYS), where


def test_export_import_into_a_fresh_sqlite_deployment_read_by_its_workers(
    source: tuple[AirflowEnv, dict[str, str]], airflow_template: Path, tmp_path: Path
) -> None:
    src, src_env = source
    tgt = sqlite_env(airflow_template / "airflow.db", subdir(tmp_path, "target"))
    tgt_env = tgt.with_backend(tgt.bucket_url, TARGET_THRESHOLD, None)
    _into_a_fresh_deployment(src, src_env, tgt, tgt_env, tmp_path)
    assert not any(p.suffix == ".gz" for p in tgt.bucket_dir.rglob("*")), "the target does not compress"


@pytest.mark.slow
def test_export_import_between_postgres_deployments_on_s3(
    postgres_server: PostgresServer, pg_airflow_template: str, s3_bucket: S3Bucket, tmp_path: Path
) -> None:
    src = pg_env(postgres_server, pg_airflow_template, subdir(tmp_path, "source"))
    tgt = pg_env(postgres_server, pg_airflow_template, subdir(tmp_path, "target"))
    try:
        src_env = {**src.with_backend(s3_bucket.url("source"), SOURCE_THRESHOLD, "gzip"), **s3_bucket.conn_env}
        tgt_env = {**tgt.with_backend(s3_bucket.url("target"), TARGET_THRESHOLD, None), **s3_bucket.conn_env}
        run_dag(src_env, writer_dag(DAG, ASSET_NAME, ASSET_URI), tmp_path)
        _into_a_fresh_deployment(src, src_env, tgt, tgt_env, tmp_path)
        # Overwrite on PostgreSQL: the batched conditional replaces of task and asset rows.
        scope = ["--dag", DAG, "--run", run_id_of(tgt), "--task", "writer"]
        run(tgt_env, "put", "big", '"changed"', *scope)
        run(tgt_env, "put", "tiny", '{"changed": "' + "c" * 40 + '"}', "--asset", ASSET_NAME)
        replaced = run(
            tgt_env, "import", str(tmp_path / "state.jsonl.gz"), "--yes", "--on-conflict", "overwrite", "-o", "json"
        ).json()
        assert replaced["outcomes"]["overwrite"]["count"] == 2 and replaced["outcomes"]["same"]["count"] == KEYS - 2
        assert replaced["objects_deleted"] == 1  # the asset's 'tiny' object: the snapshot's value is inline
        assert_rows_are_the_providers(tgt, tgt_env)
        keys = s3_bucket.keys()
        assert any(k.startswith("target/") for k in keys) and not any(
            k.startswith("target/") and k.endswith(".gz") for k in keys
        )
        assert str(postgres_server.url("x")).split("@")[0] not in (tmp_path / "state.jsonl.gz").read_bytes().decode(
            "latin-1"
        )
    finally:
        postgres_server.drop_database(src.db_name or "")
        postgres_server.drop_database(tgt.db_name or "")


# --------------------------------------------------------------------------- round trip


def wipe(env: AirflowEnv) -> None:
    env.query("DELETE FROM task_state_store")
    env.query("DELETE FROM asset_state_store")
    shutil.rmtree(env.bucket_dir)
    env.bucket_dir.mkdir()


def test_export_wipe_import_round_trip(source: tuple[AirflowEnv, dict[str, str]], tmp_path: Path) -> None:
    src, src_env = source
    before = state_rows(src)
    snapshot = tmp_path / "state.jsonl"
    run(src_env, "export", "--file", str(snapshot))
    wipe(src)
    report = run(src_env, "import", str(snapshot), "--yes", "-o", "json").json()
    assert report["outcomes"]["new"]["count"] == KEYS and report["total"] == KEYS
    # The same configuration: the very rows the workers wrote, and the same values read back.
    assert state_rows(src) == before
    values = core_values(src_env)
    assert all(same(values[k], v) for k, v in expected_values().items()) and len(values) == KEYS
    assert_rows_are_the_providers(src, src_env)
    marker = "STATECTL_ROUND_TRIP_ASSETS_OK"
    run_dag(src_env, asset_reader_dag("statectl_xfer_reader", ASSET_NAME, ASSET_URI, ASSET_VALUES, marker), tmp_path)
    # Idempotent: a second import finds every value in place and writes nothing.
    again = run(src_env, "import", str(snapshot), "--yes", "-o", "json").json()
    assert again["outcomes"]["same"]["count"] == KEYS and again["objects_written"] == 0


def test_export_to_stdout_with_filters_and_import_from_stdin(
    source: tuple[AirflowEnv, dict[str, str]], tmp_path: Path
) -> None:
    src, src_env = source
    planned = tmp_path / "planned.jsonl"
    dry = run(src_env, "export", "--dry-run", "--file", str(planned), "-o", "json").json()
    objects = sum(1 for text in state_rows(src).values() if '"file://' in text)
    assert (dry["dry_run"], dry["keys"], dry["objects_read"]) == (True, KEYS, objects) and objects > 0
    assert not planned.exists()
    mapped = run(src_env, "export", "--dag", DAG, "--task", "mapped")
    lines = [json.loads(line) for line in mapped.stdout.splitlines()]
    assert lines[0]["selection"] == {"dag_id": DAG, "task_id": "mapped", "tasks": True, "assets": False}
    assert sorted(r["map_index"] for r in lines[1:]) == [0, 1, 2]
    assert "exported 3 key(s)" in mapped.stderr
    assets = run(src_env, "export", "--assets", "--key", "t*")
    assert [json.loads(line)["key"] for line in assets.stdout.splitlines()[1:]] == ["tiny"]
    wipe(src)
    refused = statectl(src_env, "import", "-", input=mapped.stdout)
    assert refused.code == ExitCode.USAGE and "--yes" in refused.stderr
    imported = statectl(src_env, "import", "-", "--yes", "-o", "json", input=mapped.stdout)
    assert imported.code == 0, str(imported)
    assert imported.json()["outcomes"]["new"]["count"] == 3
    assert {k for k in state_rows(src)} == {("mapped", i, "m") for i in MAPPED_VALUES}


# --------------------------------------------------------------------------- conflicts and targets


def test_conflicts_skip_overwrite_fail(source: tuple[AirflowEnv, dict[str, str]], tmp_path: Path) -> None:
    src, src_env = source
    snapshot = tmp_path / "state.jsonl"
    run(src_env, "export", "--file", str(snapshot))
    run_id = run_id_of(src)
    scope = ["--dag", DAG, "--run", run_id, "--task", "writer"]
    run(src_env, "put", "big", '{"changed": true}', *scope)
    run(src_env, "rm", "tiny", *scope)

    before = (db_snapshot(src), files_snapshot(src.bucket_dir))
    failed = statectl(src_env, "import", str(snapshot), "--yes", "--on-conflict", "fail")
    unchanged(src, before, failed, ExitCode.CONFLICT, "another value")
    plan = run(src_env, "import", str(snapshot), "--dry-run", "-o", "json").json()
    assert plan["dry_run"] and plan["outcomes"]["kept"]["count"] == 1 and plan["outcomes"]["new"]["count"] == 1
    assert plan["outcomes"]["same"]["count"] == KEYS - 2
    assert (db_snapshot(src), files_snapshot(src.bucket_dir)) == before

    skipped = run(src_env, "import", str(snapshot), "--yes", "-o", "json").json()
    assert skipped["outcomes"]["kept"]["count"] == 1 and skipped["outcomes"]["new"]["count"] == 1
    assert run(src_env, "get", "big", *scope, "-o", "json").json() == {"changed": True}
    assert run(src_env, "get", "tiny", *scope, "-o", "json").json() == 1

    overwritten = run(src_env, "import", str(snapshot), "--yes", "--on-conflict", "overwrite", "--ttl", "2d")
    document = json.loads(overwritten.stdout) if overwritten.stdout.startswith("{") else None
    assert document is None  # plain output by default when not on a terminal
    assert same(run(src_env, "get", "big", *scope, "-o", "json").json(), TASK_VALUES["big"])
    assert_rows_are_the_providers(src, src_env)


def test_rows_without_a_target_are_reported_and_skipped(
    source: tuple[AirflowEnv, dict[str, str]], airflow_template: Path, tmp_path: Path
) -> None:
    _, src_env = source
    snapshot = tmp_path / "state.jsonl"
    run(src_env, "export", "--file", str(snapshot))
    empty = sqlite_env(airflow_template / "airflow.db", subdir(tmp_path, "empty"))  # no dag run, no asset
    empty_env = empty.with_backend(empty.bucket_url, TARGET_THRESHOLD, None)
    before = (db_snapshot(empty), files_snapshot(empty.bucket_dir))
    result = statectl(empty_env, "import", str(snapshot), "--yes", "-o", "json")
    assert result.code == ExitCode.PARTIAL, str(result)
    assert result.json()["outcomes"]["no-target"]["count"] == KEYS
    assert "no-target" in result.stderr and "no dag run" in result.stderr
    assert (db_snapshot(empty), files_snapshot(empty.bucket_dir)) == before


def test_an_unreadable_value_is_a_line_that_says_so(source: tuple[AirflowEnv, dict[str, str]], tmp_path: Path) -> None:
    src, src_env = source
    lost = next(p for p in src.bucket_dir.rglob("*.gz") if "big" in p.name)
    lost.unlink()
    snapshot = tmp_path / "state.jsonl"
    result = statectl(src_env, "export", "--file", str(snapshot), "-o", "json")
    assert result.code == ExitCode.PARTIAL, str(result)
    assert result.json()["unreadable"] == 1 and "big" in result.stderr
    broken = [r for r in snapshot_lines(snapshot)[1:] if "error" in r]
    assert len(broken) == 1 and broken[0]["key"] == "big" and "value" not in broken[0]
    wipe(src)
    imported = statectl(src_env, "import", str(snapshot), "--yes", "-o", "json")
    assert imported.code == ExitCode.PARTIAL, str(imported)
    assert imported.json()["outcomes"]["unreadable"]["count"] == 1
    assert imported.json()["outcomes"]["new"]["count"] == KEYS - 1


# --------------------------------------------------------------------------- bad input


def test_bad_snapshots_and_flags_change_nothing(source: tuple[AirflowEnv, dict[str, str]], tmp_path: Path) -> None:
    src, src_env = source
    good = tmp_path / "state.jsonl"
    run(src_env, "export", "--file", str(good))
    text = good.read_text()
    wipe(src)  # an import would write everything: any change shows
    before = (db_snapshot(src), files_snapshot(src.bucket_dir))

    def bad(name: str, content: str | bytes) -> str:
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        return str(path)

    header, *records = text.splitlines()
    truncated = "\n".join([header, *records[:-1], records[-1][: len(records[-1]) // 2]])
    tampered_record = json.loads(records[3])
    tampered_record["value"] = "not what was exported"
    tampered = "\n".join([header, *records[:3], json.dumps(tampered_record), *records[4:]])
    future = "\n".join([header.replace('"version": 1', '"version": 99'), *records])
    cases: list[tuple[list[str], ExitCode, str]] = [
        (["import", bad("notes.txt", "hello\nworld\n")], ExitCode.DATA, "not a statectl-snapshot"),
        (["import", bad("empty.jsonl", "")], ExitCode.DATA, "empty"),
        (["import", bad("future.jsonl", future)], ExitCode.DATA, "version 99"),
        (["import", bad("truncated.jsonl", truncated)], ExitCode.DATA, f"line {len(records) + 1}"),
        (["import", bad("tampered.jsonl", tampered)], ExitCode.DATA, "line 5: checksum mismatch"),
        (["import", bad("cut.jsonl.gz", gzip.compress(text.encode())[:-20])], ExitCode.DATA, "truncated"),
        (["import", str(tmp_path / "missing.jsonl")], ExitCode.USAGE, "cannot read"),
        (["import", str(good), "--ttl", "1d", "--never-expire"], ExitCode.USAGE, "exclude each other"),
        (["import", str(good), "--on-conflict", "maybe"], ExitCode.USAGE, "skip, overwrite or fail"),
        (["import", str(good)], ExitCode.USAGE, "--yes"),
        (["import", str(good), "--yes", "--batch-size", "0"], ExitCode.USAGE, "--batch-size"),
        (["export", "--dag", DAG, "--assets"], ExitCode.USAGE, "exclude each other"),
    ]
    for args, code, words in cases:
        extra = [] if "--yes" in args or args[-1] == str(good) or args[0] == "export" else ["--yes"]
        unchanged(src, before, statectl(src_env, *args, *extra), code, words)
