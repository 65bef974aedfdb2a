"""End to end: real DAG runs (dag.test()) against SQLite and PostgreSQL metastores, and the statectl CLI.

For each metastore, with the object storage backend (file:// bucket, gzip, a threshold that sends some
values inline and some to objects) and with no worker backend (plain values):

(a) a writer DAG stores task state (incl. a mapped task with 3 map indexes, retention=timedelta,
    NEVER_EXPIRE and the default) and asset state (an Asset whose name != uri) through the real
    worker + provider; `statectl get -o json` returns every value exactly and `statectl ls -o json`
    lists every row with the right location, object URL and expires_at.
(b) statectl `rm`s every one of those values and `put`s them again: the rows hold the very column
    text the worker stored, objects sit at the same URLs with the same (decompressed and, modulo the
    gzip mtime, compressed) bytes, expires_at is set/unset alike. Then a reader DAG runs:
    - its asset task reads, through context["asset_state_store"], the values statectl put (re-put
      ones and new ones above and below the threshold);
    - its task-state tasks (one plain, one mapped over 3 indexes) each run `statectl put` for their
      OWN task instance while they run, then read the value back through context["task_state_store"]:
      a real worker reading task state statectl wrote, in the same dag run, without any waiting.
    Every check inside a task asserts; a failed assertion fails the run and so this test.
"""

from __future__ import annotations

import gzip
import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.infra import VENV_BIN, AirflowEnv, json_literal, run_dag

pytestmark = pytest.mark.slow

STATECTL = str(VENV_BIN / "statectl")
THRESHOLD = 21
WRITER_DAG = "statectl_e2e_writer"
READER_DAG = "statectl_e2e_reader"
ASSET_NAME = "statectl_e2e_asset"
ASSET_URI = "file:///tmp/statectl-e2e/asset%20one"  # name != uri: workers address the folder by name

# key -> (value, retention): "default" = [state_store] default_retention_days, "6h", "never".
TASK_VALUES: dict[str, tuple[Any, str]] = {
    "big/one:1 x%": ({"payload": "x" * 50, "n": [1, 2.5, True, None]}, "default"),
    "small": (1, "6h"),
    "never big": ("y" * 40, "never"),
    "never small": ([1, 2], "never"),
    "ttl big?#": ({"nested": {"a": [1.5, False]}, "pad": "z" * 30}, "6h"),
    "exactly21": ("s" * 19, "default"),  # json.dumps is 21 bytes == threshold: an object
    "just20": ("s" * 18, "default"),  # 20 bytes: inline
}
# map index -> value of key "m"; index 0 stays inline (20 bytes), 1 and 2 become objects.
MAPPED_VALUES: dict[int, Any] = {i: {"i": i, "pad": "p" * (i * 20)} for i in range(3)}
ASSET_VALUES: dict[str, Any] = {"watermark": {"w": "z" * 40}, "tiny": 7, "cursor/at:1": "2024-01-01T00:00:00+00:00"}
# Written only by statectl, read by the reader DAG's asset task.
NEW_ASSET_VALUES: dict[str, Any] = {"from statectl big": {"rows": list(range(20))}, "from statectl small": "ok"}
# Written by statectl from inside the reader's own task instances, read back by the same worker.
ROUNDTRIP_VALUES: dict[str, Any] = {"rt big/1": {"payload": "q" * 60}, "rt small": 3}


WRITER_SOURCE = f"""
import json
from datetime import datetime, timedelta

from airflow.sdk import Asset, dag, task
from airflow.sdk.execution_time.context import NEVER_EXPIRE

ASSET = Asset(name={ASSET_NAME!r}, uri={ASSET_URI!r})
TASK_VALUES = {json_literal(TASK_VALUES)}
MAPPED_VALUES = {json_literal(MAPPED_VALUES)}
ASSET_VALUES = {json_literal(ASSET_VALUES)}


@dag(dag_id={WRITER_DAG!r}, schedule=None, start_date=datetime(2024, 1, 1), catchup=False)
def writer_dag():
    @task(outlets=[ASSET])
    def writer(**context):
        store = context["task_state_store"]
        for key, (value, retention) in TASK_VALUES.items():
            if retention == "default":
                store.set(key, value)
            else:
                store.set(key, value, retention=NEVER_EXPIRE if retention == "never" else timedelta(hours=6))
        for key, value in ASSET_VALUES.items():
            context["asset_state_store"][ASSET].set(key, value)

    @task
    def mapped(i, **context):
        context["task_state_store"].set("m", MAPPED_VALUES[str(i)])

    writer()
    mapped.expand(i=[0, 1, 2])


d = writer_dag()

if __name__ == "__main__":
    d.test()
"""

READER_SOURCE = f'''
import json
import os
import subprocess
from datetime import datetime

from airflow.sdk import Asset, dag, task

STATECTL = {STATECTL!r}
ASSET = Asset(name={ASSET_NAME!r}, uri={ASSET_URI!r})
EXPECTED_ASSET = {json_literal({**ASSET_VALUES, **NEW_ASSET_VALUES})}
ROUNDTRIP_VALUES = {json_literal(ROUNDTRIP_VALUES)}


def same(got, want):
    # Equal and of the same JSON types (1 vs 1.0 vs True).
    return got == want and json.dumps(got) == json.dumps(want)


def put_then_read(context, map_index, keys):
    """statectl writes this very task instance's state while it runs; the worker reads it back."""
    ti = context["ti"]
    for key in keys:
        value = ROUNDTRIP_VALUES[key]
        value = [value, map_index]
        cmd = [STATECTL, "put", key, json.dumps(value), "--dag", ti.dag_id, "--run", ti.run_id,
               "--task", ti.task_id, "--map-index", str(map_index), "-o", "json"]
        done = subprocess.run(cmd, env=dict(os.environ), capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, (cmd, done.stdout, done.stderr)
        print("STATECTL_PUT", done.stdout.strip())
        got = context["task_state_store"].get(key)
        assert same(got, value), (key, got, value)


@dag(dag_id={READER_DAG!r}, schedule=None, start_date=datetime(2024, 1, 1), catchup=False)
def reader_dag():
    @task(inlets=[ASSET])
    def read_assets(**context):
        accessor = context["asset_state_store"][ASSET]
        for key, want in EXPECTED_ASSET.items():
            got = accessor.get(key)
            assert same(got, want), (key, got, want)
        assert accessor.get("never written", "absent") == "absent"

    @task
    def roundtrip(**context):
        put_then_read(context, -1, list(ROUNDTRIP_VALUES))

    @task
    def roundtrip_mapped(i, **context):
        # One key per map index (each statectl call costs a process start): big, small, big.
        put_then_read(context, i, [sorted(ROUNDTRIP_VALUES)[i % 2]])

    read_assets()
    roundtrip()
    roundtrip_mapped.expand(i=[0, 1, 2])


d = reader_dag()

if __name__ == "__main__":
    d.test()
'''


# -- helpers ---------------------------------------------------------------------------------------


def statectl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([STATECTL, *args], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"statectl {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def parallel(calls: list[tuple[Any, ...]], fn: Any) -> list[Any]:
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(lambda c: fn(*c), calls))


def scope_flags(task_id: str | None, run_id: str, map_index: int = -1) -> list[str]:
    if task_id is None:
        return ["--asset", ASSET_NAME]
    flags = ["--dag", WRITER_DAG, "--run", run_id, "--task", task_id]
    return [*flags, "--map-index", str(map_index)] if map_index != -1 else flags


def expected_entries() -> list[tuple[str | None, int, str, Any, str | None]]:
    """(task_id or None for the asset, map_index, key, value, retention) for every value written."""
    entries: list[tuple[str | None, int, str, Any, str | None]] = [
        ("writer", -1, key, value, retention) for key, (value, retention) in TASK_VALUES.items()
    ]
    entries += [("mapped", i, "m", value, "default") for i, value in MAPPED_VALUES.items()]
    entries += [(None, -1, key, value, None) for key, value in ASSET_VALUES.items()]
    return entries


def snapshot(home: AirflowEnv) -> dict[tuple[str | None, int, str], tuple[str, Any]]:
    """Every state row's column text (and expires_at for task rows), keyed by scope and key."""
    rows: dict[tuple[str | None, int, str], tuple[str, Any]] = {}
    for task_id, map_index, key, value, expires_at in home.query(
        "SELECT task_id, map_index, key, value, expires_at FROM task_state_store WHERE dag_id = :d", d=WRITER_DAG
    ):
        rows[(task_id, map_index, key)] = (value, _aware(expires_at))
    for key, value in home.query(
        "SELECT s.key, s.value FROM asset_state_store s JOIN asset a ON a.id = s.asset_id WHERE a.name = :n",
        n=ASSET_NAME,
    ):
        rows[(None, -1, key)] = (value, None)
    return rows


def _aware(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def object_ref(column_text: str) -> str | None:
    """The object URL a row points to (the file:// bucket), else None."""
    document = json.loads(column_text)
    if not isinstance(document, dict) or "__airflow_state_ref__" not in document:
        return None
    ref = document["__airflow_state_ref__"]
    return ref if ref.startswith("file://") else None


def object_path(column_text: str) -> Path | None:
    ref = object_ref(column_text)
    return None if ref is None else Path(ref.removeprefix("file://"))


def expected_location(value: Any, offload: bool) -> str:
    if not offload:
        return "plain"
    return "object" if len(json.dumps(value).encode()) >= THRESHOLD else "inline"


def check_expiry(expires_at: datetime | None, retention: str | None, now: datetime) -> None:
    if retention in (None, "never"):
        assert expires_at is None
    elif retention == "6h":
        assert expires_at is not None
        assert abs(expires_at - (now + timedelta(hours=6))) < timedelta(minutes=10)
    else:  # default_retention_days = 30
        assert expires_at is not None
        assert abs(expires_at - (now + timedelta(days=30))) < timedelta(minutes=10)


def put_args(task_id: str | None, map_index: int, key: str, value: Any, retention: str | None, run_id: str):
    args = ["put", key, json.dumps(value), *scope_flags(task_id, run_id, map_index), "-o", "json"]
    if retention == "never":
        args.append("--never-expire")
    elif retention == "6h":
        args += ["--ttl", "6h"]
    return args


# -- the test ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("db", "offload"),
    [("sqlite", True), ("postgresql", True), ("sqlite", False)],
    ids=["sqlite-objectstorage-gzip", "postgresql-objectstorage-gzip", "sqlite-no-backend"],
)
def test_worker_and_statectl_round_trip(request: pytest.FixtureRequest, db: str, offload: bool, tmp_path: Path) -> None:
    # (The no-backend case runs on SQLite only to keep the slow suite short: its metastore side is
    # the same SQL as the PostgreSQL object storage case, which covers that dialect.)
    home: AirflowEnv = request.getfixturevalue("airflow_home" if db == "sqlite" else "pg_airflow_home")
    env = home.with_backend(home.bucket_url, threshold=THRESHOLD, compression="gzip") if offload else dict(home.env)
    env["AIRFLOW__STATE_STORE__DEFAULT_RETENTION_DAYS"] = "30"

    # ---- (a) the worker writes; statectl reads -------------------------------------------------
    run_dag(env, WRITER_SOURCE, tmp_path)
    now = datetime.now(tz=UTC)
    [(run_id,)] = home.query("SELECT run_id FROM dag_run WHERE dag_id = :d", d=WRITER_DAG)
    entries = expected_entries()
    worker_rows = snapshot(home)
    assert set(worker_rows) == {(t, m, k) for t, m, k, _, _ in entries}
    worker_objects: dict[Path, bytes] = {}
    for text, _ in worker_rows.values():
        path = object_path(text)
        if path is not None:
            worker_objects[path] = path.read_bytes()
    if offload:
        # Sanity of the setup itself: both locations occur, incl. the threshold boundary.
        assert 0 < len(worker_objects) < len(entries)
    else:
        assert not worker_objects and not any(home.bucket_dir.rglob("*"))

    get_calls = [(env, "get", k, *scope_flags(t, run_id, m), "-o", "json") for t, m, k, *_ in entries]
    got = parallel(get_calls, statectl)
    for (task_id, map_index, key, value, _), proc in zip(entries, got, strict=True):
        assert json.loads(proc.stdout) == value, (task_id, map_index, key, proc.stdout)
        assert json.dumps(json.loads(proc.stdout)) == json.dumps(value)

    listed = json.loads(statectl(env, "ls", "-o", "json").stdout)
    by_key = {(r["task_id"], r["map_index"] if r["kind"] == "task" else -1, r["key"]): r for r in listed}
    assert set(by_key) == set(worker_rows), "ls lists exactly the rows in the metastore"
    for task_id, map_index, key, value, retention in entries:
        record = by_key[(task_id, map_index, key)]
        text, expires_at = worker_rows[(task_id, map_index, key)]
        assert record["kind"] == ("asset" if task_id is None else "task")
        if task_id is None:
            assert record["asset"] == ASSET_NAME
        else:
            assert (record["dag_id"], record["run_id"]) == (WRITER_DAG, run_id)
        assert record["location"] == expected_location(value, offload), (key, record)
        assert record["bytes"] == len(text.encode())
        path = object_path(text)
        if record["location"] == "object":
            assert path is not None and record["object"] == object_ref(text) and record["compression"] == "gzip"
            assert json.loads(gzip.decompress(path.read_bytes())) == value
        else:
            assert record["object"] is None and record["compression"] is None
        check_expiry(_aware(record["expires_at"] and datetime.fromisoformat(record["expires_at"])), retention, now)
        assert (record["expires_at"] is None) == (expires_at is None)

    # ---- (b) statectl removes and rewrites the same values: identical rows and objects -------------
    scopes = sorted({(t, m) for t, m, *_ in entries}, key=repr)
    for task_id, map_index in scopes:
        keys = [k for t, m, k, *_ in entries if (t, m) == (task_id, map_index)]
        statectl(env, "rm", *keys, *scope_flags(task_id, run_id, map_index), "-o", "json")
    assert snapshot(home) == {}
    assert not any(p.exists() for p in worker_objects), "rm deletes the objects of the rows it removes"

    parallel([(env, *put_args(t, m, k, v, r, run_id)) for t, m, k, v, r in entries], statectl)
    statectl_rows = snapshot(home)
    assert set(statectl_rows) == set(worker_rows)
    for where, (text, expires_at) in statectl_rows.items():
        worker_text, worker_expires = worker_rows[where]
        assert text == worker_text, f"{where}: statectl stored {text!r}, the worker {worker_text!r}"
        assert (expires_at is None) == (worker_expires is None), where
        if expires_at is not None:
            assert abs(expires_at - worker_expires) < timedelta(minutes=10), where
    for path, worker_bytes in worker_objects.items():
        mine = path.read_bytes()
        assert gzip.decompress(mine) == gzip.decompress(worker_bytes), path
        assert mine[:4] + mine[8:] == worker_bytes[:4] + worker_bytes[8:], f"{path}: gzip bytes beyond mtime differ"

    # New asset values only statectl writes, then a real worker reads every asset value back.
    for key, value in NEW_ASSET_VALUES.items():
        out = json.loads(statectl(env, "put", key, json.dumps(value), "--asset", ASSET_NAME, "-o", "json").stdout)
        assert out["location"] == expected_location(value, offload), out
    reader = run_dag(env, READER_SOURCE, tmp_path)
    puts = [
        json.loads(line.split("STATECTL_PUT", 1)[1]) for line in reader.stdout.splitlines() if "STATECTL_PUT" in line
    ]
    expected_rt = [("roundtrip", -1, k) for k in ROUNDTRIP_VALUES]
    expected_rt += [("roundtrip_mapped", i, sorted(ROUNDTRIP_VALUES)[i % 2]) for i in range(3)]
    assert len(puts) == len(expected_rt), reader.stdout[-3000:]
    if offload:
        assert {p["location"] for p in puts} == {"inline", "object"}
    rt_rows = home.query(
        "SELECT task_id, map_index, key, value FROM task_state_store WHERE dag_id = :d ORDER BY task_id, map_index",
        d=READER_DAG,
    )
    assert sorted((t, m, k) for t, m, k, _ in rt_rows) == sorted(expected_rt)
    for _task_id, map_index, key, text in rt_rows:
        value = [ROUNDTRIP_VALUES[key], map_index]
        path = object_path(text)
        if expected_location(value, offload) == "object":
            assert path is not None and json.loads(gzip.decompress(path.read_bytes())) == value
        else:
            assert path is None and json.loads(text) == (
                {"__airflow_state_ref__": json.dumps(value)} if offload else value
            )
