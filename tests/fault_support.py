"""Helpers for the fault tests: S3 through the latency bed (benchmarks/latency_bed.py) with seeded faults, a
seeded PostgreSQL state, and a real worker that reads every value back.

Not a conftest: imported by tests/test_faults.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks.latency_bed import ALL_FAULT_KINDS, FaultPlan, LatencyS3
from tests.cli_support import ASSET, ASSET_URI, DAG_ID, MAPPED, TASK, Result, statectl
from tests.infra import AWS_KEY, AWS_REGION, AirflowEnv, S3Bucket, create_s3_bucket, json_literal, run_dag
from tests.migrate_support import RowKey, same, value_for

READ_TIMEOUT_S = 1.0  # the client's, from the connection: a "timeout" fault costs this much, not 15 s
FAULT_TIMEOUT_S = 2.0  # how long the bed holds a "timeout" request: longer than the read timeout
KINDS = tuple(k for k in ALL_FAULT_KINDS if k not in ("403", "400"))  # transient faults, and lost answers
# Task instances of the seeded run (tests/cli_support.py) that hold state: two, as each costs the reader a task.
TASK_INSTANCES = ((TASK, -1), (MAPPED, 0))
EXITS = (0, 8)  # what a command may end with while the store throttles and drops requests


@dataclass
class FaultBed:
    """moto's S3 behind the latency bed, without delays, faulting ``plan.fraction`` of the requests that come
    through ``endpoint_url`` (the tools'); ``bucket`` talks to the same moto directly (the harness's)."""

    bed: LatencyS3
    plan: FaultPlan
    bucket: S3Bucket
    conn_env: dict[str, str]

    def requests(self) -> int:
        return sum(self.bed.counter.snapshot().values())

    @contextmanager
    def faults(self, fraction: float) -> Iterator[None]:
        """Fault this fraction of requests for the block, none after it."""
        self.plan.set_fraction(fraction)
        try:
            yield
        finally:
            self.plan.set_fraction(0.0)

    def backdate(self, key: str, age: timedelta) -> None:
        """Make an object look this old (moto's backend lives in this process)."""
        from moto.s3.models import s3_backends

        partition, account = s3_backends.bucket_accounts[self.bucket.bucket]
        fake = s3_backends[account][partition].buckets[self.bucket.bucket].keys[key]
        fake.last_modified = datetime.now(UTC).replace(tzinfo=None) - age  # moto keeps naive UTC

    def names(self) -> list[str]:
        """The bucket's keys (listed directly: never faulted)."""
        return self.bucket.keys()

    def objects(self, prefix: str = "") -> dict[str, bytes]:
        client = self.bucket.client()
        names = [name for name in self.names() if name.startswith(prefix)]
        return {name: client.get_object(Bucket=self.bucket.bucket, Key=name)["Body"].read() for name in names}

    def put(self, objects: dict[str, bytes]) -> None:
        client = self.bucket.client()
        for key, body in objects.items():
            client.put_object(Bucket=self.bucket.bucket, Key=key, Body=body)


def fault_conn_env(endpoint_url: str, conn_id: str) -> dict[str, str]:
    """The Airflow connection through the bed. botocore does not retry here (total_max_attempts 1), so every
    fault reaches statectl's own retries, which are what these tests are about; reads time out after
    READ_TIMEOUT_S (connection extras -> botocore config, as Airflow builds the filesystem)."""
    config = {"read_timeout": READ_TIMEOUT_S, "connect_timeout": 2, "retries": {"total_max_attempts": 1}}
    extra = {"endpoint_url": endpoint_url, "region_name": AWS_REGION, "config_kwargs": config}
    conn = {"conn_type": "aws", "login": AWS_KEY, "password": AWS_KEY, "extra": extra}
    return {f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(conn)}


@contextmanager
def fault_bed(seed: int = 11) -> Iterator[FaultBed]:
    """A bed with no delay and no faults yet (see FaultBed.faults), and a fresh bucket."""
    plan = FaultPlan(0.0, seed=seed, kinds=KINDS, timeout_s=FAULT_TIMEOUT_S)
    bed = LatencyS3(op_ms=0, list_ms=0, faults=plan)
    try:
        bucket = create_s3_bucket(bed.direct_url)
        yield FaultBed(bed, plan, bucket, fault_conn_env(bed.endpoint_url, bucket.conn_id))
    finally:
        bed.stop()


def run_under_faults(env: dict[str, str], *args: str) -> Result:
    """A statectl command that must end with exit 0 or 8 (a batch reported), never a traceback or another code."""
    result = statectl(env, *args)
    assert result.code in EXITS, str(result)
    assert "Traceback" not in result.stderr and "unexpected error" not in result.stderr, str(result)
    return result


# --------------------------------------------------------------------------- the state


def seed_plain_rows(
    home: AirflowEnv, per_task: int, assets: int, expired: frozenset[int] = frozenset()
) -> dict[RowKey, Any]:
    """Plain JSON rows, as the server stores them without a worker backend: ``per_task`` keys for each task
    instance of the seeded run and ``assets`` keys of its asset, of sizes around migrate_support.THRESHOLD.
    Task keys whose number is in ``expired`` expired an hour ago, the others never expire."""
    import sqlalchemy as sa
    from sqlalchemy.pool import NullPool

    expected: dict[RowKey, Any] = {}
    task_rows: list[dict[str, Any]] = []
    now = datetime.now(UTC)
    engine = sa.create_engine(home.sql_alchemy_conn, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            dag_run_id, run_id = conn.execute(
                sa.text("SELECT id, run_id FROM dag_run WHERE dag_id = :d"), {"d": DAG_ID}
            ).one()
            asset_id = conn.execute(sa.text("SELECT id FROM asset WHERE name = :n"), {"n": ASSET}).scalar_one()
            for n, (task_id, map_index) in enumerate(TASK_INSTANCES):
                for k in range(per_task):
                    i = n * per_task + k
                    key = f"key/{i:04d}:x"
                    expected[(task_id, map_index, key)] = value_for(i)
                    task_rows.append(
                        {
                            "dag_run_id": dag_run_id,
                            "task_id": task_id,
                            "map_index": map_index,
                            "key": key,
                            "dag_id": DAG_ID,
                            "run_id": run_id,
                            "value": json.dumps(value_for(i)),
                            "updated_at": now - timedelta(hours=2),
                            "expires_at": now - timedelta(hours=1) if i in expired else None,
                        }
                    )
            conn.execute(
                sa.text(
                    'INSERT INTO task_state_store (dag_run_id, task_id, map_index, "key", dag_id, run_id, value, '
                    "updated_at, expires_at) VALUES (:dag_run_id, :task_id, :map_index, :key, :dag_id, :run_id, "
                    ":value, :updated_at, :expires_at)"
                ),
                task_rows,
            )
            asset_rows = []
            for i in range(assets):
                key = f"asset key {i:03d}"
                expected[(None, -1, key)] = value_for(10_000 + i)
                asset_rows.append({"a": asset_id, "k": key, "v": json.dumps(value_for(10_000 + i)), "u": now})
            conn.execute(
                sa.text(
                    'INSERT INTO asset_state_store (asset_id, "key", value, updated_at, last_updated_by_kind) '
                    "VALUES (:a, :k, :v, :u, 'api')"
                ),
                asset_rows,
            )
    finally:
        engine.dispose()
    return expected


# --------------------------------------------------------------------------- a real worker reads


def reader_dag(expected: dict[RowKey, Any], marker: str) -> str:
    """A run of the seeded dag (same task instances) whose tasks each read their expected task values and the
    first also the asset's, through context["task_state_store"] / ["asset_state_store"], as any worker does.

    Task state belongs to a task instance of one run, and dag.test() makes a new run: each task first moves its
    own rows from the run that holds them into its run (dag_run_id and run_id only; the column text, refs
    included, is left exactly as statectl left it), then reads. Prints ``<marker> <task> <map_index> <count>``."""
    per_instance: dict[str, dict[str, Any]] = {}
    for (task_id, map_index, key), value in expected.items():
        per_instance.setdefault(f"{task_id}/{map_index}", {})[key] = value
    assets = per_instance.pop("None/-1", {})
    return f"""
import json
import os
from datetime import datetime

import sqlalchemy as sa
from airflow.sdk import Asset, dag, task

ASSET = Asset(name={ASSET!r}, uri={ASSET_URI!r})
EXPECTED = {json_literal(per_instance)}
ASSETS = {json_literal(assets)}


def same(got, want):
    return got == want and json.dumps(got) == json.dumps(want)


def adopt_and_read(context, task_id, map_index):
    engine = sa.create_engine(os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    with engine.begin() as conn:
        run = conn.execute(
            sa.text("SELECT id FROM dag_run WHERE dag_id = :d AND run_id = :r"),
            {{"d": {DAG_ID!r}, "r": context["run_id"]}},
        ).scalar_one()
        conn.execute(
            sa.text(
                "UPDATE task_state_store SET dag_run_id = :id, run_id = :r "
                "WHERE dag_id = :d AND task_id = :t AND map_index = :m AND run_id <> :r"
            ),
            {{"id": run, "r": context["run_id"], "d": {DAG_ID!r}, "t": task_id, "m": map_index}},
        )
    engine.dispose()
    want = EXPECTED.get(f"{{task_id}}/{{map_index}}", {{}})
    for key, value in want.items():
        got = context["task_state_store"].get(key)
        assert same(got, value), (task_id, map_index, key, got, value)
    print({marker!r}, task_id, map_index, len(want))


@dag(dag_id={DAG_ID!r}, schedule=None, start_date=datetime(2024, 1, 1), catchup=False)
def reader():
    @task(inlets=[ASSET])
    def {TASK}(**context):
        adopt_and_read(context, {TASK!r}, -1)
        accessor = context["asset_state_store"][ASSET]
        for key, value in ASSETS.items():
            got = accessor.get(key)
            assert same(got, value), (key, got, value)
        print({marker!r}, "asset", len(ASSETS))

    @task
    def {MAPPED}(x, **context):
        adopt_and_read(context, {MAPPED!r}, context["ti"].map_index)

    {TASK}() >> {MAPPED}.expand(x=[1])


d = reader()

if __name__ == "__main__":
    d.test()
"""


def read_through_worker(env: dict[str, str], expected: dict[RowKey, Any], tmp_path: Path, marker: str) -> None:
    """A real worker with this configuration reads every expected value back, exactly."""
    proc = run_dag(env, reader_dag(expected, marker), tmp_path)
    out = proc.stdout + proc.stderr
    for task_id, map_index in TASK_INSTANCES:
        count = sum(1 for t, m, _ in expected if (t, m) == (task_id, map_index))
        assert f"{marker} {task_id} {map_index} {count}" in out, out[-4000:]
    assert f"{marker} asset {sum(1 for t, _, _ in expected if t is None)}" in out, out[-4000:]


def assert_same_values(got: dict[RowKey, Any], want: dict[RowKey, Any]) -> None:
    assert set(got) == set(want)
    for where, value in want.items():
        assert same(got[where], value), (where, got[where], value)
