"""Helpers for the export/import and cp/mv tests: DAGs that act through statectl from inside their own
running task instance and then read state back through the real worker, and the state they expect.

Not a conftest: imported by tests/test_transfer*.py and tests/test_copy*.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.infra import AirflowEnv, json_literal, run_dag

# One logical date (and run_after) for the runs that must share a run_id across deployments or dags.
LOGICAL_DATE = datetime(2025, 3, 1, tzinfo=UTC)

TASK_VALUES: dict[str, Any] = {
    "tiny": 1,
    "small str": "s" * 10,
    "medium/obj:1 x%": {"payload": "m" * 200, "n": [1, 2.5, True, None]},
    "big": {"rows": list(range(3000))},
    "unicode": {"text": "h\u00e9llo \u4e2d", "pad": "u" * 80},
    "forever": {"v": "f" * 100},
}
NEVER_EXPIRE_KEYS = ("forever",)
MAPPED_VALUES: dict[int, Any] = {0: {"i": 0}, 1: {"i": 1, "pad": "p" * 100}, 2: {"i": 2, "pad": "p" * 300}}
ASSET_VALUES: dict[str, Any] = {"watermark": {"w": "z" * 150}, "tiny": 7, "cursor/at:1": "2024-01-01T00:00:00+00:00"}


def writer_dag(dag_id: str, asset_name: str, asset_uri: str, logical_date: datetime = LOGICAL_DATE) -> str:
    """The source: a real run at a fixed logical date writes task state (one key never expiring, the
    others a 7-day retention), mapped task state and asset state through the worker."""
    return f"""
import json
from datetime import datetime, timedelta

from airflow.sdk import Asset, dag, task
from airflow.sdk.execution_time.context import NEVER_EXPIRE

ASSET = Asset(name={asset_name!r}, uri={asset_uri!r})
TASK_VALUES = {json_literal(TASK_VALUES)}
MAPPED_VALUES = {json_literal(MAPPED_VALUES)}
ASSET_VALUES = {json_literal(ASSET_VALUES)}
NEVER = {list(NEVER_EXPIRE_KEYS)!r}


@dag(dag_id={dag_id!r}, schedule=None, start_date=datetime(2024, 1, 1), catchup=False)
def writer_dag():
    @task(outlets=[ASSET])
    def writer(**context):
        for key, value in TASK_VALUES.items():
            retention = NEVER_EXPIRE if key in NEVER else timedelta(days=7)
            context["task_state_store"].set(key, value, retention=retention)
        for key, value in ASSET_VALUES.items():
            context["asset_state_store"][ASSET].set(key, value)

    @task
    def mapped(i, **context):
        context["task_state_store"].set("m", MAPPED_VALUES[str(i)])

    writer() >> mapped.expand(i={sorted(MAPPED_VALUES)!r})


d = writer_dag()

if __name__ == "__main__":
    when = datetime.fromisoformat({logical_date.isoformat()!r})
    d.test(logical_date=when, run_after=when)  # run_id = manual__<run_after>
"""


def acting_reader_dag(
    dag_id: str,
    assets: list[tuple[str, str]],
    commands: list[list[str]],
    *,
    task_values: dict[str, Any] | None,
    mapped_values: dict[int, Any] | None,
    asset_values: dict[str, Any] | None,
    marker: str,
    logical_date: datetime = LOGICAL_DATE,
) -> str:
    """A run whose first task ("writer", outlet on every asset) runs each command (``{run_id}`` replaced by
    its own run id) and then reads ``task_values`` and, from the first asset, ``asset_values`` through the
    worker, asserting each; the mapped task instances ("mapped", one per key of ``mapped_values``) read
    their key "m". None: nothing to read there. Prints ``<marker>`` once per task that read."""
    return f"""
import json
import subprocess
from datetime import datetime

from airflow.sdk import Asset, dag, task

ASSETS = [Asset(name=n, uri=u) for n, u in {assets!r}]
COMMANDS = {json_literal(commands)}
TASK_VALUES = {json_literal(task_values)}
MAPPED_VALUES = {json_literal(mapped_values)}
ASSET_VALUES = {json_literal(asset_values)}


def same(got, want):
    return got == want and json.dumps(got) == json.dumps(want)


@dag(dag_id={dag_id!r}, schedule=None, start_date=datetime(2024, 1, 1), catchup=False)
def acting_reader():
    @task(outlets=ASSETS)
    def writer(**context):
        run_id = context["run_id"]
        for command in COMMANDS:
            argv = [part.replace("{{run_id}}", run_id) for part in command]
            done = subprocess.run(argv, capture_output=True, text=True)
            assert done.returncode == 0, (argv, done.returncode, done.stdout, done.stderr)
        for key, want in (TASK_VALUES or {{}}).items():
            got = context["task_state_store"].get(key)
            assert same(got, want), (key, got, want)
        for key, want in (ASSET_VALUES or {{}}).items():
            got = context["asset_state_store"][ASSETS[0]].get(key)
            assert same(got, want), (key, got, want)
        print({marker!r}, "writer")

    @task
    def mapped(i, **context):
        if MAPPED_VALUES is not None:
            got = context["task_state_store"].get("m")
            assert same(got, MAPPED_VALUES[str(i)]), (i, got)
        print({marker!r}, "mapped", i)

    writer() >> mapped.expand(i={sorted(mapped_values or {0: None})!r})


d = acting_reader()

if __name__ == "__main__":
    when = datetime.fromisoformat({logical_date.isoformat()!r})
    d.test(logical_date=when, run_after=when)  # run_id = manual__<run_after>
"""


def run_acting_reader(env: dict[str, str], source: str, tmp_path: Path, marker: str, readers: int) -> None:
    """Run an acting reader DAG and check that every one of its tasks read what it expected."""
    proc = run_dag(env, source, tmp_path)
    assert (proc.stdout + proc.stderr).count(marker) >= readers, proc.stdout[-4000:] + proc.stderr[-4000:]


def expected_values() -> dict[tuple[str | None, int, str], Any]:
    """(task_id or None for the asset, map_index, key) -> value, as the writer DAG stored them."""
    values: dict[tuple[str | None, int, str], Any] = {("writer", -1, k): v for k, v in TASK_VALUES.items()}
    values.update({("mapped", i, "m"): v for i, v in MAPPED_VALUES.items()})
    values.update({(None, -1, k): v for k, v in ASSET_VALUES.items()})
    return values


def expiries(env: AirflowEnv, dag_id: str) -> dict[tuple[str, int, str], datetime | None]:
    """expires_at of each task row of a dag, as aware UTC datetimes."""
    found: dict[tuple[str, int, str], datetime | None] = {}
    rows = env.query('SELECT task_id, map_index, "key", expires_at FROM task_state_store WHERE dag_id = :d', d=dag_id)
    for task_id, map_index, key, expires_at in rows:
        when = expires_at
        if isinstance(when, str):
            when = datetime.fromisoformat(when)
        if when is not None and when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        found[(task_id, int(map_index), key)] = when
    return found


def close_in_time(a: datetime | None, b: datetime | None, slack: timedelta = timedelta(seconds=1)) -> bool:
    if a is None or b is None:
        return a is b
    return abs(a - b) <= slack
