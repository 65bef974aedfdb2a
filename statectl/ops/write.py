"""Writing values as a worker writes them: put one (the object written and verified before the row points
to it), and remove keys (rm) or a whole scope (clear): the row first, only if it still holds the value
read, then its object, and only under the base path."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from statectl.core import codec
from statectl.core.codec import Location
from statectl.core.filters import utcnow
from statectl.core.layout import ObjectURL
from statectl.core.scopes import Scope, TaskScope, check_key
from statectl.errors import ExitCode, NotFoundError, TooLargeError, UsageError
from statectl.ops.report import NOT_CONFIRMED
from statectl.stores.metastore import StateRow
from statectl.stores.store import StateStore

if TYPE_CHECKING:
    from statectl.ops.report import Confirm, Progress


@dataclass(frozen=True)
class Expiry:
    """How long a task value lives: the SDK's ``retention`` argument."""

    ttl: timedelta | None = None
    never: bool = False

    def expires_at(self, now: datetime, default_days: int) -> datetime | None:
        """A new value's: the SDK's default is [state_store] default_retention_days (0: never)."""
        return self.or_else(None if default_days == 0 else now + timedelta(days=default_days), now)

    def or_else(self, default: datetime | None, now: datetime) -> datetime | None:
        """``default`` unless --ttl or --never-expire says otherwise (import, cp, mv keep each value's own)."""
        if self.never:
            return None
        if self.ttl is not None:
            return now + self.ttl
        return default


# -- put ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PutResult:
    scope: Scope
    key: str
    location: Location
    column_bytes: int
    url: ObjectURL | None
    expires_at: datetime | None
    warnings: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.OK

    def as_dict(self) -> dict[str, Any]:
        return {
            "scope": str(self.scope),
            "key": self.key,
            "location": self.location.value,
            "object": str(self.url) if self.url else None,
            "bytes": self.column_bytes,
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
        }


def put_value(
    store: StateStore, scope: Scope, key: str, value: Any, *, expiry: Expiry = Expiry(), force: bool = False
) -> PutResult:
    """Write a value exactly as a worker with the configured backend would: object first, then the row."""
    check_key(key)
    if value is None:
        raise UsageError("Airflow refuses to store None (use `statectl rm`)")
    config = store.config
    offload = config.offloads
    url = store.object_url_for(scope, key) if offload else None  # validates path and codec
    threshold = config.threshold if offload else 0
    encoded = codec.encode(value, offload=offload, threshold=threshold, url=url)
    warnings: list[str] = []
    limit = config.max_value_bytes
    size = codec.worker_size(encoded.column_text)
    if limit > 0 and size > limit:
        message = f"the stored value for key {key!r} is {size} bytes, over [state_store] max_value_storage_bytes"
        message += f"={limit}"
        if not force:
            raise TooLargeError(f"{message}; the REST API would refuse it (--force writes it as a worker would)")
        warnings.append(message + " (written because of --force; workers only warn)")

    scope = store.resolve(scope)
    dag_run_id = store.metastore.require_task_instance(scope) if isinstance(scope, TaskScope) else None
    previous = store.metastore.get_row(scope, key)
    expires_at = expiry.expires_at(utcnow(), config.retention_days) if isinstance(scope, TaskScope) else None

    if encoded.location is Location.OBJECT:
        assert url is not None and encoded.object_text is not None
        store.buckets.write_text(url, encoded.object_text, config.compression)
    store.metastore.upsert(scope, key, encoded.column_text, expires_at=expires_at, dag_run_id=dag_run_id)

    # The row no longer points at an older object (other codec, or now inline): remove it.
    new_ref = str(url) if encoded.location is Location.OBJECT else None
    if previous is not None:
        old = codec.classify(previous.value)
        if old.location is Location.OBJECT and old.ref and old.ref != new_ref:
            stale = store.deletable(old.ref)
            if isinstance(stale, ObjectURL):
                error = store.buckets.delete_many([stale])[0]
                if error is not None:
                    warnings.append(f"could not delete the previous object {stale}: {error.message}")
    location = encoded.location
    return PutResult(
        scope,
        key,
        location,
        encoded.column_bytes,
        url if location is Location.OBJECT else None,
        expires_at,
        warnings,
    )


# -- rm / clear ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RemovalOptions:
    scope: Scope
    keys: tuple[str, ...] | None = None  # None: every key of the scope (clear)
    all_map_indices: bool = False  # clear: every map index of a task
    missing_ok: bool = False  # rm: keys that do not exist are no error


@dataclass
class RemovalPlan:
    rows: list[StateRow]
    objects: dict[tuple[Scope, str], ObjectURL]  # (scope, key) -> object under the base path
    outside: list[tuple[StateRow, str]]  # refs statectl will not touch, with the reason
    missing_keys: list[str] = field(default_factory=list)


@dataclass
class RemovalReport:
    plan: RemovalPlan
    dry_run: bool
    declined: bool = False
    rows_deleted: list[StateRow] = field(default_factory=list)
    rows_changed: list[StateRow] = field(default_factory=list)  # rewritten by a worker meanwhile
    objects_deleted: list[ObjectURL] = field(default_factory=list)
    object_errors: list[tuple[ObjectURL, str]] = field(default_factory=list)

    @property
    def changed_nothing(self) -> bool:
        return self.dry_run or self.declined

    @property
    def rows(self) -> list[StateRow]:
        """The rows removed, or that would be."""
        return self.plan.rows if self.changed_nothing else self.rows_deleted

    @property
    def objects(self) -> list[ObjectURL]:
        return list(self.plan.objects.values()) if self.changed_nothing else self.objects_deleted

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.PARTIAL if self.rows_changed or self.object_errors else ExitCode.OK

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "rows": [{"scope": str(r.scope), "key": r.key} for r in self.rows],
            "objects": [str(u) for u in self.objects],
            "changed_meanwhile": [r.key for r in self.rows_changed],
            "left_outside_base": [{"key": r.key, "reason": why} for r, why in self.plan.outside],
            "object_errors": [{"object": str(u), "error": e} for u, e in self.object_errors],
            **({"stopped": NOT_CONFIRMED} if self.declined else {}),
        }


def plan_removal(store: StateStore, options: RemovalOptions) -> RemovalPlan:
    """The rows (and their objects under the base path) that rm or clear would remove."""
    keys = options.keys
    for key in keys or ():
        check_key(key)
    scope = store.resolve(options.scope)
    if isinstance(scope, TaskScope):
        store.metastore.dag_run_id(scope)
    rows: list[StateRow] = []
    missing: list[str] = []
    if keys is None:
        rows = store.metastore.scope_rows(scope, all_map_indices=options.all_map_indices)
    else:
        for key in dict.fromkeys(keys):
            row = store.metastore.get_row(scope, key)
            if row is None:
                missing.append(key)
            else:
                rows.append(row)
    if missing and not options.missing_ok:
        listed = ", ".join(repr(k) for k in missing)
        raise NotFoundError(f"no key {listed} in {scope}; nothing was removed (--missing-ok removes the others)")
    plan = RemovalPlan(rows=rows, objects={}, outside=[], missing_keys=missing)
    for row in rows:
        stored = codec.classify(row.value)
        if stored.location is not Location.OBJECT or stored.ref is None:
            continue
        target = store.deletable(stored.ref)
        if isinstance(target, ObjectURL):
            plan.objects[(row.scope, row.key)] = target
        else:
            plan.outside.append((row, target))
    return plan


def execute_removal(store: StateStore, plan: RemovalPlan, progress: Progress | None = None) -> RemovalReport:
    """Remove exactly the planned rows that still hold the value read, then their objects."""
    report = RemovalReport(plan, dry_run=False)
    # Every object's store usable (provider, connection) before a row goes: else the objects of rows
    # already deleted would be orphans. Building a filesystem sends no request.
    for url in {(u.protocol, u.conn_id): u for u in plan.objects.values()}.values():
        store.buckets.fs(url)
    deleted = store.metastore.delete_many_if_unchanged(plan.rows)
    deleted_ids = {id(r) for r in deleted}
    report.rows_deleted = deleted
    report.rows_changed = [r for r in plan.rows if id(r) not in deleted_ids]
    # Only objects whose row is gone; a row a worker rewrote keeps its object.
    urls = [plan.objects[(r.scope, r.key)] for r in deleted if (r.scope, r.key) in plan.objects]
    for url, error in zip(urls, store.buckets.delete_many(urls), strict=True):
        if error is not None:
            report.object_errors.append((url, error.message))
        else:
            report.objects_deleted.append(url)
    if progress is not None:
        progress("removed", len(deleted) + len(urls))
    return report


def run_removal(
    store: StateStore,
    options: RemovalOptions,
    *,
    dry_run: bool = False,
    confirm: Confirm[RemovalPlan] | None = None,
    progress: Progress | None = None,
) -> RemovalReport:
    """Plan the removal, ask, then remove exactly what was planned (rows first, then objects)."""
    plan = plan_removal(store, options)
    if dry_run:
        return RemovalReport(plan, dry_run=True)
    if confirm is not None and plan.rows and not confirm(plan):
        return RemovalReport(plan, dry_run=False, declined=True)
    return execute_removal(store, plan, progress)
