"""`--shard I/N` on prune, check and migrate: the N shards together are exactly one unsharded run.

State is written by real DAG runs through the real provider (file:// bucket, gzip, threshold 16): six
dags whose names spread over the shards of 2 and of 3, each with expired and live keys; an asset value;
a dag whose run is deleted (its objects orphaned, no row left in its folder); plus stray objects at the
top of the bucket and under the assets folder, all older than the grace. Every test restores that
state, runs the shards (at the same time, as separate processes) and then the unsharded command on a
fresh copy, and compares what each did and what was left.

The lock: shards of one sharding hold locks of their own and run together; an unsharded prune and a
sharded one, or two of different N, never hold their locks at once (tested with runs racing to start).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from contextlib import closing
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from statectl.core import layout
from statectl.core.layout import ObjectURL
from statectl.core.scopes import AssetScope, TaskScope
from statectl.core.shards import Shard, shard_of_dag, shard_of_path
from statectl.errors import ExitCode, UsageError
from tests.cli_support import STATECTL, db_snapshot, files_snapshot, statectl
from tests.infra import AirflowEnv, S3Bucket, WorkerBucketSeed, run_dag, seed_worker_bucket, worker_bucket_copy

pytest_plugins = ["tests.cli_support"]

THRESHOLD = 16
GONE_DAG = "shard_gone"
ASSET_NAME = "shard_asset"


def _spread_dags(count: int = 6) -> list[str]:
    """Dag ids such that every shard of 2 and of 3 owns at least one (the hash decides, not the name)."""
    chosen: list[str] = []
    covered: set[tuple[int, int]] = set()
    for n in range(1000):
        name = f"shard_dag_{n}"
        owners = {(c, shard_of_dag(name, c)) for c in (2, 3)}
        if not owners <= covered or len(covered) == 5:
            chosen.append(name)
            covered |= owners
        if len(chosen) == count:
            return chosen
    raise AssertionError("no spread of dag ids")


DAGS = _spread_dags()

WRITER_SOURCE = f"""
from datetime import datetime, timedelta

from airflow.sdk import Asset, dag, task

ASSET = Asset(name={ASSET_NAME!r}, uri="file:///tmp/statectl-shard-asset")
BIG = "x" * 100


def make(dag_id, outlet):
    @dag(dag_id=dag_id, schedule=None, start_date=datetime(2024, 1, 1), catchup=False)
    def writer_dag():
        @task(outlets=[ASSET] if outlet else [])
        def writer(**context):
            store = context["task_state_store"]
            store.set("expired_obj", {{"v": BIG}}, retention=timedelta(seconds=1))
            store.set("expired_inline", 1, retention=timedelta(seconds=1))
            store.set("live", {{"v": BIG}})
            if outlet:
                context["asset_state_store"][ASSET].set("watermark", {{"w": BIG}})

        @task
        def mapped(i, **context):
            context["task_state_store"].set("m", {{"i": i, "v": BIG}}, retention=timedelta(seconds=1))

        writer() >> mapped.expand(i=[0, 1])

    return writer_dag()


DAGS = [make(d, i == 0) for i, d in enumerate({DAGS!r} + [{GONE_DAG!r}])]

if __name__ == "__main__":
    for d in DAGS:
        d.test()
"""


@pytest.fixture(scope="session")
def shard_seed(airflow_template: Path, tmp_path_factory: pytest.TempPathFactory) -> WorkerBucketSeed:
    root = tmp_path_factory.mktemp("shard_seed")
    seed = seed_worker_bucket(airflow_template / "airflow.db", root, WRITER_SOURCE, THRESHOLD, "gzip")
    home = worker_bucket_copy(seed, tmp_path_factory.mktemp("shard_seed_home"))
    assert home.db_path is not None
    # As Airflow deletes a run: ON DELETE CASCADE takes its rows. Closed, so that the WAL is in the file copied.
    with closing(sqlite3.connect(home.db_path)) as conn, conn:
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("DELETE FROM dag_run WHERE dag_id = ?", (GONE_DAG,))
    for stray in (f"{DAGS[1]}/old_run/t/-1/stray.json", f"{layout.ASSETS_FOLDER}/gone_asset/k.json", "junk.json"):
        path = home.bucket_dir / stray
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text('"stray"')
    old = time.time() - timedelta(hours=2).total_seconds()  # older than the grace: orphans go
    for path in home.bucket_dir.rglob("*"):
        os.utime(path, (old, old))
    shutil.rmtree(seed.pristine)
    shutil.copytree(home.bucket_dir, seed.pristine)  # copy2: the times stay
    return WorkerBucketSeed(home.db_path, seed.bucket, seed.pristine)


def fresh(seed: WorkerBucketSeed, tmp_path: Path, name: str) -> AirflowEnv:
    """The seeded state restored (the bucket in place), in a home of its own under ``tmp_path``."""
    (tmp_path / name).mkdir()
    return worker_bucket_copy(seed, tmp_path / name)


def env_of(home: AirflowEnv) -> dict[str, str]:
    return home.with_backend(home.bucket_url, THRESHOLD, "gzip")


def state(home: AirflowEnv) -> tuple[dict[str, Any], dict[str, bytes]]:
    return db_snapshot(home), files_snapshot(home.bucket_dir)


def run_together(env: dict[str, str], commands: list[list[str]]) -> list[dict[str, Any]]:
    """Start every command at once (separate processes), wait for all; their JSON reports."""
    procs = [
        subprocess.Popen(
            [STATECTL, *args, "-o", "json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for args in commands
    ]
    reports = []
    for proc, args in zip(procs, commands, strict=True):
        out, err = proc.communicate(timeout=300)
        assert "Traceback" not in err, err
        assert proc.returncode == 0, f"{args}: exit {proc.returncode}\n{err}"
        reports.append(json.loads(out))
    return reports


def shard_args(n: int) -> list[list[str]]:
    return [["--shard", f"{i}/{n}"] for i in range(n)]


# --------------------------------------------------------------------------- the partition


@given(st.text(min_size=1, max_size=40), st.integers(min_value=1, max_value=64))
def test_every_dag_in_exactly_one_shard(dag_id: str, count: int) -> None:
    owners = [i for i in range(count) if Shard(i, count).owns_dag(dag_id)]
    assert owners == [shard_of_dag(dag_id, count)]


dag_ids = st.from_regex(r"[A-Za-z0-9_.\-]{1,40}", fullmatch=True).filter(lambda d: d not in (".", ".."))


@given(dag_ids, st.integers(min_value=1, max_value=16), st.sampled_from(["gzip", None]))
def test_a_dags_objects_are_in_its_shard(dag_id: str, count: int, compression: str | None) -> None:
    """The shard of an object's path (the provider's exact layout) is the shard of its dag; an asset's is 0."""
    base = ObjectURL.parse("s3://conn@bucket/state")
    url = layout.object_url(base, TaskScope(dag_id, "manual__2024", "t", 3), "k", compression)
    relative = url.path.removeprefix(base.path + "/")
    assert shard_of_path(relative, count) == shard_of_dag(dag_id, count)
    asset_url = layout.object_url(base, AssetScope(name=dag_id, uri="s3://x"), "k", compression)
    assert shard_of_path(asset_url.path.removeprefix(base.path + "/"), count) == 0


def test_the_hash_is_the_documented_one() -> None:
    """First 8 bytes of SHA-256, big-endian, modulo N: stable across processes, versions and machines."""
    import hashlib

    digest = hashlib.sha256(b"example_dag").digest()
    assert shard_of_dag("example_dag", 7) == int.from_bytes(digest[:8], "big") % 7
    assert shard_of_dag(layout.ASSETS_FOLDER, 7) == 0  # shares the assets folder


@pytest.mark.parametrize("text", ["4/4", "-1/4", "0/0", "1", "a/b", "1/2/3", " "])
def test_bad_spellings(text: str) -> None:
    with pytest.raises(UsageError):
        Shard.parse(text)


def test_bad_shard_flag_is_one_line(shard_seed: WorkerBucketSeed, tmp_path: Path) -> None:
    home = worker_bucket_copy(shard_seed, tmp_path)
    before = state(home)
    for command in (["prune", "--yes"], ["check"], ["migrate", "to-bucket", "--yes"]):
        r = statectl(env_of(home), *command, "--shard", "3/3")
        assert r.code == ExitCode.USAGE, str(r)
        assert r.stderr.strip().count("\n") == 0 and "--shard" in r.stderr and "Traceback" not in r.stderr
    assert state(home) == before


# --------------------------------------------------------------------------- N shards == one run


def _deleted(report: dict[str, Any]) -> Counter[str]:
    return Counter({f"{cat}.{what}": t[what] for cat, t in report["deleted"].items() for what in ("rows", "objects")})


@pytest.mark.parametrize("n", [2, 3])
def test_sharded_prune_is_one_prune(shard_seed: WorkerBucketSeed, tmp_path: Path, n: int) -> None:
    home = fresh(shard_seed, tmp_path, "sharded")
    env = env_of(home)
    dry = run_together(env, [["prune", "--dry-run", *a] for a in shard_args(n)])
    reports = run_together(env, [["prune", "--yes", *a] for a in shard_args(n)])
    assert [r["plan"]["shard"] for r in reports] == [f"{i}/{n}" for i in range(n)]
    assert all(r["exit_code"] == 0 and not r["lock"] for r in reports), reports
    assert all(r["plan"]["deletions"] > 0 for r in reports), "every shard of the spread has work"
    sharded_end = state(home)
    assert not [p for p in home.bucket_dir.iterdir() if p.name.startswith(layout.RESERVED_PREFIX)]

    home = fresh(shard_seed, tmp_path, "whole")
    whole = statectl(env_of(home), "prune", "--yes", "-o", "json")
    assert whole.code == 0, str(whole)
    whole_report = whole.json()
    # Nothing handled twice, nothing missed: the shards' deletions add up to the unsharded run's.
    assert sum((_deleted(r) for r in reports), Counter()) == _deleted(whole_report)
    assert sum(r["plan"]["deletions"] for r in dry) == whole_report["plan"]["deletions"]
    assert whole_report["deleted"]["orphans"]["objects"] >= 4  # the gone dag's, the strays and the junk
    assert state(home) == sharded_end


def test_sharded_check_adds_up(shard_seed: WorkerBucketSeed, tmp_path: Path) -> None:
    home = worker_bucket_copy(shard_seed, tmp_path)
    env = env_of(home)
    before = state(home)
    parts = [statectl(env, "check", *a, "-o", "json") for a in shard_args(3)]
    whole = statectl(env, "check", "-o", "json")
    assert state(home) == before
    reports = [p.json() for p in parts]
    assert [r["shard"] for r in reports] == ["0/3", "1/3", "2/3"]

    def counts(report: dict[str, Any]) -> Counter[str]:
        found = Counter({f"finding.{k}": v["count"] for k, v in report["findings"].items()})
        found.update({f"location.{k}": v for k, v in report["locations"].items()})
        return found

    assert sum((counts(r) for r in reports), Counter()) == counts(whole.json())
    assert {d for r in reports for d in r["per_dag"]} == set(whole.json()["per_dag"])


@pytest.mark.parametrize("direction", ["to-metastore", "to-bucket"])
def test_sharded_migrate_is_one_migrate(shard_seed: WorkerBucketSeed, tmp_path: Path, direction: str) -> None:
    home = fresh(shard_seed, tmp_path, "sharded")
    reports = run_together(migrate_env(home, direction), [["migrate", direction, "--yes", *a] for a in shard_args(3)])
    sharded_end = values(home)
    home = fresh(shard_seed, tmp_path, "whole")
    whole = statectl(migrate_env(home, direction), "migrate", direction, "--yes", "-o", "json")
    assert whole.code == 0, str(whole)

    def rows(report: dict[str, Any]) -> Counter[str]:
        return Counter({k: v["rows"] for k, v in report["actions"].items()})

    assert sum((rows(r) for r in reports), Counter()) == rows(whole.json())
    assert sum(r["objects_written"] + r["objects_deleted"] for r in reports) > 0
    # Rows written in another run carry another updated_at, objects another time; nothing else differs.
    assert values(home) == sharded_end


def migrate_env(home: AirflowEnv, direction: str) -> dict[str, str]:
    """to-bucket: a threshold of 1 byte, so that the workers' inline values go to objects too."""
    return env_of(home) if direction == "to-metastore" else home.with_backend(home.bucket_url, 1, "gzip")


def values(home: AirflowEnv) -> tuple[list[tuple[Any, ...]], dict[str, bytes]]:
    rows = home.query(
        'SELECT dag_id, run_id, task_id, map_index, "key", value, expires_at FROM task_state_store '
        'UNION ALL SELECT NULL, NULL, NULL, asset_id, "key", value, NULL FROM asset_state_store'
    )
    # A gzip header holds the second it was written: compare what workers read.
    files = {k: gzip.decompress(v) if k.endswith(".gz") else v for k, v in files_snapshot(home.bucket_dir).items()}
    return sorted(rows, key=repr), files


# --------------------------------------------------------------------------- the lock


def _lock(base: ObjectURL, shard: str | None, timeout: timedelta = timedelta(minutes=10)) -> Any:
    from statectl.stores.bucket import Buckets
    from statectl.stores.lock import BucketLock, prune_lock_name

    name = prune_lock_name(None if shard is None else Shard.parse(shard))
    return BucketLock(Buckets(), base, name, timeout=timeout)


def test_lock_rules(tmp_path: Path) -> None:
    from statectl.stores.lock import LockHeld

    base = ObjectURL.parse(f"file://{tmp_path}")
    with _lock(base, "0/4"), _lock(base, "1/4"), _lock(base, "3/4"):  # one sharding: together
        for other in (None, "0/2", "1/2", "0/4"):
            with pytest.raises(LockHeld):
                _lock(base, other).acquire()
    with _lock(base, None):
        for other in ("0/4", "0/1", None):
            with pytest.raises(LockHeld):
                _lock(base, other).acquire()
    with _lock(base, "1/2"), _lock(base, "0/2"):
        pass
    assert not list(tmp_path.iterdir()), "every lock released"


def test_a_stale_lock_of_another_sharding_is_taken_over(tmp_path: Path) -> None:
    base = ObjectURL.parse(f"file://{tmp_path}")
    stale = _lock(base, None, timeout=timedelta(seconds=1))
    stale.acquire()
    stale._stop.set()  # its heartbeat stops, as if the process hung
    time.sleep(1.5)
    with _lock(base, "0/3", timeout=timedelta(seconds=1)) as taker:
        assert any("took over a stale lock of another sharding (prune.lock)" in n for n in taker.notes), taker.notes
        assert not (tmp_path / ".statectl~prune.lock").exists()
    assert not list(tmp_path.iterdir())


def _race(base: ObjectURL, pair: tuple[str | None, str]) -> bool:
    """Two runs start at the same moment; whether both held their locks at once."""
    from statectl.stores.lock import LockHeld

    both = threading.Barrier(2)
    inside = threading.Barrier(2, timeout=0.5)  # both holders meet here only if both hold at once
    overlaps: list[bool] = []

    def attempt(shard: str | None) -> None:
        lock = _lock(base, shard)
        both.wait()
        try:
            lock.acquire()
        except LockHeld:
            return
        try:
            inside.wait()
            overlaps.append(True)
        except threading.BrokenBarrierError:
            pass
        finally:
            lock.release()

    threads = [threading.Thread(target=attempt, args=(s,)) for s in pair]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return bool(overlaps)


@pytest.mark.parametrize("pair", [(None, "0/2"), ("0/2", "1/3")])
def test_racing_runs_of_two_shardings_never_both_hold(tmp_path: Path, pair: tuple[str | None, str]) -> None:
    base = ObjectURL.parse(f"file://{tmp_path}")
    for _ in range(15):
        assert not _race(base, pair), f"{pair} both held the lock at once"
        assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- the maintenance DAG

MAINTENANCE_DAG = Path(__file__).resolve().parent.parent / "examples" / "maintenance" / "statectl_prune_sharded_dag.py"


def test_the_sharded_maintenance_dag_prunes_as_one_prune(shard_seed: WorkerBucketSeed, tmp_path: Path) -> None:
    """`dag.test()` of the example maps `statectl prune --shard I/N` over N = 3 (a DAG param)."""
    home = fresh(shard_seed, tmp_path, "dag")
    env = env_of(home)
    env["PATH"] = f"{Path(STATECTL).parent}{os.pathsep}{env.get('PATH', '')}"
    source = (
        MAINTENANCE_DAG.read_text()
        + '\n\nif __name__ == "__main__":\n    statectl_prune_sharded_dag.test(run_conf={"shards": 3})\n'
    )
    proc = run_dag(env, source, tmp_path / "dag_files")
    assert "statectl prune --yes --shard 2/3" in proc.stdout + proc.stderr
    sharded_end = state(home)

    home = fresh(shard_seed, tmp_path, "whole")
    whole = statectl(env_of(home), "prune", "--yes", "-o", "json")
    assert whole.code == 0 and whole.json()["deletions"] > 0, str(whole)
    assert state(home)[1] == sharded_end[1]
    assert {k: v for k, v in state(home)[0].items() if k in ("task_state_store", "asset_state_store")} == {
        k: v for k, v in sharded_end[0].items() if k in ("task_state_store", "asset_state_store")
    }


# --------------------------------------------------------------------------- PostgreSQL + S3


@pytest.mark.slow
def test_shards_on_postgres_and_s3(pg_airflow_home: AirflowEnv, s3_bucket: S3Bucket, tmp_path: Path) -> None:
    """The dag lists bound as one array parameter, the listing by folders on S3, the locks as conditional PUTs."""
    home = pg_airflow_home
    env = home.with_backend(s3_bucket.url("state"), THRESHOLD, "gzip") | s3_bucket.conn_env
    run_dag(env, WRITER_SOURCE, tmp_path)
    s3_bucket.client().put_object(Bucket=s3_bucket.bucket, Key=f"state/{DAGS[2]}/r/t/-1/fresh.json", Body=b'"x"')
    keys_before = set(s3_bucket.keys())

    def counts(report: dict[str, Any]) -> Counter[str]:
        found = Counter({f"finding.{k}": v["count"] for k, v in report["findings"].items()})
        found.update({f"location.{k}": v for k, v in report["locations"].items()})
        return found

    checks = [statectl(env, "check", *a, "-o", "json").json() for a in shard_args(3)]
    whole_check = statectl(env, "check", "-o", "json").json()
    assert sum((counts(r) for r in checks), Counter()) == counts(whole_check)
    assert whole_check["findings"]["recent_orphans"]["count"] == 1

    whole_plan = statectl(env, "prune", "--dry-run", "-o", "json").json()["plan"]
    reports = run_together(env, [["prune", "--yes", *a] for a in shard_args(3)])
    assert (
        sum(r["deleted"]["expired"]["rows"] for r in reports)
        == whole_plan["categories"]["expired"]["rows"]
        == 4 * (len(DAGS) + 1)
    )
    assert sum(r["deleted"]["expired"]["objects"] for r in reports) == whole_plan["categories"]["expired"]["objects"]
    assert sum(r["plan"]["categories"]["fresh_orphans"]["objects"] for r in reports) == 1
    after = statectl(env, "prune", "--dry-run", "-o", "json").json()["plan"]
    assert after["deletions"] == 0
    keys_after = set(s3_bucket.keys())
    assert not [k for k in keys_after if layout.RESERVED_PREFIX in k], "no lock left behind"
    assert len(keys_before - keys_after) == whole_plan["categories"]["expired"]["objects"]
