"""Expire: set ``expires_at`` on existing task rows without rewriting their values (asset rows have none).

The plan reads the rows at its moment ``at`` (counts, the first labels, the new expires_at) and asks;
execution then updates exactly the planned rows, each only if it still holds the value read
(updated_at stays: the value did not change):

- KEYS of one task instance: the rows the plan read, each read again just before its update;
- ``--all`` over filters: the rows streamed again in id order up to the last id the plan read (rows
  added since are not in the plan), one batch at a time, so memory stays at one batch.

A row written after the plan's moment (a worker re-set it after the plan was shown) is left alone, and
so is a row whose value changed since it was read; both are reported (exit 8). A row that already holds
the new expires_at counts as done, so re-running with --at or --never-expire changes nothing. With
``now`` the rows expire at the plan's moment: the next ``statectl prune`` takes them with their objects.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from statectl.core.durations import iso, parse_duration, parse_timestamp
from statectl.core.filters import RowFilter, filter_from_flags, utcnow
from statectl.core.scopes import ScopeFlags, TaskScope, check_key
from statectl.errors import ExitCode, NotFoundError, StatectlError, UsageError
from statectl.ops.report import NOT_CONFIRMED, Confirm, Progress
from statectl.stores.metastore import StateRow

if TYPE_CHECKING:
    from statectl.stores.store import StateStore

BATCH = 1000
FIRST_ENTRIES = 20
PLANNING = "planning"
EXPIRING = "rows given the new expiry"
_CHOICES = "--ttl, --at, --never-expire or --now"


@dataclass(frozen=True)
class ExpiryChoice:
    """The new expires_at, exactly one of: the plan's moment + ``ttl``, the time ``at``, never, or the
    plan's moment itself (``now``: expired)."""

    ttl: timedelta | None = None
    at: datetime | None = None
    never: bool = False
    now: bool = False

    @classmethod
    def from_flags(cls, *, ttl: str | None, at: str | None, never: bool, now: bool) -> ExpiryChoice:
        flags = (("--ttl", ttl is not None), ("--at", at is not None), ("--never-expire", never), ("--now", now))
        _one_of([flag for flag, given in flags if given])
        return cls(
            ttl=parse_duration(ttl, "--ttl") if ttl is not None else None,
            at=parse_timestamp(at) if at is not None else None,
            never=never,
            now=now,
        )

    def check(self) -> None:
        named = (("--ttl", self.ttl is not None), ("--at", self.at is not None), ("--never-expire", self.never))
        _one_of([f for f, given in (*named, ("--now", self.now)) if given])
        if self.ttl is not None and self.ttl <= timedelta(0):
            raise UsageError("--ttl must be longer than zero")

    def expires_at(self, moment: datetime) -> datetime | None:
        """The new expires_at (UTC) for a plan made at ``moment``; None: never expires."""
        if self.never:
            return None
        if self.now:
            return moment.astimezone(UTC)
        if self.ttl is not None:
            return (moment + self.ttl).astimezone(UTC)
        assert self.at is not None
        return (self.at if self.at.tzinfo else self.at.replace(tzinfo=UTC)).astimezone(UTC)


def _one_of(given: list[str]) -> None:
    if not given:
        raise UsageError(f"give one of {_CHOICES}")
    if len(given) > 1:
        raise UsageError(f"{' and '.join(given)} exclude each other: give one of {_CHOICES}")


@dataclass(frozen=True)
class ExpireOptions:
    """Which task rows get which expiry: KEYS of one task instance (``scope`` + ``keys``), or every task
    row a filter selects (``flt``: --all)."""

    expiry: ExpiryChoice
    flt: RowFilter | None = None
    scope: TaskScope | None = None
    keys: tuple[str, ...] = ()
    batch_size: int = BATCH
    first: int = FIRST_ENTRIES

    @classmethod
    def from_flags(cls, flags: ScopeFlags, keys: Sequence[str], *, every: bool, expiry: ExpiryChoice) -> ExpireOptions:
        """KEYS with a full task scope, or --all with the scope flags as filters."""
        if flags.given_asset_flags:
            raise UsageError(
                f"asset state has no expiry ({', '.join(flags.given_asset_flags)}): expire is for task state"
            )
        if keys and every:
            raise UsageError("give KEYS or --all, not both")
        if every:
            return cls(expiry, flt=filter_from_flags(flags, tasks=True))
        if not keys:
            raise UsageError("give KEYS (with --dag, --run and --task) or --all")
        if not flags.given_task_flags:
            raise UsageError("KEYS need a task scope: give --dag, --run and --task")
        scope = flags.scope()
        assert isinstance(scope, TaskScope)
        return cls(expiry, scope=scope, keys=tuple(keys))

    def check(self) -> None:
        self.expiry.check()
        if (self.flt is None) == (self.scope is None):
            raise UsageError("give KEYS of one task scope, or --all with filters")
        if self.scope is not None and not self.keys:
            raise UsageError("give KEYS or --all")
        if self.flt is not None and self.keys:
            raise UsageError("give KEYS or --all, not both")
        if self.flt is not None and not self.flt.wants_tasks:
            raise UsageError("asset state has no expiry: expire is for task state")
        for key in self.keys:
            check_key(key)
        if not 1 <= self.batch_size <= BATCH:
            raise UsageError(f"the batch size must be between 1 and {BATCH}")

    @property
    def task_filter(self) -> RowFilter:
        assert self.flt is not None
        return replace(self.flt, tasks=True, assets=False)


@dataclass
class ExpirePlan:
    at: datetime  # the plan's moment
    expires_at: datetime | None  # the new expires_at; None: never
    rows: int = 0  # rows read
    to_change: int = 0
    already: int = 0  # rows that hold the new expires_at already
    first: list[str] = field(default_factory=list)  # labels of the first rows to change
    keyed_rows: list[StateRow] | None = None  # KEYS: the rows read
    last_id: int | None = None  # --all: the last row id read; rows added since are not in the plan

    def count(self, rows: Sequence[StateRow], limit: int) -> None:
        for row in rows:
            self.rows += 1
            if row.expires_at == self.expires_at:
                self.already += 1
                continue
            self.to_change += 1
            if len(self.first) < limit:
                self.first.append(row.label)

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": iso(self.at),
            "expires_at": iso(self.expires_at),
            "rows": self.rows,
            "to_change": self.to_change,
            "already": self.already,
            "first": self.first,
        }


@dataclass
class ExpireReport:
    plan: ExpirePlan
    dry_run: bool
    declined: bool = False  # the plan was shown and not confirmed: nothing changed
    updated: int = 0
    already: int = 0
    changed_meanwhile: list[str] = field(default_factory=list)  # value changed or row removed since read: kept
    written_after_plan: list[str] = field(default_factory=list)  # re-set after the plan's moment: left alone
    stopped: str | None = None  # why the run stopped early (a store went away)
    stopped_code: ExitCode | None = None

    @property
    def exit_code(self) -> ExitCode:
        if self.stopped_code is not None:
            return self.stopped_code
        if self.changed_meanwhile or self.written_after_plan:
            return ExitCode.PARTIAL
        return ExitCode.OK

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "plan": self.plan.as_dict(),
            "expires_at": iso(self.plan.expires_at),
            "updated": self.updated,
            "already": self.already,
            "changed_meanwhile": self.changed_meanwhile,
            "written_after_plan": self.written_after_plan,
            "stopped": NOT_CONFIRMED if self.declined else self.stopped,
            "exit_code": int(self.exit_code),
        }


def _read_keys(store: StateStore, scope: TaskScope, keys: Sequence[str]) -> list[StateRow]:
    store.metastore.dag_run_id(scope)
    rows: list[StateRow] = []
    missing: list[str] = []
    for key in dict.fromkeys(keys):
        row = store.metastore.get_row(scope, key)
        if row is None:
            missing.append(key)
        else:
            rows.append(row)
    if missing:
        raise NotFoundError(f"no key {', '.join(repr(k) for k in missing)} in {scope}; nothing changed")
    return rows


def plan_expire(store: StateStore, options: ExpireOptions, progress: Progress | None = None) -> ExpirePlan:
    """The rows expire would change and their new expires_at; changes nothing."""
    options.check()
    moment = utcnow()
    plan = ExpirePlan(at=moment, expires_at=options.expiry.expires_at(moment))
    if options.scope is not None:
        plan.keyed_rows = _read_keys(store, options.scope, options.keys)
        plan.count(plan.keyed_rows, options.first)
    else:
        flt = options.task_filter
        if flt.dag_id is not None and flt.run_id is not None and flt.task_id is not None:
            store.metastore.dag_run_id(TaskScope(flt.dag_id, flt.run_id, flt.task_id))
        for batch in store.metastore.iter_batches(flt, options.batch_size):
            plan.count(batch, options.first)
            plan.last_id = batch[-1].row_id
            if progress:
                progress(PLANNING, len(batch))
    store.metastore.commit()  # no read transaction stays open while a person reads the plan
    return plan


def _planned(
    store: StateStore, options: ExpireOptions, plan: ExpirePlan
) -> Iterator[list[tuple[StateRow, StateRow | None]]]:
    """Batches of (the row as the plan read it, the row as it is now; None once it is gone)."""
    if plan.keyed_rows is not None:
        rows = plan.keyed_rows
        for start in range(0, len(rows), options.batch_size):
            yield [(r, store.metastore.get_row(r.scope, r.key)) for r in rows[start : start + options.batch_size]]
        return
    if plan.last_id is None:
        return
    for batch in store.metastore.iter_batches(options.task_filter, options.batch_size):
        planned = [r for r in batch if r.row_id is not None and r.row_id <= plan.last_id]
        if planned:
            yield [(r, r) for r in planned]
        if len(planned) < len(batch):
            return  # ids past the plan's last: added since


def _judge(report: ExpireReport, read: StateRow, current: StateRow | None) -> bool:
    """Whether the row goes to the update; if not, the report says why."""
    plan = report.plan
    if current is None or current.value != read.value:
        report.changed_meanwhile.append(read.label)
    elif current.updated_at is not None and current.updated_at > plan.at:
        report.written_after_plan.append(read.label)
    elif current.expires_at == plan.expires_at:
        report.already += 1
    else:
        return True
    return False


def execute_expire(
    store: StateStore, options: ExpireOptions, plan: ExpirePlan, progress: Progress | None = None
) -> ExpireReport:
    """Set the plan's expires_at on the planned rows that still hold the value read, batch by batch."""
    report = ExpireReport(plan, dry_run=False)
    if progress:
        progress(EXPIRING, 0, total=plan.rows)
    try:
        for pairs in _planned(store, options, plan):
            going = [read for read, current in pairs if _judge(report, read, current)]
            updated = {r.row_id for r in store.metastore.set_expiry_many_if_unchanged(going, plan.expires_at)}
            report.updated += len(updated)
            report.changed_meanwhile.extend(r.label for r in going if r.row_id not in updated)
            if progress:
                progress(EXPIRING, len(pairs))
    except StatectlError as e:
        # A store went away: each batch committed on its own; what is done is consistent.
        report.stopped = e.message
        report.stopped_code = e.exit_code
    return report


def run_expire(
    store: StateStore,
    options: ExpireOptions,
    *,
    dry_run: bool = False,
    confirm: Confirm[ExpirePlan] | None = None,
    progress: Progress | None = None,
) -> ExpireReport:
    """Plan, then (unless dry run, or not confirmed) set the new expires_at on exactly the planned rows."""
    options.check()
    store.metastore.check_schema()
    plan = plan_expire(store, options, progress)
    if dry_run:
        return ExpireReport(plan, dry_run=True, already=plan.already)
    if plan.to_change == 0:
        return ExpireReport(plan, dry_run=False, already=plan.already)
    if confirm is not None and not confirm(plan):
        return ExpireReport(plan, dry_run=False, declined=True, already=plan.already)
    return execute_expire(store, options, plan, progress)
