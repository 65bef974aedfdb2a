"""The operations: read, write, list and remove state across the metastore and the bucket.

Ordering rules (the provider's, so that a crash at any point leaves every value readable):
- write: the object is written and read back before the row points to it;
- remove: the row goes first (only if it still holds the value read), then its object;
- nothing outside the configured base path is ever deleted.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from fnmatch import fnmatchcase
from functools import cached_property
from typing import Any

from statectl import codec, layout
from statectl.bucket import Buckets
from statectl.codec import Location, StoredValue
from statectl.config import Config
from statectl.errors import ConfigError, DataError, NotFoundError, TooLargeError, UsageError
from statectl.layout import ObjectURL
from statectl.metastore import Metastore, RowFilter, StateRow, utcnow
from statectl.scopes import AssetScope, Scope, TaskScope, check_key


@dataclass(frozen=True)
class Expiry:
    """How long a task value lives: the SDK's ``retention`` argument."""

    ttl: timedelta | None = None
    never: bool = False

    def expires_at(self, now: datetime, default_days: int) -> datetime | None:
        if self.never:
            return None
        if self.ttl is not None:
            return now + self.ttl
        return None if default_days == 0 else now + timedelta(days=default_days)


@dataclass(frozen=True)
class ReadResult:
    scope: Scope
    key: str
    value: Any
    stored: StoredValue | None  # None when read straight from the bucket
    row: StateRow | None
    url: ObjectURL | None = None


@dataclass(frozen=True)
class PutResult:
    scope: Scope
    key: str
    location: Location
    column_bytes: int
    url: ObjectURL | None
    expires_at: datetime | None
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Entry:
    """One listed row, classified."""

    row: StateRow
    stored: StoredValue


@dataclass
class RemovalPlan:
    rows: list[StateRow]
    objects: dict[tuple[Any, str], ObjectURL]  # (scope, key) -> object under the base path
    outside: list[tuple[StateRow, str]]  # refs statectl will not touch, with the reason
    missing_keys: list[str] = field(default_factory=list)


@dataclass
class RemovalReport:
    plan: RemovalPlan
    dry_run: bool
    rows_deleted: list[StateRow] = field(default_factory=list)
    rows_changed: list[StateRow] = field(default_factory=list)  # rewritten by a worker meanwhile
    objects_deleted: list[ObjectURL] = field(default_factory=list)
    object_errors: list[tuple[ObjectURL, str]] = field(default_factory=list)


class StateStore:
    """The state store of one Airflow deployment, as its configuration describes it."""

    def __init__(self, config: Config, concurrency: int = 16) -> None:
        self.config = config
        self.concurrency = concurrency

    @cached_property
    def metastore(self) -> Metastore:
        return Metastore(self.config.sql_alchemy_conn)

    @cached_property
    def buckets(self) -> Buckets:
        return Buckets(self.concurrency)

    @cached_property
    def base(self) -> ObjectURL | None:
        path = self.config.base_path
        return None if path is None else layout.parse_base_path(path)

    def require_base(self) -> ObjectURL:
        if self.base is None:
            raise ConfigError("no [common.io] state_store_objectstorage_path is configured (set it, or pass --path)")
        return self.base

    def check_reachable(self, *bases: ObjectURL | None) -> None:
        """Before a long operation changes anything: the tables exist and each bucket answers."""
        self.metastore.check_schema()
        for base in dict.fromkeys(b for b in bases if b is not None):
            self.buckets.probe(base)

    def close(self) -> None:
        if "metastore" in self.__dict__:
            self.metastore.close()

    def resolve(self, scope: Scope) -> Scope:
        if isinstance(scope, AssetScope):
            return self.metastore.resolve_asset(scope)
        return scope

    # -- read -----------------------------------------------------------------------
    def decode(self, stored: StoredValue) -> tuple[Any, ObjectURL | None]:
        """The value a worker with the backend reads for a stored column."""
        if stored.location is Location.PLAIN:
            return codec.decode_json(stored.text, "the row"), None
        assert stored.ref is not None
        if stored.location is Location.INLINE:
            return codec.decode_json(stored.ref, "the row's inline ref"), None
        url = layout.require_readable(stored.ref, self.base)
        text = self.buckets.read_text(url)
        return codec.decode_json(text, f"object {url}"), url

    def get(self, scope: Scope, key: str, *, raw: bool = False) -> ReadResult:
        check_key(key)
        scope = self.resolve(scope)
        row = self.metastore.get_row(scope, key)
        if row is None:
            if isinstance(scope, TaskScope):
                self.metastore.require_task_instance(scope)  # say which part of the scope is unknown
            raise NotFoundError(f"no key {key!r} in {scope.kind} {scope.label()}")
        stored = codec.classify(row.value)
        if raw:
            return ReadResult(scope, key, None, stored, row)
        value, url = self.decode(stored)
        return ReadResult(scope, key, value, stored, row, url)

    def object_url_for(self, scope: Scope, key: str) -> ObjectURL:
        """Where the provider puts (scope, key) under the current configuration."""
        return layout.object_url(self.require_base(), scope, key, self.config.compression)

    def get_from_bucket(self, scope: Scope, key: str) -> ReadResult:
        """Read the object at the provider's path, without the metastore."""
        check_key(key)
        url = self.object_url_for(scope, key)
        text = self.buckets.read_text(url)
        return ReadResult(scope, key, codec.decode_json(text, f"object {url}"), None, None, url)

    # -- write ----------------------------------------------------------------------
    def put(self, scope: Scope, key: str, value: Any, *, expiry: Expiry = Expiry(), force: bool = False) -> PutResult:
        check_key(key)
        if value is None:
            raise UsageError("Airflow refuses to store None (use `statectl rm`)")
        offload = self.config.offloads
        url = self.object_url_for(scope, key) if offload else None  # validates path and codec
        threshold = self.config.threshold if offload else 0
        encoded = codec.encode(value, offload=offload, threshold=threshold, url=url)
        warnings: list[str] = []
        limit = self.config.max_value_bytes
        size = codec.worker_size(encoded.column_text)
        if limit > 0 and size > limit:
            message = (
                f"the stored value for key {key!r} is {size} bytes, over [state_store] max_value_storage_bytes={limit}"
            )
            if not force:
                raise TooLargeError(f"{message}; the REST API would refuse it (--force writes it as a worker would)")
            warnings.append(message + " (written because of --force; workers only warn)")

        scope = self.resolve(scope)
        dag_run_id = self.metastore.require_task_instance(scope) if isinstance(scope, TaskScope) else None
        previous = self.metastore.get_row(scope, key)
        expires_at = None
        if isinstance(scope, TaskScope):
            expires_at = expiry.expires_at(utcnow(), self.config.retention_days)

        if encoded.location is Location.OBJECT:
            assert url is not None and encoded.object_text is not None
            self.buckets.write_text(url, encoded.object_text, self.config.compression)
        self.metastore.upsert(scope, key, encoded.column_text, expires_at=expires_at, dag_run_id=dag_run_id)

        # The row no longer points at an older object (other codec, or now inline): remove it.
        if previous is not None:
            old = codec.classify(previous.value)
            if (
                old.location is Location.OBJECT
                and old.ref
                and old.ref != (str(url) if encoded.location is Location.OBJECT else None)
            ):
                stale = self._deletable(old.ref)
                if isinstance(stale, ObjectURL):
                    for stale_url, error in self.buckets.delete_many([stale]):
                        if error:
                            warnings.append(f"could not delete the previous object {stale_url}: {error}")
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

    # -- list -----------------------------------------------------------------------
    def ls(self, flt: RowFilter, key_glob: str | None = None) -> Iterator[Entry]:
        for row in self.metastore.iter_rows(flt):
            if key_glob is not None and not fnmatchcase(row.key, key_glob):
                continue
            yield Entry(row, codec.classify(row.value))

    # -- remove ---------------------------------------------------------------------
    def _deletable(self, ref: str) -> ObjectURL | str:
        """The object URL if statectl may delete it, else the reason it may not."""
        try:
            return layout.require_under_base(ref, self.base)
        except DataError as e:
            return e.message

    def _plan(self, rows: list[StateRow], missing: list[str]) -> RemovalPlan:
        plan = RemovalPlan(rows=rows, objects={}, outside=[], missing_keys=missing)
        for row in rows:
            stored = codec.classify(row.value)
            if stored.location is not Location.OBJECT or stored.ref is None:
                continue
            target = self._deletable(stored.ref)
            if isinstance(target, ObjectURL):
                plan.objects[(row.scope, row.key)] = target
            else:
                plan.outside.append((row, target))
        return plan

    def plan_rm(self, scope: Scope, keys: list[str]) -> RemovalPlan:
        for key in keys:
            check_key(key)
        scope = self.resolve(scope)
        if isinstance(scope, TaskScope):
            self.metastore.dag_run_id(scope)
        rows, missing = [], []
        for key in dict.fromkeys(keys):
            row = self.metastore.get_row(scope, key)
            if row is None:
                missing.append(key)
            else:
                rows.append(row)
        return self._plan(rows, missing)

    def plan_clear(self, scope: Scope, *, all_map_indices: bool = False) -> RemovalPlan:
        scope = self.resolve(scope)
        if isinstance(scope, TaskScope):
            self.metastore.dag_run_id(scope)
        return self._plan(self.metastore.scope_rows(scope, all_map_indices=all_map_indices), [])

    def execute_removal(self, plan: RemovalPlan, *, dry_run: bool = False) -> RemovalReport:
        report = RemovalReport(plan, dry_run)
        if dry_run:
            return report
        deleted = self.metastore.delete_if_unchanged(plan.rows)
        deleted_ids = {id(r) for r in deleted}
        report.rows_deleted = deleted
        report.rows_changed = [r for r in plan.rows if id(r) not in deleted_ids]
        # Only objects whose row is gone; a row a worker rewrote keeps its object.
        urls = [plan.objects[(r.scope, r.key)] for r in deleted if (r.scope, r.key) in plan.objects]
        for url, error in self.buckets.delete_many(urls):
            if error:
                report.object_errors.append((url, error))
            else:
                report.objects_deleted.append(url)
        return report
