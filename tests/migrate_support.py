"""Helpers for the migrate tests: the installed provider as the oracle (what a worker writes and
reads), every state row of a metastore, and statectl's own decoding of it.

Not a conftest: imported by tests/test_migrate*.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from tests.cli_support import ASSET, DAG_ID, MAPPED, TASK
from tests.infra import AirflowEnv

REF_KEY = "__airflow_state_ref__"
PROVIDER_ENV_PREFIXES = ("AIRFLOW__COMMON_IO__", "AIRFLOW__WORKERS__", "AIRFLOW_CONN_")

# (task_id or None for an asset row, map_index, key)
RowKey = tuple[str | None, int, str]


def _provider_module() -> Any:
    from airflow.providers.common.io.state_store import backend

    return backend


def _clear_provider_caches() -> None:
    p = _provider_module()
    for fn in (p._get_base_path, p._get_compression, p._get_threshold):
        fn.cache_clear()


@contextlib.contextmanager
def provider(env: Mapping[str, str]) -> Iterator[Any]:
    """The installed StateStoreObjectStorageBackend, configured from a worker's environment."""
    with pytest.MonkeyPatch.context() as mp:
        for name in [n for n in env if n.startswith(PROVIDER_ENV_PREFIXES)]:
            mp.setenv(name, env[name])
        _clear_provider_caches()
        try:
            yield _provider_module().StateStoreObjectStorageBackend()
        finally:
            _clear_provider_caches()
    _clear_provider_caches()


def sdk_scope(row: RowKey, dag_id: str, run_id: str, asset_name: str) -> Any:
    from airflow.sdk.state import AssetScope, TaskScope

    task_id, map_index, _ = row
    if task_id is None:
        return AssetScope(name=asset_name)
    return TaskScope(dag_id, run_id, task_id, map_index)


def worker_column(backend: Any, row: RowKey, value: Any, dag_id: str, run_id: str, asset_name: str) -> str:
    """The column text a worker with the provider stores for a value (the provider writes its object)."""
    scope = sdk_scope(row, dag_id, run_id, asset_name)
    if row[0] is None:
        ref = backend.serialize_asset_state_store_to_ref(value=value, key=row[2], scope=scope)
    else:
        ref = backend.serialize_task_state_store_to_ref(value=value, key=row[2], scope=scope)
    return json.dumps({REF_KEY: ref})


def worker_read(backend: Any, column_text: str, asset: bool = False) -> Any:
    """What a worker with the provider reads for a column: the ref unwrapped and deserialized."""
    document = json.loads(column_text)
    if isinstance(document, dict) and REF_KEY in document:
        ref = document[REF_KEY]
        if asset:
            return backend.deserialize_asset_state_store_from_ref(ref)
        return backend.deserialize_task_state_store_from_ref(ref)
    return document


def ref_url(column_text: str) -> str | None:
    """The object URL of a ref row, else None (plain or inline)."""
    document = json.loads(column_text)
    if not isinstance(document, dict) or REF_KEY not in document:
        return None
    ref = document[REF_KEY]
    return ref if "://" in ref else None


def location(column_text: str) -> str:
    document = json.loads(column_text)
    if not isinstance(document, dict) or REF_KEY not in document:
        return "plain"
    return "object" if "://" in document[REF_KEY] else "inline"


def state_rows(env: AirflowEnv) -> dict[RowKey, str]:
    """Every task and asset state row's column text."""
    rows: dict[RowKey, str] = {}
    for task_id, map_index, key, value in env.query('SELECT task_id, map_index, "key", value FROM task_state_store'):
        rows[(task_id, int(map_index), key)] = value
    for key, value in env.query('SELECT "key", value FROM asset_state_store'):
        rows[(None, -1, key)] = value
    return rows


def core_values(environ: dict[str, str]) -> dict[RowKey, Any]:
    """Every value as statectl's core decodes it (StateStore.decode of each row)."""
    from statectl.core import codec
    from statectl.core.config import Config
    from statectl.core.filters import RowFilter
    from statectl.stores.store import StateStore

    store = StateStore(Config(environ=environ))
    # Airflow resolves connections from the process environment, as in a statectl process.
    connections = {k: v for k, v in environ.items() if k.startswith("AIRFLOW_CONN_")}
    saved = {k: os.environ.get(k) for k in connections}
    os.environ.update(connections)
    try:
        values: dict[RowKey, Any] = {}
        for row in store.metastore.iter_rows(RowFilter()):
            scope = row.scope
            where: RowKey = (
                (scope.task_id, scope.map_index, row.key) if row.kind == "task" else (None, -1, row.key)  # type: ignore[union-attr]
            )
            values[where] = store.decode(codec.classify(row.value))[0]
        return values
    finally:
        store.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def same(got: Any, want: Any) -> bool:
    """Equal and of the same JSON types (1 vs 1.0 vs True)."""
    return got == want and json.dumps(got) == json.dumps(want)


# -- many plain rows, for the kill tests ----------------------------------------------------------
N_TASK_ROWS = 1900
N_ASSET_ROWS = 100
THRESHOLD = 256
SIZES = (5, 60, 240, 300, 1200, 5000)  # below and above the threshold


def value_for(i: int) -> Any:
    pad = SIZES[i % len(SIZES)]
    return {"i": i, "pad": "x" * pad} if i % 3 else ["v", i, "y" * pad]


def seed_rows(home: AirflowEnv) -> dict[RowKey, Any]:
    """Insert task and asset rows the way the server stores them without a worker backend."""
    assert home.db_path is not None
    expected: dict[RowKey, Any] = {}
    now = "2026-01-01 00:00:00.000000"
    with sqlite3.connect(home.db_path) as conn:
        (dag_run_id, run_id) = conn.execute("SELECT id, run_id FROM dag_run WHERE dag_id = ?", (DAG_ID,)).fetchone()
        (asset_id,) = conn.execute("SELECT id FROM asset WHERE name = ?", (ASSET,)).fetchone()
        scopes = [(TASK, -1), (MAPPED, 0), (MAPPED, 1), (MAPPED, 2)]
        task_rows = []
        for i in range(N_TASK_ROWS):
            task_id, map_index = scopes[i % len(scopes)]
            key = f"key/{i:05d}:x"
            expected[(task_id, map_index, key)] = value_for(i)
            task_rows.append((dag_run_id, task_id, map_index, key, DAG_ID, run_id, json.dumps(value_for(i)), now))
        conn.executemany(
            'INSERT INTO task_state_store (dag_run_id, task_id, map_index, "key", dag_id, run_id, value, updated_at) '
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            task_rows,
        )
        asset_rows = []
        for i in range(N_ASSET_ROWS):
            key = f"asset key {i:04d}"
            expected[(None, -1, key)] = value_for(10_000 + i)
            asset_rows.append((asset_id, key, json.dumps(value_for(10_000 + i)), now))
        conn.executemany(
            'INSERT INTO asset_state_store (asset_id, "key", value, updated_at, last_updated_by_kind) '
            "VALUES (?, ?, ?, ?, 'api')",
            asset_rows,
        )
    return expected
