"""statectl on Azure Blob Storage (Azurite), reached exactly as a worker reaches it.

ONE real DAG run (dag.test(), SQLite metastore) writes task and asset state through the installed
common-io provider with base ``abfs://<conn_id>@<container>/state`` (gzip, threshold 16): the Azure
provider builds adlfs's AzureBlobFileSystem from the ``AIRFLOW_CONN_<ID>`` connection string, and so does
statectl (Airflow's ``attach``). Values with retention 1 s are expired by the time prune runs; one task
runs ``statectl put`` for its own task instance and reads the value back through the worker's
``context["task_state_store"]``. Every test gets the metastore and the container restored to what the
run left (in place: the refs hold the container's name).

Then every command on that state: ls, get, where, check, doctor, put, rm, clear, migrate to-metastore /
to-bucket / relocate, prune (expired rows and objects, the lock object), plus a listing over more than
one page (5001 blobs), byte parity with the provider and a connection of the wrong type.
"""

from __future__ import annotations

import gzip
import json
import logging
import shutil
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from statectl.errors import ExitCode
from tests.cli_support import STATECTL, Result, db_snapshot, statectl
from tests.infra import AirflowEnv, json_literal, run_dag, sqlite_env
from tests.infra_azure import AzureContainer, Azurite, create_container, plant_blobs, start_azurite

pytestmark = pytest.mark.slow
# azure-core logs every request and response at INFO: keep failure reports readable.
logging.getLogger("azure").setLevel(logging.WARNING)

DAG = "statectl_azure_writer"
ASSET_NAME = "statectl_azure_asset"
ASSET_URI = "file:///tmp/statectl-azure-asset"
THRESHOLD = 16
COMPRESSION = "gzip"
LOCK = ".statectl~prune.lock"
BIG = "x" * 40

# key -> (value, retention): "default" (30 days), "never", "expire" (1 s: expired when the tests run)
TASK_VALUES: dict[str, tuple[Any, str]] = {
    "big/one:1 x%": ({"payload": BIG, "n": [1, 2.5, True, None]}, "default"),
    "small": (1, "default"),
    "never big": ({"v": BIG}, "never"),
    "expired_obj": ({"v": BIG}, "expire"),
    "expired_inline": (2, "expire"),
}
MAPPED_VALUES: dict[int, Any] = {0: 0, 1: {"i": 1, "pad": BIG}, 2: {"i": 2, "pad": BIG}}
ASSET_VALUES: dict[str, Any] = {"watermark": {"w": BIG}, "tiny": 7}
# Put by statectl from inside the running task instance, read back by that worker.
ROUNDTRIP_KEY = "from statectl"
ROUNDTRIP_VALUE = {"written_by": "statectl", "pad": BIG}

WRITER_SOURCE = f"""
import json
import os
import subprocess
from datetime import datetime, timedelta

from airflow.sdk import Asset, dag, task
from airflow.sdk.execution_time.context import NEVER_EXPIRE

ASSET = Asset(name={ASSET_NAME!r}, uri={ASSET_URI!r})
TASK_VALUES = {json_literal(TASK_VALUES)}
MAPPED_VALUES = {json_literal(MAPPED_VALUES)}
ASSET_VALUES = {json_literal(ASSET_VALUES)}
ROUNDTRIP_VALUE = {json_literal(ROUNDTRIP_VALUE)}
STATECTL = {STATECTL!r}


@dag(dag_id={DAG!r}, schedule=None, start_date=datetime(2024, 1, 1), catchup=False)
def writer_dag():
    @task(outlets=[ASSET])
    def writer(**context):
        store = context["task_state_store"]
        for key, (value, retention) in TASK_VALUES.items():
            if retention == "default":
                store.set(key, value)
            elif retention == "never":
                store.set(key, value, retention=NEVER_EXPIRE)
            else:
                store.set(key, value, retention=timedelta(seconds=1))
        for key, value in ASSET_VALUES.items():
            context["asset_state_store"][ASSET].set(key, value)

    @task
    def mapped(i, **context):
        context["task_state_store"].set("m", MAPPED_VALUES[str(i)])

    @task
    def roundtrip(**context):
        ti = context["ti"]
        cmd = [STATECTL, "put", {ROUNDTRIP_KEY!r}, json.dumps(ROUNDTRIP_VALUE), "--dag", ti.dag_id,
               "--run", ti.run_id, "--task", ti.task_id, "-o", "json"]
        done = subprocess.run(cmd, env=dict(os.environ), capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, (done.stdout, done.stderr)
        print("STATECTL_PUT", done.stdout.strip())
        got = context["task_state_store"].get({ROUNDTRIP_KEY!r})
        assert got == ROUNDTRIP_VALUE, got
        print("WORKER_READ", json.dumps(got))

    writer() >> mapped.expand(i=[0, 1, 2])
    roundtrip()


d = writer_dag()

if __name__ == "__main__":
    d.test()
"""

# --------------------------------------------------------------------------- fixtures

RowKey = tuple[str | None, int, str]  # (task_id, map_index, key); (None, -1, key) for the asset


def expected_values() -> dict[RowKey, Any]:
    values: dict[RowKey, Any] = {("writer", -1, k): v for k, (v, _) in TASK_VALUES.items()}
    values.update({("mapped", i, "m"): v for i, v in MAPPED_VALUES.items()})
    values[("roundtrip", -1, ROUNDTRIP_KEY)] = ROUNDTRIP_VALUE
    values.update({(None, -1, k): v for k, v in ASSET_VALUES.items()})
    return values


def offloaded(value: Any) -> bool:
    return len(json.dumps(value).encode()) >= THRESHOLD


EXPIRED: set[RowKey] = {("writer", -1, k) for k, (_, r) in TASK_VALUES.items() if r == "expire"}
N_OBJECTS = sum(offloaded(v) for v in expected_values().values())


@dataclass
class Seeded:
    """The state ONE DAG run left: the metastore, the container, and copies to restore them from."""

    home: AirflowEnv
    container: AzureContainer
    env: dict[str, str]  # the workers' (and statectl's) environment
    run_id: str
    dag_output: str
    pristine_db: Path
    pristine_blobs: dict[str, bytes]

    @property
    def base(self) -> str:
        return self.container.url("state")


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    server = start_azurite(tmp_path_factory.mktemp("azurite"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def seeded(azurite: Azurite, airflow_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Seeded:
    root = tmp_path_factory.mktemp("azure_seed")
    container = create_container(azurite)
    home = sqlite_env(airflow_template / "airflow.db", root)
    env = {
        **home.with_backend(container.url("state"), THRESHOLD, COMPRESSION),
        **container.conn_env,
        "AIRFLOW__STATE_STORE__DEFAULT_RETENTION_DAYS": "30",
    }
    proc = run_dag(env, WRITER_SOURCE, root)
    [(run_id,)] = home.query("SELECT run_id FROM dag_run WHERE dag_id = :d", d=DAG)
    assert home.db_path is not None
    pristine_db = root / "pristine.db"
    shutil.copyfile(home.db_path, pristine_db)
    return Seeded(home, container, env, run_id, proc.stdout + proc.stderr, pristine_db, container.snapshot())


@pytest.fixture
def az(seeded: Seeded) -> Seeded:
    """The seeded metastore and container, restored in place to what the DAG run left."""
    assert seeded.home.db_path is not None
    shutil.copyfile(seeded.pristine_db, seeded.home.db_path)
    seeded.container.restore(seeded.pristine_blobs)
    return seeded


@pytest.fixture(autouse=True)
def fresh_airflow_stores(monkeypatch: pytest.MonkeyPatch) -> None:
    """Airflow caches one filesystem per (protocol, conn_id) for the process: none from an earlier test."""
    import airflow.sdk.io.store as store

    monkeypatch.setattr(store, "_STORE_CACHE", {})


# --------------------------------------------------------------------------- helpers


def run(env: dict[str, str], *args: str, code: int = 0) -> Result:
    r = statectl(env, *args)
    assert r.code == code, str(r)
    assert "Traceback" not in r.stderr, str(r)
    return r


def report(env: dict[str, str], *args: str, code: int = 0) -> Any:
    return run(env, *args, "-o", "json", code=code).json()


def flags(where: RowKey, run_id: str) -> list[str]:
    task_id, map_index, _ = where
    if task_id is None:
        return ["--asset", ASSET_NAME]
    return ["--dag", DAG, "--run", run_id, "--task", task_id, "--map-index", str(map_index)]


def state_rows(home: AirflowEnv) -> dict[RowKey, str]:
    """Every state row's column text."""
    rows: dict[RowKey, str] = {
        (t, int(m), k): v for t, m, k, v in home.query('SELECT task_id, map_index, "key", value FROM task_state_store')
    }
    for k, v in home.query('SELECT "key", value FROM asset_state_store'):
        rows[(None, -1, k)] = v
    return rows


def ref_of(text: str) -> str | None:
    """The object URL a row points to, else None (inline or plain)."""
    document = json.loads(text)
    if isinstance(document, dict) and "__airflow_state_ref__" in document:
        ref = document["__airflow_state_ref__"]
        return ref if ref.startswith("abfs://") else None
    return None


def blob_of(seeded: Seeded, text: str) -> str | None:
    """The blob name (in the container) a row points to, else None."""
    ref = ref_of(text)
    if ref is None:
        return None
    prefix = f"abfs://{seeded.container.conn_id}@{seeded.container.container}/"
    assert ref.startswith(prefix), ref
    return ref.removeprefix(prefix)


def get_values(env: dict[str, str], run_id: str, keys: list[RowKey]) -> dict[RowKey, Any]:
    """Each value as `statectl get -o json` prints it (a few processes at a time)."""

    def one(where: RowKey) -> Any:
        return run(env, "get", where[2], *flags(where, run_id), "-o", "json").json()

    with ThreadPoolExecutor(max_workers=6) as pool:
        return dict(zip(keys, pool.map(one, keys), strict=True))


# Read through the CLI (each process start costs seconds); every value is also read in process.
SAMPLE: list[RowKey] = [
    ("writer", -1, "big/one:1 x%"),  # an object
    (None, -1, "tiny"),  # an inline asset value
    (None, -1, "watermark"),  # an asset object
    ("mapped", 2, "m"),  # a mapped task's object
    ("writer", -1, "small"),  # inline
]


def core_values(az: Seeded, monkeypatch: pytest.MonkeyPatch, env: dict[str, str] | None = None) -> dict[RowKey, Any]:
    """Every value as statectl's core decodes it, in this process (the connection from the environment)."""
    from tests.migrate_support import core_values as decode_all

    for var, value in az.container.conn_env.items():
        monkeypatch.setenv(var, value)
    return decode_all(env or az.env)


def same(got: Any, want: Any) -> bool:
    """Equal and of the same JSON types (1 vs 1.0 vs True)."""
    return bool(got == want) and json.dumps(got) == json.dumps(want)


def gunzip_json(data: bytes) -> Any:
    return json.loads(gzip.decompress(data))


# --------------------------------------------------------------------------- the worker's state


def test_the_worker_wrote_through_the_azure_provider(az: Seeded) -> None:
    import hashlib

    rows = state_rows(az.home)
    expected = expected_values()
    assert set(rows) == set(expected)
    referenced: set[str] = set()
    for where, value in expected.items():
        text = rows[where]
        blob = blob_of(az, text)
        if offloaded(value):
            assert blob is not None and blob.startswith("state/"), (where, text)
            referenced.add(blob)
            data = az.container.read(blob)
            assert blob.endswith(".gz") and gzip.decompress(data) == json.dumps(value).encode(), where
            # The checksum statectl verifies its own writes against: the MD5 Azure computed on upload.
            assert bytes(az.container.properties(blob).content_settings.content_md5) == hashlib.md5(data).digest()
        else:
            assert json.loads(text) == {"__airflow_state_ref__": json.dumps(value)}, (where, text)
    # Exactly the objects the rows reference: no directory markers, nothing else.
    assert len(referenced) == N_OBJECTS and set(az.container.names()) == referenced


def test_statectl_put_inside_a_running_task_is_what_that_worker_reads(az: Seeded) -> None:
    [put_line] = [line for line in az.dag_output.splitlines() if "STATECTL_PUT" in line]
    put = json.loads(put_line.split("STATECTL_PUT", 1)[1])
    assert put["location"] == "object" and put["object"].startswith(az.base + "/"), put
    [read_line] = [line for line in az.dag_output.splitlines() if "WORKER_READ" in line]
    assert json.loads(read_line.split("WORKER_READ", 1)[1]) == ROUNDTRIP_VALUE
    text = state_rows(az.home)[("roundtrip", -1, ROUNDTRIP_KEY)]
    assert ref_of(text) == put["object"]
    blob = blob_of(az, text)
    assert blob is not None and gunzip_json(az.container.read(blob)) == ROUNDTRIP_VALUE


# --------------------------------------------------------------------------- reading


def test_ls_get_and_where(az: Seeded, monkeypatch: pytest.MonkeyPatch) -> None:
    env, rows, expected = az.env, state_rows(az.home), expected_values()
    listed = report(env, "ls")
    by_key = {(r["task_id"], r["map_index"] if r["kind"] == "task" else -1, r["key"]): r for r in listed}
    assert len(listed) == len(by_key) and set(by_key) == set(expected)
    for where, value in expected.items():
        record = by_key[where]
        if offloaded(value):
            assert record["location"] == "object" and record["compression"] == COMPRESSION, record
            assert record["object"] == ref_of(rows[where]), record
        else:
            assert record["location"] == "inline" and record["object"] is None, record

    got = get_values(env, az.run_id, SAMPLE)
    for where in SAMPLE:
        assert same(got[where], expected[where]), (where, got[where], expected[where])
    got = core_values(az, monkeypatch)
    assert set(got) == set(expected) and all(same(got[w], v) for w, v in expected.items()), got
    big = ("writer", -1, "big/one:1 x%")
    from_bucket = run(env, "get", big[2], *flags(big, az.run_id), "--from-bucket", "-o", "json").json()
    assert same(from_bucket, expected[big])

    where = report(env, "where", big[2], *flags(big, az.run_id))
    blob = blob_of(az, rows[big])
    assert blob is not None
    assert where["object"]["url"] == where["row"]["ref"] == ref_of(rows[big])
    assert where["object"]["exists"] is True and where["object"]["size"] == len(az.container.read(blob))
    assert where["object"]["compression"] == COMPRESSION and where["object"]["error"] is None
    assert "the row points at the object the provider computes for this key" in where["notes"]
    az.container.delete(blob)
    gone = report(env, "where", big[2], *flags(big, az.run_id))
    assert gone["object"]["exists"] is False and gone["object"]["size"] is None, gone


def counts(check: dict[str, Any]) -> dict[str, int]:
    return {name: f["count"] for name, f in check["findings"].items() if f["count"]}


def test_check_is_clean_then_finds_what_was_planted(az: Seeded) -> None:
    env, rows = az.env, state_rows(az.home)
    clean = report(env, "check", "--deep")
    assert clean["ok"] and clean["scan_complete"] and counts(clean) == {}, clean
    assert clean["objects_read"] == clean["totals"]["objects"] == N_OBJECTS
    assert clean["locations"] == {"plain": 0, "inline": len(rows) - N_OBJECTS, "object": N_OBJECTS}

    dangling = blob_of(az, rows[("writer", -1, "never big")])
    corrupt = blob_of(az, rows[("mapped", 1, "m")])
    assert dangling is not None and corrupt is not None
    az.container.delete(dangling)
    az.container.put(corrupt, b"not gzip at all")
    az.container.put("state/orphan.gz", gzip.compress(b"1"))
    # What ADLS Gen2 (hierarchical namespace) accounts list for directories, and a folder marker: no objects.
    az.container.put("state/a-directory", b"", metadata={"hdi_isfolder": "true"})
    az.container.put("state/folder/", b"")
    planted = time.time()
    found = report(env, "check", "--deep", code=ExitCode.PROBLEMS_FOUND)
    assert counts(found) == {"dangling": 1, "undecodable": 1, "recent_orphans": 1}, counts(found)
    assert found["findings"]["dangling"]["items"][0]["ref"] == ref_of(rows[("writer", -1, "never big")])
    time.sleep(max(0.0, 2 - (time.time() - planted)))
    graceless = report(env, "check", "--grace", "1s", code=ExitCode.PROBLEMS_FOUND)
    assert counts(graceless) == {"dangling": 1, "orphans": 1}, counts(graceless)
    assert [i["path"] for i in graceless["findings"]["orphans"]["items"]] == ["orphan.gz"]


def test_doctor_probes_the_container(az: Seeded) -> None:
    names_before = az.container.names()
    doctor = report(az.env, "doctor")
    by_check = {f["check"]: f for f in doctor["findings"]}
    assert doctor["status"] == "ok", doctor["findings"]
    assert by_check["connection"]["status"] == "ok" and "type wasb" in by_check["connection"]["detail"]
    assert by_check["bucket"]["status"] == "ok", by_check["bucket"]
    assert by_check["bucket"]["detail"].startswith(f"wrote, read back (gzip) and deleted a probe under {az.base}")
    # Azurite, like Azure, refuses a PUT with If-None-Match: * onto an existing blob: the probe found it atomic.
    assert by_check["create_if_absent"] == {
        "check": "create_if_absent",
        "status": "ok",
        "detail": "abfs:// honours atomic create-if-absent writes",
        "fix": "",
    }
    assert az.container.names() == names_before  # neither probe left anything behind
    secret = az.container.connection_string.split("AccountKey=", 1)[1].split(";", 1)[0]
    assert secret not in json.dumps(doctor)


# --------------------------------------------------------------------------- writing


def test_rm_put_clear_and_the_bytes_put_writes(az: Seeded) -> None:
    env, run_id = az.env, az.run_id
    worker_rows = state_rows(az.home)
    big = ("writer", -1, "big/one:1 x%")
    blob = blob_of(az, worker_rows[big])
    assert blob is not None
    provider_bytes = az.container.read(blob)

    removed = report(env, "rm", big[2], *flags(big, run_id))
    assert removed, removed
    assert big not in state_rows(az.home) and blob not in az.container.names()

    put = report(env, "put", big[2], json.dumps(expected_values()[big]), *flags(big, run_id))
    assert put["location"] == "object" and put["object"] == ref_of(worker_rows[big]), put
    assert state_rows(az.home)[big] == worker_rows[big]  # the very column text the worker stored
    mine = az.container.read(blob)
    # Byte parity with the provider: the same gzip stream, header and trailer; only the mtime differs.
    assert mine[:4] + mine[8:] == provider_bytes[:4] + provider_bytes[8:]

    # A new value, above the threshold: an object, read back by get.
    new = ("writer", -1, "new from statectl")
    value = {"n": list(range(10))}
    put = report(env, "put", new[2], json.dumps(value), *flags(new, run_id))
    new_blob = blob_of(az, state_rows(az.home)[new])
    assert put["location"] == "object" and new_blob is not None and gunzip_json(az.container.read(new_blob)) == value

    # clear: every map index of the mapped task, rows first, then their objects.
    mapped_blobs = {blob_of(az, worker_rows[("mapped", i, "m")]) for i in MAPPED_VALUES} - {None}
    assert len(mapped_blobs) == 2 and mapped_blobs <= set(az.container.names())
    report(env, "clear", "--dag", DAG, "--run", run_id, "--task", "mapped", "--all-map-indices")
    assert not {w for w in state_rows(az.home) if w[0] == "mapped"}
    assert not mapped_blobs & set(az.container.names())

    # rm of an asset value takes its object too; the other rows and objects stay.
    watermark = blob_of(az, worker_rows[(None, -1, "watermark")])
    report(env, "rm", "watermark", "--asset", ASSET_NAME)
    assert (None, -1, "watermark") not in state_rows(az.home) and watermark not in az.container.names()
    left = {blob_of(az, t) for w, t in worker_rows.items() if w[0] != "mapped" and w[2] != "watermark"} - {None}
    assert left | {new_blob} == set(az.container.names())


# --------------------------------------------------------------------------- migrate


def test_migrate_to_metastore_and_back_to_the_container(az: Seeded, monkeypatch: pytest.MonkeyPatch) -> None:
    env, expected = az.env, expected_values()
    out = report(env, "migrate", "to-metastore", "--yes")
    assert out["ok"] and out["objects_deleted"] == N_OBJECTS and out["objects_written"] == 0, out
    assert az.container.names() == []
    rows = state_rows(az.home)
    assert {w: json.loads(t) for w, t in rows.items()} == expected  # plain values in every row

    out = report(env, "migrate", "to-bucket", "--yes")
    assert out["ok"] and out["objects_written"] == N_OBJECTS and out["objects_deleted"] == 0, out
    rows = state_rows(az.home)
    blobs = {blob_of(az, t) for t in rows.values()} - {None}
    assert len(blobs) == N_OBJECTS and set(az.container.names()) == blobs
    for where, value in expected.items():
        blob = blob_of(az, rows[where])
        assert (blob is not None) == offloaded(value), where
        if blob is not None:
            assert ref_of(rows[where]) == ref_of(state_rows(az.home)[where])
            assert gunzip_json(az.container.read(blob)) == value, where
    clean = report(env, "check", "--deep")
    assert clean["ok"] and clean["objects_read"] == N_OBJECTS, counts(clean)
    got = core_values(az, monkeypatch)
    assert set(got) == set(expected) and all(same(got[w], v) for w, v in expected.items()), got
    got = get_values(env, az.run_id, SAMPLE[:2])
    assert all(same(got[w], expected[w]) for w in SAMPLE[:2]), got


def test_relocate_to_another_prefix(az: Seeded, monkeypatch: pytest.MonkeyPatch) -> None:
    env, expected = az.env, expected_values()
    before = state_rows(az.home)
    new_base = az.container.url("moved/state")
    out = report(env, "migrate", "relocate", "--to", new_base, "--yes")
    assert out["ok"] and out["objects_written"] == out["objects_deleted"] == N_OBJECTS, out
    assert az.container.names(prefix="state/") == []
    after = state_rows(az.home)
    moved = {blob_of(az, t) for t in after.values()} - {None}
    assert len(moved) == N_OBJECTS and set(az.container.names()) == moved
    for where, text in after.items():
        if ref_of(before[where]) is None:
            assert text == before[where]
        else:
            ref = ref_of(text)
            assert ref is not None and ref.startswith(new_base + "/") and ref.endswith(".gz"), text
            assert ref.removeprefix(new_base) == ref_of(before[where]).removeprefix(az.base)  # type: ignore[union-attr]
    relocated = {**env, "AIRFLOW__COMMON_IO__STATE_STORE_OBJECTSTORAGE_PATH": new_base}
    clean = report(relocated, "check", "--deep")
    assert clean["ok"] and clean["objects_read"] == N_OBJECTS, counts(clean)
    got = core_values(az, monkeypatch, relocated)
    assert set(got) == set(expected) and all(same(got[w], v) for w, v in expected.items()), got
    got = get_values(relocated, az.run_id, SAMPLE[:1])
    assert same(got[SAMPLE[0]], expected[SAMPLE[0]]), got


# --------------------------------------------------------------------------- prune


def lock_text(host: str, pid: int, heartbeat: datetime) -> str:
    started = (heartbeat - timedelta(minutes=1)).isoformat()
    return json.dumps(
        {"host": host, "pid": pid, "token": "their-token", "started": started, "heartbeat": heartbeat.isoformat()}
    )


def test_prune_expired_rows_and_objects_under_the_lock(az: Seeded) -> None:
    env = az.env
    rows = state_rows(az.home)
    expired_blobs = {blob_of(az, rows[w]) for w in EXPIRED} - {None}
    assert len(expired_blobs) == 1 and expired_blobs <= set(az.container.names())
    lock = f"state/{LOCK}"

    # Another run's fresh lock: refused, nothing changed, their lock untouched.
    az.container.put(lock, lock_text("other-host", 99, datetime.now(tz=UTC)).encode())
    db_before = db_snapshot(az.home)
    r = run(env, "prune", "--yes", code=ExitCode.LOCKED)
    assert "other-host/99" in r.stderr, str(r)
    assert db_snapshot(az.home) == db_before and json.loads(az.container.read(lock))["token"] == "their-token"

    # A stale one: taken over (a conditional create after its removal), used, and removed at the end.
    az.container.put(lock, lock_text("other-host", 99, datetime.now(tz=UTC) - timedelta(minutes=11)).encode())
    out = report(env, "prune", "--yes")
    assert any("took over a stale lock held by other-host/99" in note for note in out["lock"]), out["lock"]
    assert not any("best-effort" in note for note in out["lock"]), out["lock"]
    assert out["deleted"]["expired"]["rows"] == len(EXPIRED) and out["deleted"]["expired"]["objects"] == 1, out
    after = state_rows(az.home)
    assert set(after) == set(rows) - EXPIRED
    names = set(az.container.names())
    assert lock not in names and not expired_blobs & names
    assert names == {blob_of(az, t) for t in after.values()} - {None}

    # A fresh orphan (last-modified from the listing, younger than the grace) stays; nothing else to do.
    az.container.put("state/nodag/r/t/-1/k.gz", gzip.compress(b"1"))
    again = report(env, "prune", "--yes")
    assert again["deletions"] == 0 and again["plan"]["categories"]["fresh_orphans"]["objects"] == 1, again
    assert set(az.container.names()) == names | {"state/nodag/r/t/-1/k.gz"}


# --------------------------------------------------------------------------- bad input


def test_a_connection_of_another_type_is_a_configuration_error(az: Seeded) -> None:
    aws = json.dumps({"conn_type": "aws", "login": "key", "password": "secret"})
    env = {**az.env, **{var: aws for var in az.container.conn_env}}
    big = ("writer", -1, "big/one:1 x%")
    put_big = ["put", "k", json.dumps(BIG), "--asset", ASSET_NAME]  # an object: the store is needed
    for args in (["get", big[2], *flags(big, az.run_id)], ["check"], put_big):
        r = statectl(env, *args)
        assert r.code == ExitCode.CONFIG, str(r)
        assert r.stdout == "" and len(r.stderr.strip().splitlines()) == 1, str(r)
        assert "'aws'" in r.stderr and "adls or azure_data_lake or wasb" in r.stderr, str(r)
    assert state_rows(az.home) == state_rows_pristine(az)


def state_rows_pristine(az: Seeded) -> dict[RowKey, str]:
    with sqlite3.connect(az.pristine_db) as conn:
        rows: dict[RowKey, str] = {
            (t, int(m), k): v
            for t, m, k, v in conn.execute("SELECT task_id, map_index, key, value FROM task_state_store")
        }
        rows.update({(None, -1, k): v for k, v in conn.execute("SELECT key, value FROM asset_state_store")})
    return rows


# --------------------------------------------------------------------------- listing


def test_listing_is_in_key_order_page_by_page(azurite: Azurite, monkeypatch: pytest.MonkeyPatch) -> None:
    from statectl.core.layout import ObjectURL
    from statectl.stores import listing
    from statectl.stores.bucket import Buckets

    container = create_container(azurite)
    for var, value in container.conn_env.items():
        monkeypatch.setenv(var, value)
    # Inserted out of order, with names whose order differs between "directories first" and plain byte
    # order ("a-b" < "a/x" < "a0", "Z" < "a", "é" last), directory entries among them: folder markers and
    # what accounts with a hierarchical namespace (ADLS Gen2) list for directories.
    objects = [f"state/o/{i:04d}.gz" for i in range(1200)]
    objects += ["state/a-b", "state/a/x", "state/a0", "state/Z", "state/%2F.gz", "state/é.gz"]
    directories = ["state/o/", "state/o/0600", "state/a"]
    blobs = {name: name.encode() * 3 for name in reversed(objects)}
    plant_blobs(container, blobs.items())
    container.put("state/o/", b"")
    for name in directories[1:]:
        container.put(name, b"", metadata={"hdi_isfolder": "true"})
    container.put("other/x.gz", b"x")  # outside the base path
    objects.sort()
    assert objects != sorted(objects, key=lambda n: n.replace("/", "\0"))  # the names do test the order

    buckets = Buckets()
    base = ObjectURL.parse(container.url("state"))
    fs = buckets.fs(base)
    # Page by page, at most page_size blobs a request, as the service pages them (directories included).
    page_size = 500
    listed_pages = [[o.path for o in page] for page in listing.azure_pages(fs, base, "", page_size)]
    service_order = sorted(objects + directories)
    assert len(service_order) > 2 * page_size  # three pages
    assert listed_pages == [
        [f"{container.container}/{n}" for n in service_order[start : start + page_size] if n not in directories]
        for start in range(0, len(service_order), page_size)
    ]
    # The same objects, in the same order, through statectl's listing (one page of at most 5000) ...
    now = datetime.now(tz=UTC)
    listed = list(buckets.iter_listing(base))
    assert [o.path for o in listed] == [f"{container.container}/{n}" for n in objects]
    for o in listed:
        assert o.size == len(blobs[o.path.split("/", 1)[1]]), o
        assert o.modified is not None and timedelta(0) <= now - o.modified < timedelta(minutes=10), o
    # ... and with a page size of the caller's.
    assert [o.path for o in listing.iter_listing(base, "", buckets.fs, page_size=7)] == [o.path for o in listed]
    # Accounts with a hierarchical namespace list depth-first ("a/x" before "a-b"): there the listing goes one
    # directory at a time. Azurite has none (so the flat listing above), but lists by directory all the same.
    assert listing._hierarchical_namespace(fs, container.container) is False
    walked = list(listing.azure_listing(fs, base, "", 250, hierarchical=True))
    assert walked == listed
    in_o_00 = [n for n in objects if n.startswith("state/o/00")]
    for prefix, expected in (("a", ["state/a-b", "state/a/x", "state/a0"]), ("o/00", in_o_00)):
        # A prefix within the base path lists just that part, still in order, either way.
        assert [o.path.split("/", 1)[1] for o in buckets.iter_listing(base, prefix)] == expected, prefix
        walked = list(listing.azure_listing(fs, base, prefix, 30, hierarchical=True))
        assert [o.path.split("/", 1)[1] for o in walked] == expected, prefix
    # A container that does not exist lists nothing.
    missing = ObjectURL.parse(f"abfs://{container.conn_id}@no-such-container/state")
    assert list(buckets.iter_listing(missing)) == []


# --------------------------------------------------------------------------- parity with the provider (in process)


@pytest.mark.parametrize("compression", [None, "gzip", "bz2", "xz", "zip"])
def test_put_writes_the_providers_bytes(
    azurite: Azurite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compression: str | None
) -> None:
    import airflow.sdk.state as sdk
    from fsspec.asyn import sync

    from statectl.core import codec
    from statectl.core.codec import Location
    from statectl.core.config import Config
    from statectl.core.scopes import TaskScope
    from statectl.stores.bucket import Buckets, ObjectExists, _fresh_info, _same_bytes
    from statectl.stores.store import StateStore
    from tests.parity_support import decompress, normalized, provider_configured, provider_module, worker_column_text

    container = create_container(azurite)
    value = {"payload": "x" * 80, "unicode": "ünï ☃ 😀", "n": [1, 2.5, True, None]}
    ids = ("dag/a b", "manual__2024-01-01T00:00:00+00:00", "task:1%", 2)
    key = "job/id:1 x%?#"
    base = container.url("state")
    with provider_configured(base, threshold=10, compression=compression, extra_env=container.conn_env) as env:
        provider = provider_module().StateStoreObjectStorageBackend()
        ref = provider.serialize_task_state_store_to_ref(value=value, key=key, scope=sdk.TaskScope(*ids))
        store = StateStore(Config(environ={**env, "AIRFLOW_HOME": str(tmp_path)}))
        url = store.object_url_for(TaskScope(*ids), key)
        assert str(url) == ref and url.conn_id == container.conn_id
        encoded = codec.encode(value, offload=True, threshold=store.config.threshold, url=url)
        assert encoded.location is Location.OBJECT and encoded.column_text == worker_column_text(ref)
        name = url.path.split("/", 1)[1]
        assert container.names() == [name]
        provider_bytes = container.read(name)
        assert decompress(provider_bytes, compression) == json.dumps(value).encode()
        assert store.decode(codec.classify(encoded.column_text)) == (value, url)  # statectl reads the provider's

        for if_absent in (False, True):  # put's one verified PUT, and the create-if-absent one migrate uses
            container.delete(name)
            buckets = Buckets()
            assert buckets.write_many([(url, encoded.object_text)], compression, if_absent=if_absent) == [None]
            mine = container.read(name)
            assert normalized(mine, compression) == normalized(provider_bytes, compression)
            if compression not in ("gzip", "zip"):
                assert mine == provider_bytes
            assert provider.deserialize_task_state_store_from_ref(ref) == value  # the provider reads statectl's
        [occupied] = Buckets().write_many([(url, '{"other": 1}')], compression, if_absent=True)
        assert isinstance(occupied, ObjectExists) and container.read(name) == mine  # nothing overwritten

        # What verifies a write on Azure: the MD5 the service computed, in the PUT's answer and in the blob's
        # properties (adlfs info), compared with the bytes sent; other bytes of the same length do not match.
        fs = buckets.fs(url)
        other = bytes([mine[0] ^ 1]) + mine[1:]
        info = sync(fs.loop, _fresh_info, fs, url.path)
        assert (_same_bytes(info, mine), _same_bytes(info, other)) == (True, False), info
        answer = sync(fs.loop, fs._pipe_file, url.path, mine)
        assert (_same_bytes(answer, mine), _same_bytes(answer, other)) == (True, False)

        # adlfs answers info() from its listing cache, shared by everything in the process that lists (the
        # provider's clear() globs): statectl asks the store, and sees an object deleted behind that cache.
        assert fs.ls(url.path.rsplit("/", 1)[0], detail=False) == [url.path]
        container.delete(name)
        assert fs.exists(url.path)  # what the cache says
        assert buckets.stat(url).exists is False
        store.close()
