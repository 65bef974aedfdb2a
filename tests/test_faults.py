"""A store that throttles or drops requests (issue 11, part 5): 503 SlowDown, 500, a reset connection, a timeout,
and an answer lost after the store did the request. Every fault comes from the latency bed
(benchmarks/latency_bed.py: moto's S3 behind a WSGI middleware), here without delays, reached through a real
Airflow connection whose botocore does not retry (fault_support.fault_conn_env): each fault reaches statectl.

- The retry policy (statectl.stores.retry), in this process on statectl's Buckets: a transient answer is tried
  again until it passes, at most ATTEMPTS tries a request (counted by the bed), then that object's error
  (TransientFailure, exit 8); 404, 403, 400 and 412 are never retried; a store nobody listens on still raises
  at once (exit 5). Reads, stats, writes, deletes, listing pages; a create whose answer was lost is no false
  failure (write, place_objects, the prune lock); deletes take keys literally (``x[ab]`` is not a pattern).
- Operations as subprocesses on PostgreSQL + S3 with FRACTION of all requests faulted (seeded; every kind):
  migrate to-bucket, relocate and to-metastore, prune and check each exit 0 or 8, never a traceback or another
  code; re-run without faults, each exits 0; then every value reads exactly as before through a real worker
  (a dag.test() run), nothing that should stay was deleted (rows, objects, objects outside the base path), and
  no lock object is left.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest

from statectl.core.config import Config
from statectl.core.layout import ObjectURL, parse_base_path
from statectl.errors import ExitCode, StatectlError, UnreachableError
from statectl.ops.objects import ObjectWrite, Placed, place_objects
from statectl.stores import retry
from statectl.stores.bucket import Buckets, ObjectExists, ObjectInfo, ObjectMissing
from statectl.stores.lock import BucketLock
from statectl.stores.retry import ATTEMPTS, TransientFailure
from statectl.stores.store import StateStore
from tests.cli_support import statectl
from tests.fault_support import (
    READ_TIMEOUT_S,
    FaultBed,
    assert_same_values,
    fault_bed,
    fault_conn_env,
    read_through_worker,
    run_under_faults,
    seed_plain_rows,
)
from tests.infra import AirflowEnv, free_port
from tests.migrate_support import THRESHOLD, RowKey, core_values, location, provider, ref_url, state_rows, worker_read

pytest_plugins = ["tests.cli_support"]

T = TypeVar("T")

FRACTION = 0.2  # of the tools' requests faulted while a command runs under faults
FLAGS = ("--yes", "-o", "json", "--batch-size", "100")  # two batches
LOCK_PREFIX = ".statectl~prune.lock"  # the lock and its take-over markers
BYSTANDERS = {"outside/keep.json": b'{"mine": 1}', "state-sibling/keep.json": b'"not under the base path"'}


@pytest.fixture(autouse=True)
def fresh_airflow_stores(monkeypatch: pytest.MonkeyPatch) -> None:
    """Airflow caches one filesystem per conn_id in a process: each test's bed has its own endpoint."""
    from airflow.sdk.io import store

    monkeypatch.setattr(store, "_STORE_CACHE", {})


# --------------------------------------------------------------------------- the policy, in this process


@pytest.fixture(scope="module")
def bed() -> Iterator[FaultBed]:
    """One bed for the policy's tests (each test works under a base path of its own)."""
    with fault_bed() as started:
        yield started


@pytest.fixture(scope="module")
def buckets(bed: FaultBed) -> Iterator[Buckets]:
    with pytest.MonkeyPatch.context() as patch:
        for name, value in bed.conn_env.items():  # Airflow resolves the connection from this process's environment
            patch.setenv(name, value)
        patch.setattr(retry, "BASE_DELAY_S", 0.01)  # the pauses' own test is below; these count requests
        yield Buckets(concurrency=4)


@pytest.fixture
def base(bed: FaultBed) -> ObjectURL:
    return parse_base_path(bed.bucket.url(f"test-{uuid.uuid4().hex[:8]}"))


def put(bed: FaultBed, base: ObjectURL, objects: dict[str, bytes]) -> None:
    """Objects under the base path, by name relative to it (put directly: never faulted)."""
    bed.put({key(base, name): body for name, body in objects.items()})


def key(base: ObjectURL, name: str) -> str:
    return base.child(name).path.split("/", 1)[1]


def test_pauses_grow_exponentially_with_jitter() -> None:
    for attempt in range(1, ATTEMPTS):
        ceiling = min(retry.MAX_DELAY_S, retry.BASE_DELAY_S * 2 ** (attempt - 1))
        waits = [retry.pause(attempt) for _ in range(200)]
        assert ceiling / 2 <= min(waits) and max(waits) <= ceiling and len(set(waits)) > 100
    assert sum(retry.BASE_DELAY_S * 2 ** (a - 1) for a in range(1, ATTEMPTS)) <= 4  # seconds, at most, a request


def counted(bed: FaultBed, call: Callable[[], T]) -> tuple[T, int]:
    """What the call returned, and how many requests reached the bed meanwhile."""
    before = bed.requests()
    return call(), bed.requests() - before


def _exists(answer: ObjectInfo | StatectlError) -> bool | StatectlError:
    return answer.exists if isinstance(answer, ObjectInfo) else answer


# One call of each kind of object-store request statectl makes, on an object "k" holding "v", and the
# answer it gives when all goes well.
OPERATIONS: dict[str, tuple[Callable[[Buckets, ObjectURL], Any], Any]] = {
    "read": (lambda b, base: b.read_many([base.child("k")])[0], "v"),
    "stat": (lambda b, base: _exists(b.stat_many([base.child("k")])[0]), True),
    "write": (lambda b, base: b.write_many([(base.child("k"), "v")], None)[0], None),
    "create": (lambda b, base: b.write_many([(base.child("new"), "n")], None, if_absent=True)[0], None),
    "delete": (lambda b, base: b.delete_many([base.child("k")])[0], None),
    "list": (lambda b, base: [o.path.rsplit("/", 1)[1] for o in b.iter_listing(base)], ["k"]),
}


@pytest.mark.parametrize("failing", [ATTEMPTS - 1, ATTEMPTS], ids=["passes", "gives-up"])
@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_a_transient_failure_is_tried_again_at_most_attempts_times(
    bed: FaultBed, buckets: Buckets, base: ObjectURL, operation: str, failing: int
) -> None:
    put(bed, base, {"k": b"v"})
    call, answer = OPERATIONS[operation]
    injected = bed.plan.snapshot()
    bed.plan.force(*(["503", "500", "timeout"] * ATTEMPTS)[:failing])  # the first tries fail, one fault each
    before = bed.requests()
    try:
        got = call(buckets, base)
    except TransientFailure as e:  # a listing raises it; batch calls answer with it for the object
        got = e
    assert bed.requests() - before == ATTEMPTS  # each try sent once, by the bed's count; none after the last
    assert sum((bed.plan.snapshot() - injected).values()) == failing
    if failing < ATTEMPTS:
        assert got == answer  # and the tries that failed are no error of the object's
        return
    assert isinstance(got, TransientFailure), got
    assert got.exit_code == ExitCode.PARTIAL and f"after {ATTEMPTS} tries" in got.message
    assert call(buckets, base) == answer  # the store answers again: so does statectl


def test_resets_and_timeouts_are_tried_again_and_bounded(bed: FaultBed, buckets: Buckets, base: ObjectURL) -> None:
    put(bed, base, {"k": b"v"})
    url = base.child("k")
    bed.plan.force("reset", "timeout", "reset")
    assert buckets.read_many([url]) == ["v"]
    bed.plan.force(*["timeout"] * ATTEMPTS)
    started = time.monotonic()
    (got,), requests = counted(bed, lambda: buckets.stat_many([url]))
    elapsed = time.monotonic() - started
    assert isinstance(got, TransientFailure) and "timeout" in got.message.lower(), got
    assert requests == ATTEMPTS
    # Each try waits out the connection's read timeout, not s3fs's 15 s, and is tried no more (s3fs's own loop
    # would make a stat 25 requests, and a GET 125).
    assert ATTEMPTS * READ_TIMEOUT_S <= elapsed < ATTEMPTS * (READ_TIMEOUT_S + 1)


def test_final_answers_are_not_tried_again(bed: FaultBed, buckets: Buckets, base: ObjectURL) -> None:
    put(bed, base, {"k": b"v", "taken": b"someone else's"})
    (missing,), requests = counted(bed, lambda: buckets.read_many([base.child("nope")]))
    assert isinstance(missing, ObjectMissing) and requests == 1  # 404
    bed.plan.force("403")
    (denied,), requests = counted(bed, lambda: buckets.stat_many([base.child("k")]))
    assert type(denied) is UnreachableError and requests == 1  # the object's error, as before: exit 5
    for kind in ("403", "400"):
        bed.plan.force(kind)
        before = bed.requests()
        with pytest.raises(UnreachableError) as raised:  # a read the store refuses: statectl stops, as before
            buckets.read_many([base.child("k")])
        assert type(raised.value) is UnreachableError and bed.requests() - before == 1
    # 412: the create-if-absent PUT is refused once, and the object found there is not ours (one HEAD says so).
    (taken,), requests = counted(bed, lambda: buckets.write_many([(base.child("taken"), "v")], None, if_absent=True))
    assert isinstance(taken, ObjectExists) and requests == 2


def test_a_store_nobody_listens_on_still_raises_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    for name, value in fault_conn_env(dead, "statectl_s3").items():
        monkeypatch.setenv(name, value)
    started = time.monotonic()
    with pytest.raises(UnreachableError) as raised:
        Buckets().read_many([parse_base_path("s3://statectl_s3@nowhere/state").child("k")])
    assert raised.value.exit_code == ExitCode.UNREACHABLE and not isinstance(raised.value, TransientFailure)
    assert time.monotonic() - started < 5  # refused connections are not retried by statectl


def test_a_create_whose_answer_was_lost_is_no_false_failure(
    bed: FaultBed, buckets: Buckets, base: ObjectURL, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store did the create, the answer was dropped, the try after it is refused with 412: the object holds
    this write's bytes, so it counts as written; not as someone else's object."""
    injected = bed.plan.snapshot()
    bed.plan.force("lost")
    assert buckets.write_many([(base.child("created"), "mine")], None, if_absent=True) == [None]
    assert bed.objects(key(base, "")) == {key(base, "created"): b"mine"}
    assert dict(bed.plan.snapshot() - injected) == {"lost": 1}
    # place_objects (migrate, import, cp, mv): written, not "present" nor busy.
    monkeypatch.setenv("AIRFLOW__COMMON_IO__STATE_STORE_OBJECTSTORAGE_PATH", str(base))
    store = StateStore(Config())
    store.__dict__["buckets"] = buckets  # the same filesystems
    assert buckets.honours_if_absent(base)  # probed now, unfaulted
    bed.plan.force("lost")
    assert place_objects(store, base, "gzip", [ObjectWrite(base.child("placed.gz"), '{"v": 1}')]) == [Placed.WRITTEN]
    # The prune lock: our own lock, created by a try whose answer was lost, is ours (not "held by another").
    lock = BucketLock(buckets, base)
    bed.plan.force("lost")
    lock.acquire()
    lock.release()
    assert not [k for k in bed.names() if k.startswith(key(base, ".statectl~"))]


def test_listing_pages_are_tried_again(bed: FaultBed, buckets: Buckets, base: ObjectURL) -> None:
    from moto.s3.models import s3_backends

    partition, account = s3_backends.bucket_accounts[bed.bucket.bucket]
    backend = s3_backends[account][partition]
    for i in range(1500):  # two pages; straight into moto (1500 PUTs over HTTP cost seconds)
        backend.put_object(bed.bucket.bucket, key(base, f"{i:04d}"), b"x")
    bed.plan.force(None, "503", "reset", "500")  # the first page passes, the second takes four tries
    listed, _ = counted(bed, lambda: [o.path for o in buckets.iter_listing(base)])
    assert len(listed) == len(set(listed)) == 1500


def test_deletes_are_tried_again_and_take_keys_literally(bed: FaultBed, buckets: Buckets, base: ObjectURL) -> None:
    """s3fs's rm() would take "x[ab]" for a pattern and delete xa and xb instead of it."""
    put(bed, base, {"a": b"1", "x[ab]": b"2", "xa": b"3", "xb": b"4"})
    bed.plan.force("500", "lost")
    answers, requests = counted(bed, lambda: buckets.delete_many([base.child("a"), base.child("x[ab]")]))
    assert answers == [None, None] and requests == 3
    assert sorted(bed.objects(key(base, ""))) == [key(base, "xa"), key(base, "xb")]
    stat = buckets.stat_many([base.child("xa")])[0]
    assert isinstance(stat, ObjectInfo) and stat.exists


# --------------------------------------------------------------------------- operations, as subprocesses


def assert_no_lock(bed: FaultBed) -> None:
    left = [k for k in bed.names() if k.rsplit("/", 1)[-1].startswith(LOCK_PREFIX)]
    assert not left, left


def probes(bed: FaultBed) -> set[str]:
    """statectl's probe objects: one whose delete failed every try is left (harmless, said in a warning)."""
    return {k for k in bed.names() if ".statectl~probe-" in k}


def rerun(env: dict[str, str], *args: str) -> dict[str, Any]:
    """The same command without faults: it finishes the job."""
    result = statectl(env, *args)
    assert result.code == 0, str(result)
    report: dict[str, Any] = result.json()
    return report


def left_behind(report: dict[str, Any]) -> set[str]:
    """The bucket keys of the objects a report says it could not delete: migrate's objects_left (for prune),
    prune's object_errors (rows gone, objects now orphans: the next prune past the grace takes them)."""
    entries = report.get("objects_left", []) + report.get("object_errors", [])
    return {entry["object"].split("@", 1)[1].split("/", 1)[1] for entry in entries}


def assert_rows_read_through_provider(home: AirflowEnv, env: dict[str, str], expected: dict[RowKey, Any]) -> None:
    """Every row as the installed provider reads it (the worker's code, in this process)."""
    rows = state_rows(home)
    assert set(rows) == set(expected)
    with provider(env) as backend:
        got = {where: worker_read(backend, text, asset=where[0] is None) for where, text in rows.items()}
    assert_same_values(got, expected)


@pytest.mark.slow
def test_migrate_prune_and_check_under_faults(pg_seeded: AirflowEnv, tmp_path: Path) -> None:
    """One seeded state through every operation, each run under faults and then again without."""
    with fault_bed() as bed:
        run_every_operation(pg_seeded, bed, tmp_path)


def run_every_operation(home: AirflowEnv, bed: FaultBed, tmp_path: Path) -> None:
    expired = frozenset(range(0, 140, 4))  # every fourth task key (of each size) expired an hour ago
    seeded = seed_plain_rows(home, per_task=70, assets=60, expired=expired)
    live = {where: v for where, v in seeded.items() if where[0] is None or int(where[2][4:8]) not in expired}
    assert len(live) < len(seeded)
    bed.put(BYSTANDERS)
    env = {**home.with_backend(bed.bucket.url("state"), THRESHOLD, "gzip"), **bed.conn_env}
    new_base = bed.bucket.url("state2")
    env2 = {**home.with_backend(new_base, THRESHOLD, "bz2"), **bed.conn_env}
    reported_left: set[str] = set()  # objects a faulted run said it could not delete

    def faulted_then_again(env: dict[str, str], *args: str) -> dict[str, Any]:
        with bed.faults(FRACTION):
            faulted = run_under_faults(env, *args)
        reported_left.update(left_behind(faulted.json()))
        again = rerun(env, *args)
        assert_no_lock(bed)
        return again

    # to-bucket: between the runs every value still reads, in its old or its new form.
    with bed.faults(FRACTION):
        faulted = run_under_faults(env, "migrate", "to-bucket", *FLAGS)
    reported_left |= left_behind(faulted.json())
    assert_same_values(core_values(env), seeded)
    assert rerun(env, "migrate", "to-bucket", *FLAGS)["ok"]
    rows = state_rows(home)
    for where, value in seeded.items():
        big = len(json.dumps(value).encode()) >= THRESHOLD
        assert location(rows[where]) == ("object" if big else "inline"), where
    assert_rows_read_through_provider(home, env, seeded)

    # relocate: a cut-over (between the runs, rows are under either base).
    assert faulted_then_again(env, "migrate", "relocate", "--to", new_base, "--compression", "bz2", *FLAGS)["ok"]
    refs = [url for text in state_rows(home).values() if (url := ref_url(text))]
    assert refs and all(url.startswith(f"{new_base}/") and url.endswith(".bz2") for url in refs)

    # prune: the expired rows and their objects, and old orphans, go; fresh orphans stay (maybe a worker's write
    # in flight), and "x[ab]" is a name, not a pattern for xa and xb.
    old_orphans = {"state2/nodag/r/t/-1/k.bz2": b"old", "state2/zz/x[ab]": b"old too"}
    fresh_orphans = {"state2/zz/xa": b"fresh", "state2/zz/xb": b"fresh too"}
    bed.put({**old_orphans, **fresh_orphans})
    for name in old_orphans:
        bed.backdate(name, timedelta(hours=2))
    live_objects = {url.split(f"{bed.bucket.bucket}/", 1)[1] for w in live if (url := ref_url(state_rows(home)[w]))}
    report = faulted_then_again(env2, "prune", *FLAGS)
    assert report["exit_code"] == 0 and not report["object_errors"], report
    assert set(state_rows(home)) == set(live)
    objects = set(bed.objects("state2/")) - probes(bed)
    assert live_objects | set(fresh_orphans) <= objects  # nothing that should stay went
    assert not objects & set(old_orphans)
    assert objects - live_objects - set(fresh_orphans) <= reported_left  # the rest went, or a report says why not

    # check --deep (lists, stats and reads): the pruned state is clean; fresh orphans are information.
    assert faulted_then_again(env2, "check", "--deep", "-o", "json")["ok"]

    read_through_worker(env2, live, tmp_path, "FAULTS_READER")

    # to-metastore: the values back in their rows, byte for byte what the server stored (what any worker reads
    # is json.loads of it); the objects go.
    assert faulted_then_again(env2, "migrate", "to-metastore", *FLAGS)["ok"]
    assert state_rows(home) == {where: json.dumps(value) for where, value in live.items()}

    # Nothing outside the base paths was touched; what is left inside them is what a report said it left.
    left = bed.objects()
    assert {k: left[k] for k in {**BYSTANDERS, **fresh_orphans}} == {**BYSTANDERS, **fresh_orphans}
    assert set(left) - set(BYSTANDERS) - set(fresh_orphans) - probes(bed) <= reported_left
