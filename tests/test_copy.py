"""statectl cp / mv on real stores, with real workers as the oracle.

State is written by ONE real DAG run (fixed logical date) through the real provider (file:// bucket,
gzip, threshold 64; a mapped task; an asset whose name != uri). Then:

- cp --to-run: a new run of the same DAG resumes from the previous run's state: its own task copies the
  state into its run and every task instance (mapped ones too) reads it back through the worker.
- mv --to-dag: a renamed DAG's run (same logical date, so the same run_id) moves the old DAG's state
  into itself and reads it; the old rows and their objects are gone, the asset's are untouched.
- cp --to-asset: a renamed asset's reader copies the old asset's state and reads it.
- mv keeps a source row a worker rewrote between plan and copy; conflicts (skip, overwrite, fail),
  --dry-run, re-runs, and bad input (one line, its exit code, both stores unchanged).
"""

from __future__ import annotations

import json
import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from statectl.core.layout import ASSETS_FOLDER, quote_segment
from statectl.errors import ExitCode
from tests.cli_support import STATECTL, Result, core_store, db_snapshot, files_snapshot, statectl
from tests.infra import AirflowEnv, S3Bucket, WorkerBucketSeed, run_dag, seed_worker_bucket, worker_bucket_copy
from tests.migrate_support import provider, ref_url, same, worker_read
from tests.transfer_support import (
    ASSET_VALUES,
    LOGICAL_DATE,
    MAPPED_VALUES,
    TASK_VALUES,
    acting_reader_dag,
    close_in_time,
    expiries,
    run_acting_reader,
    writer_dag,
)

pytest_plugins = ["tests.cli_support"]

DAG = "statectl_copy"
RENAMED_DAG = "statectl_copy_renamed"
ASSET_NAME = "statectl_copy_asset"
ASSET_URI = "file:///tmp/statectl-copy/asset%20one"
RENAMED_ASSET = "statectl_copy_asset_v2"
RENAMED_ASSET_URI = "file:///tmp/statectl-copy/asset%20two"
THRESHOLD = 64
TASK_KEYS = len(TASK_VALUES) + len(MAPPED_VALUES)


@pytest.fixture(scope="session")
def worker_seed(airflow_template: Path, tmp_path_factory: pytest.TempPathFactory) -> WorkerBucketSeed:
    root = tmp_path_factory.mktemp("copy_seed")
    source = writer_dag(DAG, ASSET_NAME, ASSET_URI)
    return seed_worker_bucket(airflow_template / "airflow.db", root, source, THRESHOLD, "gzip")


@pytest.fixture
def deployment(worker_seed: WorkerBucketSeed, tmp_path: Path) -> tuple[AirflowEnv, dict[str, str]]:
    home = worker_bucket_copy(worker_seed, tmp_path)
    return home, home.with_backend(home.bucket_url, THRESHOLD, "gzip")


def run(env: dict[str, str], *args: str, code: int = 0) -> Result:
    result = statectl(env, *args)
    assert result.code == code, str(result)
    return result


def run_id_of(env: AirflowEnv, dag_id: str = DAG) -> str:
    rows = env.query("SELECT run_id FROM dag_run WHERE dag_id = :d ORDER BY id", d=dag_id)
    return str(rows[0][0])


def task_rows_of(env: AirflowEnv, dag_id: str, run_id: str | None = None) -> dict[tuple[str, int, str], str]:
    rows = env.query(
        'SELECT run_id, task_id, map_index, "key", value FROM task_state_store WHERE dag_id = :d', d=dag_id
    )
    return {(t, int(m), k): v for r, t, m, k, v in rows if run_id is None or r == run_id}


def asset_rows_of(env: AirflowEnv, name: str) -> dict[str, str]:
    rows = env.query(
        'SELECT s."key", s.value FROM asset_state_store s JOIN asset a ON a.id = s.asset_id WHERE a.name = :n', n=name
    )
    return {k: v for k, v in rows}


def objects_under(env: AirflowEnv, *parts: str) -> list[Path]:
    root = env.bucket_dir.joinpath(*parts)
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def provider_reads(worker_env: dict[str, str], rows: dict[Any, str], want: dict[Any, Any], asset: bool = False) -> None:
    with provider(worker_env) as backend:
        for where, text in rows.items():
            assert same(worker_read(backend, text, asset=asset), want[where]), where


def task_values() -> dict[tuple[str, int, str], Any]:
    values: dict[tuple[str, int, str], Any] = {("writer", -1, k): v for k, v in TASK_VALUES.items()}
    values.update({("mapped", i, "m"): v for i, v in MAPPED_VALUES.items()})
    return values


# --------------------------------------------------------------------------- read by real workers


def renamed_dag_moves_and_reads(env: dict[str, str], tmp_path: Path) -> None:
    """A run of the renamed DAG at the old run's logical date (so the same run_id) moves the old DAG's
    state into itself from inside its task, then every task instance reads it through the worker."""
    marker = "STATECTL_RENAMED_OK"
    dag = acting_reader_dag(
        RENAMED_DAG,
        [(ASSET_NAME, ASSET_URI)],
        [[STATECTL, "mv", "--dag", DAG, "--to-dag", RENAMED_DAG, "--yes"]],
        task_values=TASK_VALUES,
        mapped_values=MAPPED_VALUES,
        asset_values=ASSET_VALUES,
        marker=marker,
    )
    run_acting_reader(env, dag, tmp_path, marker, readers=1 + len(MAPPED_VALUES))


def test_cp_to_run_resumes_a_new_run_from_the_last(
    deployment: tuple[AirflowEnv, dict[str, str]], tmp_path: Path
) -> None:
    home, env = deployment
    previous = run_id_of(home)
    source_rows = task_rows_of(home, DAG)
    marker = "STATECTL_RESUMED_OK"
    dag = acting_reader_dag(
        DAG,
        [(ASSET_NAME, ASSET_URI)],
        [[STATECTL, "cp", "--dag", DAG, "--run", previous, "--to-run", "{run_id}", "--yes"]],
        task_values=TASK_VALUES,
        mapped_values=MAPPED_VALUES,
        asset_values=None,
        marker=marker,
        logical_date=LOGICAL_DATE + timedelta(days=1),
    )
    run_acting_reader(env, dag, tmp_path, marker, readers=1 + len(MAPPED_VALUES))
    (new_run,) = [r for (r,) in home.query("SELECT run_id FROM dag_run WHERE dag_id = :d", d=DAG) if r != previous]
    assert task_rows_of(home, DAG, previous) == source_rows  # the source is untouched
    copied = task_rows_of(home, DAG, new_run)
    assert set(copied) == set(source_rows)
    provider_reads(env, copied, task_values())
    for text in copied.values():
        url = ref_url(text)
        assert url is None or f"/{quote_segment(new_run)}/" in url, url
    times = expiries(home, DAG)
    source_times = {k: v for k, v in times.items()}
    assert all(close_in_time(v, source_times[k]) for k, v in source_times.items())
    again = run(env, "cp", "--dag", DAG, "--run", previous, "--to-run", new_run, "--yes", "-o", "json").json()
    assert again["outcomes"]["same"]["count"] == TASK_KEYS and again["objects_written"] == 0


def test_mv_to_dag_for_a_renamed_dag(deployment: tuple[AirflowEnv, dict[str, str]], tmp_path: Path) -> None:
    home, env = deployment
    run_id = run_id_of(home)
    source_assets = asset_rows_of(home, ASSET_NAME)
    assert objects_under(home, DAG)
    renamed_dag_moves_and_reads(env, tmp_path)
    assert run_id_of(home, RENAMED_DAG) == run_id
    assert task_rows_of(home, DAG) == {}
    assert objects_under(home, DAG) == [], "the old dag's objects are deleted"
    moved = task_rows_of(home, RENAMED_DAG)
    assert set(moved) == set(task_values())
    provider_reads(env, moved, task_values())
    assert objects_under(home, RENAMED_DAG)
    assert asset_rows_of(home, ASSET_NAME) == source_assets


def test_cp_to_asset_for_a_renamed_asset(deployment: tuple[AirflowEnv, dict[str, str]], tmp_path: Path) -> None:
    home, env = deployment
    source_assets = asset_rows_of(home, ASSET_NAME)
    marker = "STATECTL_ASSET_RENAMED_OK"
    dag = acting_reader_dag(
        "statectl_copy_asset_reader",
        [(RENAMED_ASSET, RENAMED_ASSET_URI)],
        [[STATECTL, "cp", "--asset", ASSET_NAME, "--to-asset", RENAMED_ASSET, "--yes"]],
        task_values=None,
        mapped_values=None,
        asset_values=ASSET_VALUES,
        marker=marker,
    )
    run_acting_reader(env, dag, tmp_path, marker, readers=2)
    assert asset_rows_of(home, ASSET_NAME) == source_assets
    copied = asset_rows_of(home, RENAMED_ASSET)
    assert set(copied) == set(ASSET_VALUES)
    provider_reads(env, copied, ASSET_VALUES, asset=True)
    objects = {str(p) for p in objects_under(home, ASSETS_FOLDER, quote_segment(RENAMED_ASSET))}
    assert {ref_url(t) for t in copied.values() if ref_url(t)} == {f"file://{p}" for p in objects} != set()


@pytest.mark.slow
def test_mv_to_dag_on_postgres_and_s3(pg_airflow_home: AirflowEnv, s3_bucket: S3Bucket, tmp_path: Path) -> None:
    home = pg_airflow_home
    env = {**home.with_backend(s3_bucket.url("state"), THRESHOLD, "gzip"), **s3_bucket.conn_env}
    run_dag(env, writer_dag(DAG, ASSET_NAME, ASSET_URI), tmp_path)
    written = s3_bucket.keys()
    old_keys = {k for k in written if k.startswith(f"state/{DAG}/")}
    assert old_keys
    renamed_dag_moves_and_reads(env, tmp_path)
    assert task_rows_of(home, DAG) == {}
    keys = set(s3_bucket.keys())
    assert not keys & old_keys, "the old dag's objects are deleted"
    assert any(k.startswith(f"state/{RENAMED_DAG}/") for k in keys)
    provider_reads(env, task_rows_of(home, RENAMED_DAG), task_values())


# --------------------------------------------------------------------------- nothing lost


def test_mv_keeps_a_source_a_worker_rewrote_meanwhile(deployment: tuple[AirflowEnv, dict[str, str]]) -> None:
    """A worker rewrites a source key after mv copied it and before its row goes: the row is kept."""
    from statectl.core.filters import RowFilter
    from statectl.ops.copy import CopyOptions, Retarget, run_copy

    home, env = deployment
    run_id = run_id_of(home)
    flt = RowFilter(dag_id=DAG, run_id=run_id, task_id="writer", assets=False)
    source_objects = {ref_url(v) for k, v in task_rows_of(home, DAG).items() if k[0] == "writer" and ref_url(v)}
    assert home.db_path is not None and source_objects
    store = core_store(env)
    delete_sources = store.metastore.delete_many_if_unchanged

    def worker_writes_first(rows: Any, **kwargs: Any) -> Any:
        # The moment between the copy's commit and the sources' removal: a worker writes 'big'.
        with sqlite3.connect(home.db_path) as conn:
            conn.execute(
                "UPDATE task_state_store SET value = '99' WHERE dag_id = ? AND \"key\" = 'big' AND task_id = 'writer'",
                (DAG,),
            )
        return delete_sources(rows, **kwargs)

    store.metastore.delete_many_if_unchanged = worker_writes_first  # type: ignore[method-assign]
    try:
        report = run_copy(store, CopyOptions(flt, Retarget(task="writer_v2"), move=True))
    finally:
        store.close()
    assert report.exit_code == ExitCode.PARTIAL
    assert [label for label, _ in report.sources_kept] == [f"task {DAG}/{run_id}/writer key 'big'"]
    assert report.sources_removed == len(TASK_VALUES) - 1
    rows = task_rows_of(home, DAG, run_id)
    assert rows[("writer", -1, "big")] == "99"  # the worker's write is kept
    assert {k for k in rows if k[0] == "writer"} == {("writer", -1, "big")}
    targets = {k[2]: v for k, v in rows.items() if k[0] == "writer_v2"}
    provider_reads(env, targets, TASK_VALUES)  # every value copied as it was read
    for url in source_objects:  # the moved sources' objects are gone ('big' no longer references its own)
        assert (url is not None and not Path(url.removeprefix("file://")).exists()) or "/big" in url, url


def test_conflicts_dry_run_and_re_runs(deployment: tuple[AirflowEnv, dict[str, str]]) -> None:
    """mapped[2] -> mapped[1]: both hold key 'm' (objects), so every conflict rule shows."""
    home, env = deployment
    run_id = run_id_of(home)
    scope = ["--dag", DAG, "--run", run_id, "--task", "mapped"]
    source, target = [*scope, "--map-index", "2"], [*scope, "--map-index", "1"]
    copy = ["cp", *source, "--to-map-index", "1", "--yes", "-o", "json"]
    run(env, "put", "extra", '{"x": "' + "e" * 100 + '"}', *source)

    before = (db_snapshot(home), files_snapshot(home.bucket_dir))
    plan = run(env, "cp", *source, "--to-map-index", "1", "--dry-run", "-o", "json").json()
    assert plan["dry_run"] and plan["outcomes"]["new"]["count"] == 1 and plan["outcomes"]["kept"]["count"] == 1
    failed = statectl(env, *copy[:-2], "--on-conflict", "fail")
    assert failed.code == ExitCode.CONFLICT and "another value" in failed.stderr, str(failed)
    assert (db_snapshot(home), files_snapshot(home.bucket_dir)) == before

    first = run(env, *copy).json()
    assert first["outcomes"]["new"]["count"] == 1 and first["outcomes"]["kept"]["count"] == 1
    assert first["objects_written"] == 1
    assert same(run(env, "get", "m", *target, "-o", "json").json(), MAPPED_VALUES[1])
    again = run(env, *copy).json()
    assert again["outcomes"]["same"]["count"] == 1 and again["objects_written"] == 0

    moved = statectl(env, "mv", "m", *source, "--to-map-index", "1", "--yes", "-o", "json")
    assert moved.code == ExitCode.PARTIAL and moved.json()["sources_kept"], str(moved)  # kept at both ends
    assert same(run(env, "get", "m", *source, "-o", "json").json(), MAPPED_VALUES[2])

    over = run(env, *copy, "--on-conflict", "overwrite").json()
    assert over["outcomes"]["overwrite"]["count"] == 1 and over["objects_written"] == 1
    assert same(run(env, "get", "m", *target, "-o", "json").json(), MAPPED_VALUES[2])
    moved_ok = run(env, "mv", *source, "--to-map-index", "1", "--yes", "-o", "json").json()
    assert moved_ok["outcomes"]["same"]["count"] == 2 and moved_ok["sources_removed"] == 2
    assert statectl(env, "get", "m", *source).code == ExitCode.NOT_FOUND
    assert not objects_under(home, DAG, quote_segment(run_id), "mapped", "2")


# --------------------------------------------------------------------------- bad input


def test_bad_copies_change_nothing(deployment: tuple[AirflowEnv, dict[str, str]]) -> None:
    home, env = deployment
    run_id = run_id_of(home)
    scope = ["--dag", DAG, "--run", run_id]
    before = (db_snapshot(home), files_snapshot(home.bucket_dir))
    cases: list[tuple[list[str], ExitCode, str]] = [
        (["cp", *scope], ExitCode.USAGE, "no target"),
        (["cp", *scope, "--to-run", run_id], ExitCode.USAGE, "target scope is the source"),
        (["cp", "--dag", DAG, "--to-run", "other"], ExitCode.USAGE, "--to-run needs the source's --run"),
        (["cp", *scope, "--to-asset", RENAMED_ASSET], ExitCode.USAGE, "give the source asset"),
        (["cp", "--asset", ASSET_NAME, "--to-dag", "x"], ExitCode.USAGE, "give the source scope"),
        (["cp", *scope, "--to-dag", "x", "--to-asset", "y"], ExitCode.USAGE, "exclude each other"),
        (["cp", "--asset", ASSET_NAME, "--to-asset", ASSET_NAME], ExitCode.USAGE, "target asset is the source"),
        (["cp", "--asset", ASSET_NAME, "--to-asset-uri", ASSET_URI], ExitCode.USAGE, "target asset is the source"),
        (["cp", "--asset", ASSET_NAME, "--to-asset", "x", "--ttl", "1d"], ExitCode.USAGE, "no expiry"),
        (["cp", *scope, "--to-map-index", "-2", "--map-index", "0", "--task", "mapped"], ExitCode.USAGE, "-1 or more"),
        (["cp", *scope, "--to-run", "nope"], ExitCode.NOT_FOUND, "no dag run 'nope'"),
        (["cp", "missing", *scope, "--task", "writer", "--to-task", "t2"], ExitCode.NOT_FOUND, "no key 'missing'"),
        (["cp", "--asset", ASSET_NAME, "--to-asset", "nope"], ExitCode.NOT_FOUND, "no active asset"),
        (["cp", "--dag", "nope", "--to-dag", "x"], ExitCode.NOT_FOUND, "holds no keys"),
        (["mv", *scope, "--to-dag", "x", "--on-conflict", "never"], ExitCode.USAGE, "skip, overwrite or fail"),
    ]
    for args, code, words in cases:
        result = statectl(env, *args, "--yes")
        assert result.code == code, f"{args}: {result}"
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0], f"{args}: {result}"
        assert (db_snapshot(home), files_snapshot(home.bucket_dir)) == before, args
    refused = statectl(env, "mv", *scope, "--to-dag", "x")
    assert refused.code == ExitCode.USAGE and "--yes" in refused.stderr
    assert json.dumps(before, default=str) == json.dumps(
        (db_snapshot(home), files_snapshot(home.bucket_dir)), default=str
    )
