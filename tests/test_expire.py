"""statectl expire on real stores (SQLite and PostgreSQL, a file:// bucket): expires_at set on existing task
rows without rewriting them, each only if its value is unchanged since read; --now then prune takes the rows
and their objects; bad input is one line with its exit code and changes nothing."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from statectl.core.filters import RowFilter
from statectl.core.scopes import AssetScope, TaskScope
from statectl.errors import ExitCode, UsageError
from statectl.ops.expire import ExpireOptions, ExpirePlan, ExpiryChoice, run_expire
from statectl.ops.write import Expiry
from statectl.stores.metastore import StateRow
from tests.cli_support import (
    ASSET,
    ASSET_URI,
    DAG_ID,
    MAPPED,
    TASK,
    Result,
    core_put,
    core_store,
    db_snapshot,
    files_snapshot,
    local_path,
    ref_of,
    statectl,
    statectl_on_terminal,
    task_flags,
)
from tests.infra import AirflowEnv

# Fixtures: seeded (SQLite copy per test), pg_seeded (PostgreSQL clone per test).
pytest_plugins = ["tests.cli_support"]

THRESHOLD = 10  # values of 10 bytes or more go to objects
BIG = {"v": "x" * 40}

RowKey = tuple[str, int, str]  # task_id, map_index, key
Stored = tuple[str, datetime, datetime | None]  # value, updated_at, expires_at


@pytest.fixture(params=["sqlite", "postgresql"])
def deployment(request: pytest.FixtureRequest) -> AirflowEnv:
    env: AirflowEnv = request.getfixturevalue("seeded" if request.param == "sqlite" else "pg_seeded")
    return env


# --------------------------------------------------------------------------- helpers


def run_id_of(env: AirflowEnv) -> str:
    run_id: str = env.query("SELECT run_id FROM dag_run")[0][0]
    return run_id


def backend_env(env: AirflowEnv) -> dict[str, str]:
    return env.with_backend(env.bucket_url, threshold=THRESHOLD)


def ok(env: dict[str, str], *args: str, code: int = 0) -> Result:
    r = statectl(env, *args)
    assert r.code == code, str(r)
    assert "Traceback" not in r.stderr, str(r)
    return r


def as_utc(value: Any) -> datetime | None:
    """A timestamp column as an aware datetime (SQLite: naive UTC text; PostgreSQL: aware)."""
    if value is None:
        return None
    parsed = datetime.fromisoformat(value) if isinstance(value, str) else value
    assert isinstance(parsed, datetime)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def stored(env: AirflowEnv) -> dict[RowKey, Stored]:
    rows = env.query('SELECT task_id, map_index, "key", value, updated_at, expires_at FROM task_state_store')
    out: dict[RowKey, Stored] = {}
    for task_id, map_index, key, value, updated_at, expires_at in rows:
        updated = as_utc(updated_at)
        assert updated is not None
        out[(task_id, int(map_index), key)] = (value, updated, as_utc(expires_at))
    return out


def expiry_of(env: AirflowEnv, key: RowKey) -> datetime | None:
    return stored(env)[key][2]


def assert_only_expiry_changed(before: dict[RowKey, Stored], after: dict[RowKey, Stored], changed: set[RowKey]) -> None:
    """Same rows, values and updated_at; expires_at differs exactly on ``changed``."""
    assert set(before) == set(after)
    for key in before:
        assert after[key][:2] == before[key][:2], key
        assert (after[key][2] != before[key][2]) == (key in changed), (key, before[key][2], after[key][2])


def populate(env: AirflowEnv) -> tuple[dict[str, str], str]:
    """Through `statectl put`: writer a (object, 1h), b (inline, never), c (default retention);
    mapped[0..2] m (object, 2h)."""
    e = backend_env(env)
    run_id = run_id_of(env)
    ok(e, "put", "a", json.dumps(BIG), *task_flags(run_id), "--ttl", "1h")
    ok(e, "put", "b", "1", *task_flags(run_id), "--never-expire")
    ok(e, "put", "c", '"c"', *task_flags(run_id))
    for i in range(3):
        ok(e, "put", "m", json.dumps({"i": i, **BIG}), *task_flags(run_id, MAPPED, i), "--ttl", "2h")
    return e, run_id


def every_task_row() -> RowFilter:
    """The filter of --all without flags."""
    return RowFilter(tasks=True, assets=False)


def expire(env: dict[str, str], *args: str) -> dict[str, Any]:
    r = ok(env, "expire", *args, "--yes", "-o", "json")
    document: dict[str, Any] = r.json()
    return document


A, B, C = (TASK, -1, "a"), (TASK, -1, "b"), (TASK, -1, "c")
M = [(MAPPED, i, "m") for i in range(3)]


# --------------------------------------------------------------------------- named keys


def test_named_keys_with_each_choice(deployment: AirflowEnv) -> None:
    env, run_id = populate(deployment)
    flags = task_flags(run_id)

    before = stored(deployment)
    t0 = datetime.now(tz=UTC)
    report = expire(env, "a", "b", *flags, "--ttl", "2d")
    t1 = datetime.now(tz=UTC)
    after = stored(deployment)
    assert_only_expiry_changed(before, after, {A, B})
    for key in (A, B):
        new = after[key][2]
        assert new is not None and t0 + timedelta(days=2) <= new <= t1 + timedelta(days=2)
    assert report["updated"] == 2 and report["already"] == 0 and report["exit_code"] == 0
    assert as_utc(report["expires_at"]) == after[A][2] == after[B][2]

    # --at with an offset, and a time without one (UTC).
    before = after
    report = expire(env, "a", *flags, "--at", "2026-12-01T02:00:00+02:00")
    after = stored(deployment)
    assert_only_expiry_changed(before, after, {A})
    assert after[A][2] == datetime(2026, 12, 1, tzinfo=UTC)
    assert report["expires_at"] == "2026-12-01T00:00:00+00:00"
    expire(env, "a", *flags, "--at", "2027-01-02T03:04:05")
    assert expiry_of(deployment, A) == datetime(2027, 1, 2, 3, 4, 5, tzinfo=UTC)

    # A re-run changes nothing: the row holds that expiry already.
    before = stored(deployment)
    report = expire(env, "a", *flags, "--at", "2027-01-02T03:04:05Z")
    assert report["updated"] == 0 and report["already"] == 1 and report["plan"]["to_change"] == 0
    assert stored(deployment) == before

    # --never-expire, on a mapped task instance.
    report = expire(env, "m", *task_flags(run_id, MAPPED, 1), "--never-expire")
    after = stored(deployment)
    assert_only_expiry_changed(before, after, {M[1]})
    assert after[M[1]][2] is None and report["expires_at"] is None and report["updated"] == 1

    # --now: expired at the plan's moment; ls --expired lists it.
    before = after
    t0 = datetime.now(tz=UTC)
    report = expire(env, "c", *flags, "--now")
    after = stored(deployment)
    assert_only_expiry_changed(before, after, {C})
    new = after[C][2]
    assert new is not None and t0 <= new <= datetime.now(tz=UTC)
    assert as_utc(report["plan"]["at"]) == new
    listed = ok(env, "ls", "--expired", "-o", "json").json()
    assert [(r["task_id"], r["key"]) for r in listed] == [(TASK, "c")]


# --------------------------------------------------------------------------- --all over filters


def test_all_over_filters(deployment: AirflowEnv) -> None:
    env, run_id = populate(deployment)

    before = stored(deployment)
    report = expire(env, "--all", "--dag", DAG_ID, "--run", run_id, "--task", MAPPED, "--never-expire")
    after = stored(deployment)
    assert_only_expiry_changed(before, after, set(M))
    assert all(after[k][2] is None for k in M) and report["updated"] == 3

    before = after
    report = expire(env, "--all", "--map-index", "1", "--at", "2030-01-01T00:00:00Z")
    after = stored(deployment)
    assert_only_expiry_changed(before, after, {M[1]})
    assert report["plan"]["rows"] == 1 and report["plan"]["first"] == [f"task {DAG_ID}/{run_id}/{MAPPED}[1] key 'm'"]

    before = after
    report = expire(env, "--all", "--at", "2030-01-01T00:00:00Z")  # no filter: every task row
    after = stored(deployment)
    assert_only_expiry_changed(before, after, {A, B, C, M[0], M[2]})
    assert report["updated"] == 5 and report["already"] == 1
    assert {after[k][2] for k in after} == {datetime(2030, 1, 1, tzinfo=UTC)}

    # A filter that selects nothing: nothing to do, exit 0.
    r = ok(env, "expire", "--all", "--task", "no_such_task", "--now", "--yes")
    assert "nothing to expire" in r.stderr and stored(deployment) == after


def test_all_goes_in_batches_and_leaves_rows_added_after_the_plan(deployment: AirflowEnv) -> None:
    env, run_id = populate(deployment)
    late = TaskScope(DAG_ID, run_id, MAPPED, 2)
    progress: list[tuple[str, int, int | None]] = []

    def confirm(plan: ExpirePlan) -> bool:
        core_put(env, late, "late", 1, expiry=Expiry(never=True))  # a worker's new row after the plan
        return True

    def record(phase: str, advance: int, /, total: int | None = None) -> None:
        progress.append((phase, advance, total))

    before = stored(deployment)
    options = ExpireOptions(ExpiryChoice(ttl=timedelta(days=9)), flt=every_task_row(), batch_size=2)
    store = core_store(env)
    try:
        report = run_expire(store, options, confirm=confirm, progress=record)
    finally:
        store.close()
    after = stored(deployment)
    assert report.exit_code == ExitCode.OK and report.updated == 6 == report.plan.to_change, report.as_dict()
    assert after[(MAPPED, 2, "late")][2] is None, "not in the plan: left alone"
    del after[(MAPPED, 2, "late")]
    assert_only_expiry_changed(before, after, set(before))
    assert [a for phase, a, _ in progress if phase == "rows given the new expiry"] == [0, 2, 2, 2]
    assert ("planning", 2, None) in progress


# --------------------------------------------------------------------------- --now, then prune


def test_now_then_prune_takes_the_rows_and_their_objects(deployment: AirflowEnv) -> None:
    env, run_id = populate(deployment)
    rows = stored(deployment)
    object_of = {k: local_path(ref_of(v[0])) for k, v in rows.items() if ref_of(v[0]).startswith("file://")}
    assert set(object_of) == {A, *M} and all(p.is_file() for p in object_of.values())

    report = expire(env, "--all", "--task", MAPPED, "--map-index", "0", "--now")
    assert report["updated"] == 1
    report = expire(env, "a", "b", *task_flags(run_id), "--now")
    assert report["updated"] == 2
    r = ok(env, "prune", "--yes", "-o", "json")
    assert r.json()["deleted"]["expired"]["rows"] == 3 and r.json()["deleted"]["expired"]["objects"] == 2, str(r)

    after = stored(deployment)
    assert set(after) == {C, M[1], M[2]}
    assert not object_of[A].exists() and not object_of[M[0]].exists()
    assert object_of[M[1]].is_file() and object_of[M[2]].is_file()
    for key in after:
        assert after[key] == rows[key]


# --------------------------------------------------------------------------- rows changed meanwhile


def test_a_row_changed_between_plan_and_update_is_kept(deployment: AirflowEnv) -> None:
    """Between the plan and the update: b's value is rewritten (updated_at untouched, as a direct SQL
    write would) and c is re-set by a worker with the same value (a new updated_at). Both are left as
    they are and reported; a is updated; exit 8."""
    env, run_id = populate(deployment)
    scope = TaskScope(DAG_ID, run_id, TASK)
    shown: list[dict[str, Any]] = []

    def confirm(plan: ExpirePlan) -> bool:
        shown.append(plan.as_dict())
        deployment.query("UPDATE task_state_store SET value = :v WHERE \"key\" = 'b'", v='"rewritten"')
        core_put(env, scope, "c", "c", expiry=Expiry(ttl=timedelta(hours=5)))
        return True

    before = stored(deployment)
    options = ExpireOptions(ExpiryChoice(now=True), scope=scope, keys=("a", "b", "c"))
    store = core_store(env)
    try:
        report = run_expire(store, options, confirm=confirm)
    finally:
        store.close()
    after = stored(deployment)
    assert shown and shown[0]["to_change"] == 3
    assert report.exit_code == ExitCode.PARTIAL, report.as_dict()
    assert report.updated == 1
    assert report.changed_meanwhile == [f"task {scope.label()} key 'b'"]
    assert report.written_after_plan == [f"task {scope.label()} key 'c'"]
    assert report.as_dict()["exit_code"] == int(ExitCode.PARTIAL)
    assert after[B] == ('"rewritten"', before[B][1], before[B][2]), "expires_at unchanged"
    worker_expiry = after[C][2]
    assert worker_expiry is not None and worker_expiry > datetime.now(tz=UTC) + timedelta(hours=4), "the worker's"
    assert after[A][:2] == before[A][:2] and after[A][2] == report.plan.expires_at


def test_all_leaves_a_row_rewritten_after_the_plan(deployment: AirflowEnv) -> None:
    env, run_id = populate(deployment)

    def confirm(plan: ExpirePlan) -> bool:
        core_put(env, TaskScope(DAG_ID, run_id, MAPPED, 1), "m", "new", expiry=Expiry(never=True))
        return True

    options = ExpireOptions(ExpiryChoice(now=True), flt=every_task_row())
    store = core_store(env)
    try:
        report = run_expire(store, options, confirm=confirm)
    finally:
        store.close()
    assert report.exit_code == ExitCode.PARTIAL and report.updated == 5, report.as_dict()
    assert report.written_after_plan == [f"task {DAG_ID}/{run_id}/{MAPPED}[1] key 'm'"]
    assert stored(deployment)[M[1]][2] is None


# --------------------------------------------------------------------------- asking, dry run


def test_dry_run_changes_nothing(seeded: AirflowEnv) -> None:
    env, run_id = populate(seeded)
    before = db_snapshot(seeded), files_snapshot(seeded.bucket_dir)
    r = ok(env, "expire", "--all", "--now", "--dry-run", "-o", "json")
    document = r.json()
    assert document["dry_run"] is True and document["updated"] == 0
    assert document["plan"]["to_change"] == 6 and len(document["plan"]["first"]) == 6
    r = ok(env, "expire", "a", *task_flags(run_id), "--ttl", "1d", "--dry-run", "-o", "plain")
    assert r.stdout.splitlines()[0] == "expires_at\tto_change\talready"
    assert r.stdout.splitlines()[1].endswith("\t1\t0") and "dry run: nothing changed" in r.stderr
    assert (db_snapshot(seeded), files_snapshot(seeded.bucket_dir)) == before


def test_refuses_without_yes_off_a_terminal(seeded: AirflowEnv) -> None:
    env, run_id = populate(seeded)
    before = db_snapshot(seeded)
    r = statectl(env, "expire", "a", *task_flags(run_id), "--now")
    assert r.code == ExitCode.USAGE and "--yes" in r.stderr and len(r.stderr.strip().splitlines()) == 1, str(r)
    assert db_snapshot(seeded) == before


def test_a_terminal_asks(seeded: AirflowEnv) -> None:
    env, run_id = populate(seeded)
    before = db_snapshot(seeded)
    r = statectl_on_terminal(env, "expire", "a", "c", *task_flags(run_id), "--never-expire", answer="n")
    assert r.code == 0 and "Set expires_at of 2 row(s) to never?" in r.stderr, str(r)
    assert "nothing changed" in r.stderr and "Traceback" not in r.stderr
    assert db_snapshot(seeded) == before
    r = statectl_on_terminal(env, "expire", "a", "c", *task_flags(run_id), "--never-expire", "-o", "json", answer="y")
    assert r.code == 0 and json.loads(r.stdout)["updated"] == 2, str(r)
    assert expiry_of(seeded, A) is None and expiry_of(seeded, C) is None


# --------------------------------------------------------------------------- output


def test_json_and_plain_output(seeded: AirflowEnv) -> None:
    env, run_id = populate(seeded)
    document = expire(env, "a", "b", *task_flags(run_id), "--at", "2031-05-06T07:08:09Z")
    assert set(document) == {
        "dry_run",
        "plan",
        "expires_at",
        "updated",
        "already",
        "changed_meanwhile",
        "written_after_plan",
        "stopped",
        "exit_code",
    }
    assert set(document["plan"]) == {"at", "expires_at", "rows", "to_change", "already", "first"}
    assert document["expires_at"] == document["plan"]["expires_at"] == "2031-05-06T07:08:09+00:00"
    assert document["plan"]["first"] == [
        f"task {DAG_ID}/{run_id}/{TASK} key 'a'",
        f"task {DAG_ID}/{run_id}/{TASK} key 'b'",
    ]
    assert (document["updated"], document["already"], document["stopped"], document["exit_code"]) == (2, 0, None, 0)
    assert document["changed_meanwhile"] == [] and document["written_after_plan"] == []
    r = ok(env, "expire", "a", "c", *task_flags(run_id), "--at", "2031-05-06T07:08:09Z", "--yes", "-o", "plain")
    lines = r.stdout.splitlines()
    assert lines == [
        "expires_at\tupdated\talready\tchanged_meanwhile\twritten_after_plan",
        "2031-05-06T07:08:09+00:00\t1\t1\t0\t0",
    ]


# --------------------------------------------------------------------------- bad input

BAD: list[tuple[list[str], ExitCode, str]] = [
    (["k", "FULL", "--at", "2026-12-01", "--ttl", "1h"], ExitCode.USAGE, "--ttl and --at exclude each other"),
    (["k", "FULL", "--now", "--never-expire"], ExitCode.USAGE, "exclude each other"),
    (["k", "FULL"], ExitCode.USAGE, "give one of --ttl, --at, --never-expire or --now"),
    (["k", "--asset", ASSET, "--now"], ExitCode.USAGE, "asset state has no expiry"),
    (["--all", "--asset-uri", ASSET_URI, "--ttl", "1h"], ExitCode.USAGE, "asset state has no expiry"),
    (["k", "FULL", "--at", "next tuesday"], ExitCode.USAGE, "is not an ISO 8601 time"),
    (["k", "FULL", "--ttl", "soon"], ExitCode.USAGE, "is not a duration"),
    (["k", "FULL", "--all", "--now"], ExitCode.USAGE, "give KEYS or --all, not both"),
    (["FULL", "--now"], ExitCode.USAGE, "give KEYS (with --dag, --run and --task) or --all"),
    (["k", "--dag", DAG_ID, "--now"], ExitCode.USAGE, "incomplete task scope: missing --run, --task"),
    (["k", "--now"], ExitCode.USAGE, "KEYS need a task scope"),
    (["k", "nope", "FULL", "--now"], ExitCode.NOT_FOUND, "no key 'nope' in task"),
    (["k", "--dag", DAG_ID, "--run", "no_run", "--task", TASK, "--now"], ExitCode.NOT_FOUND, "no dag run 'no_run'"),
    (["--all", "--dag", DAG_ID, "--run", "no_run", "--task", TASK, "--now"], ExitCode.NOT_FOUND, "no dag run"),
]


@pytest.mark.parametrize(("args", "code", "needle"), BAD, ids=[n for _, _, n in BAD])
def test_bad_input_is_one_line_and_changes_nothing(
    seeded: AirflowEnv, args: list[str], code: ExitCode, needle: str
) -> None:
    run_id = run_id_of(seeded)
    env = backend_env(seeded)
    ok(env, "put", "k", json.dumps(BIG), *task_flags(run_id), "--ttl", "1h")
    full = task_flags(run_id)
    argv = [a for arg in args for a in (full if arg == "FULL" else [arg])]
    before = db_snapshot(seeded), files_snapshot(seeded.bucket_dir)
    r = statectl(env, "expire", *argv, "--yes")
    assert r.code == int(code), str(r)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("statectl: error: ") and needle in lines[0], str(r)
    assert r.stdout == "" and "Traceback" not in r.stderr
    assert (db_snapshot(seeded), files_snapshot(seeded.bucket_dir)) == before


def test_the_store_refuses_asset_rows_and_options_check_themselves(seeded: AirflowEnv) -> None:
    bad: list[Callable[[], object]] = [
        lambda: ExpireOptions(ExpiryChoice()).check(),
        lambda: ExpireOptions(ExpiryChoice(never=True, now=True), flt=RowFilter()).check(),
        lambda: ExpireOptions(ExpiryChoice(now=True), flt=RowFilter(asset_name=ASSET)).check(),
        lambda: ExpireOptions(ExpiryChoice(now=True), scope=TaskScope(DAG_ID, "r", TASK)).check(),
        lambda: ExpireOptions(ExpiryChoice(ttl=timedelta(0)), flt=RowFilter()).check(),
        lambda: ExpireOptions(ExpiryChoice(now=True), flt=RowFilter(), batch_size=0).check(),
    ]
    for call in bad:
        with pytest.raises(UsageError):
            call()
    store = core_store(seeded.env)
    try:
        row = StateRow(AssetScope(name=ASSET, asset_id=1), "k", "1", None)
        with pytest.raises(ValueError, match="only task rows"):
            store.metastore.set_expiry_many_if_unchanged([row], None)
    finally:
        store.close()


def test_the_store_sets_expiry_only_where_the_value_is_unchanged(deployment: AirflowEnv) -> None:
    """Metastore.set_expiry_many_if_unchanged alone, over more rows than one PostgreSQL statement takes."""
    run_id = run_id_of(deployment)
    scope = TaskScope(DAG_ID, run_id, TASK)
    stamp = datetime(2024, 1, 1, tzinfo=UTC)
    when = datetime(2033, 3, 3, 3, 3, 3, 333333, tzinfo=UTC)
    store = core_store(deployment.env)
    try:
        metastore = store.metastore
        dag_run_id = metastore.dag_run_id(scope)
        insert = metastore.sql_dialect.sql(
            'INSERT INTO task_state_store (dag_run_id, task_id, map_index, "key", dag_id, run_id, value, '
            "updated_at, expires_at) VALUES (?, ?, -1, ?, ?, ?, ?, ?, NULL)"
        )
        values = [
            (dag_run_id, TASK, f"k{i:04}", DAG_ID, run_id, json.dumps(i), metastore.sql_dialect.ts(stamp))
            for i in range(1100)
        ]
        metastore.conn.cursor().executemany(insert, values)
        metastore.commit()
        rows = metastore.scope_rows(scope)
        deployment.query("UPDATE task_state_store SET value = '\"changed\"' WHERE \"key\" = 'k0500'")
        assert metastore.set_expiry_many_if_unchanged([], when) == []
        done = metastore.set_expiry_many_if_unchanged([*rows, rows[0]], when)  # a row twice: updated once
    finally:
        store.close()
    assert sorted(r.key for r in done) == [f"k{i:04}" for i in range(1100) if i != 500]
    after = stored(deployment)
    assert {after[(TASK, -1, r.key)][2] for r in done} == {when}
    assert after[(TASK, -1, "k0500")] == ('"changed"', stamp, None)
    assert {updated_at for _, updated_at, _ in after.values()} == {stamp}, "updated_at stays"
