"""`statectl ls` writes, in every format, the very bytes it wrote when it made a StateRow, a StoredValue and a
dict per row: now that it streams tuples straight from the driver (a million rows in seconds), each shortcut
is checked against the general path it replaces, on SQLite and PostgreSQL."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta, timezone
from enum import StrEnum
from typing import Any

import pytest

from statectl.cli.render import Output, write_records, write_rows
from statectl.core import codec, layout
from statectl.core.durations import iso
from statectl.core.filters import RowFilter
from statectl.core.scopes import AssetScope, TaskScope
from statectl.ops.read import LISTING_COLUMNS, list_entries, list_records
from statectl.stores.metastore import _from_db_ts, iso_timestamp
from tests.cli_support import ASSET, DAG_ID, MAPPED, TASK, core_put, core_store, statectl
from tests.infra import AirflowEnv

pytest_plugins = ["tests.cli_support"]


# --------------------------------------------------------------------------- the shortcuts, one by one


@pytest.mark.parametrize(
    "name",
    ["k.gz", "k.GZ", "k.tar.gz", "k.bz2", "k.xz", "k.lzma", "k.zip", "k.zst", "k.lz4", "k.v1", "k", "k.", "....gz",
     ".gz", "..gz", "a..gz", ".a.gz", "k.Gz", "dir.gz/k", "k.gz/", ""],
)  # fmt: skip
def test_infer_compression_is_fsspecs(name: str) -> None:
    from fsspec.utils import infer_compression

    url = f"file:///base/dag/run/task/-1/{name}"
    assert codec.infer_compression(url) == infer_compression(url.rsplit("/", 1)[-1])


@pytest.mark.parametrize(
    "value",
    [
        None,
        "2026-01-02 03:04:05.000000",
        "2026-01-02 03:04:05.000100",
        "0999-12-31 23:59:59.999999",
        "2026-01-02 03:04:05",  # not SQLAlchemy's shape: parsed
        "2026-01-02T03:04:05+02:00",
        datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=timezone(timedelta(hours=-5))),  # psycopg2, a non-UTC session
        datetime(2026, 1, 2, 3, 4, 5),
    ],
)
def test_iso_timestamp_is_iso_of_the_parsed_column(value: Any) -> None:
    assert iso_timestamp(value) == iso(_from_db_ts(value))


class Color(StrEnum):
    red = "red"


ROWS: list[tuple[Any, ...]] = [
    ("a", 1, None, 'q"uote\\back', "é ✓ \u2028", -1),
    ("a", 1, None, "\x00\x1f\t\n", True, 2.5),
    ("b", 1, None, Color.red, {"n": [1, None]}, datetime(2026, 1, 1, tzinfo=UTC)),  # dumps(default=str) for these
    ("b", 2, "x", "", False, float("nan")),
]


@pytest.mark.parametrize("fmt", [Output.jsonl, Output.json, Output.csv, Output.plain])
@pytest.mark.parametrize("shared", [0, 1, 3, 6])
@pytest.mark.parametrize("batches", [[ROWS], [ROWS[:1], ROWS[1:3], ROWS[3:]], []])
def test_write_rows_writes_what_write_records_writes(fmt: Output, shared: int, batches: list[Any]) -> None:
    columns = ["c1", "c2", "c3", "c4", "c5", "c6"]
    rows, records = io.StringIO(), io.StringIO()
    counted = write_rows(batches, columns, fmt, rows, shared_prefix=shared)
    expected = write_records((dict(zip(columns, r, strict=True)) for b in batches for r in b), columns, fmt, records)
    assert rows.getvalue() == records.getvalue() and counted == expected


# --------------------------------------------------------------------------- ls end to end


def reference_records(env: dict[str, str]) -> list[dict[str, Any]]:
    """What ls listed before it streamed tuples: a dict per Entry, its fields from StateRow and StoredValue."""
    store = core_store(env)
    try:
        records = []
        for entry in list_entries(store, RowFilter()):
            row, stored, scope = entry.row, entry.stored, entry.row.scope
            task = scope if isinstance(scope, TaskScope) else None
            records.append(
                {
                    "kind": scope.kind,
                    "dag_id": task.dag_id if task else None,
                    "run_id": task.run_id if task else None,
                    "task_id": task.task_id if task else None,
                    "map_index": task.map_index if task else None,
                    "asset": None if task else scope.label(),
                    "key": row.key,
                    "bytes": stored.stored_bytes,
                    "location": stored.location.value,
                    "compression": stored.compression,
                    "updated_at": iso(row.updated_at),
                    "expires_at": iso(row.expires_at),
                    "object": stored.object_url,
                }
            )
        assert [tuple(r.values()) for r in records] == [t for b in list_records(store, RowFilter()) for t in b]
        return records
    finally:
        store.close()


@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_ls_writes_the_same_bytes_in_every_format(db: str, request: pytest.FixtureRequest) -> None:
    airflow: AirflowEnv = request.getfixturevalue("seeded" if db == "sqlite" else "pg_seeded")
    env = airflow.with_backend(airflow.bucket_url, threshold=10, compression="gzip")
    run_id = airflow.query("SELECT run_id FROM dag_run")[0][0]
    scope = TaskScope(DAG_ID, run_id, TASK)
    core_put(env, scope, 'clé "✓"', {"ü": "line\u2028sep", "q": 'a"b\\c'})  # an object, a non-ASCII key
    core_put(env, scope, "inline", 1)
    for i in range(3):
        core_put(env, TaskScope(DAG_ID, run_id, MAPPED, i), "part", i)
    core_put(env, AssetScope(name=ASSET), "wm", "w" * 30)
    base = layout.parse_base_path(airflow.bucket_url)
    odd = {
        "plain": '"é"',  # raw UTF-8 in the column: bytes are not characters
        "members": '{"__airflow_state_ref__": "7", "other": 1}',  # not the worker's wrapper: parsed in full
        "upper": codec.wrap_ref(str(base.child("d", "r", "t", "-1", "K.GZ"))),
        "zst": codec.wrap_ref(str(base.child("d", "r", "t", "-1", "k.zst"))),
        "dots": codec.wrap_ref(str(base.child("d", "r", "t", "-1", "....gz"))),
    }
    dag_run_id = airflow.query("SELECT id FROM dag_run")[0][0]
    for key, value in odd.items():
        airflow.query(
            'INSERT INTO task_state_store (dag_run_id, task_id, map_index, "key", dag_id, run_id, value, updated_at) '
            "VALUES (:dr, :t, -1, :k, :d, :r, :v, :u)",
            dr=dag_run_id,
            t=TASK,
            k=key,
            d=DAG_ID,
            r=run_id,
            v=value,
            u="2026-01-02 03:04:05.000000",
        )  # updated_at without a fraction: an ISO time without one
    airflow.query("UPDATE task_state_store SET expires_at = '2026-01-01 00:00:00.000000' WHERE \"key\" = 'inline'")

    records = reference_records(env)
    assert {r["location"] for r in records} == {"plain", "inline", "object"} and len(records) >= 11
    for fmt in ("jsonl", "json", "csv", "plain"):
        expected = io.StringIO()
        write_records(iter(records), list(LISTING_COLUMNS), Output(fmt), expected)
        result = statectl(env, "ls", "-o", fmt)
        assert result.code == 0, str(result)
        assert result.stdout == expected.getvalue(), fmt
    lines = statectl(env, "ls", "-o", "jsonl").stdout.splitlines()
    assert [json.loads(line) for line in lines] == records
