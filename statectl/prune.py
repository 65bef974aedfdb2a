"""Prune: expired task rows and their objects, orphan objects, and (optionally) old objects with their rows.

The provider's backend ignores ``expires_at`` and ``airflow state-store clean`` skips custom backends,
so objects outlive their rows. Prune is planned (counts, bytes, first entries per category), then
executed batch by batch with the same rules recomputed, so memory stays at one batch:

- expired task rows: each row is deleted only if it still holds the value read and is still expired
  (a worker that re-set the key wins); the batch commits; then, after one query shows that no row
  references them now, their objects are deleted (only strictly under the base path);
- orphans (objects no row references, older than the grace: a worker writes the object before the
  row) come from the merge scan (statectl.scan); they are deleted only when the plan's scan read every
  row, and each batch is re-checked first (no row references them now, still older than the grace);
- ``older_than``: objects last modified before that age go, their rows first (asset rows included).

Refs outside the base path are reported, never read or deleted (the expired row itself may go).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from statectl import codec, layout
from statectl.codec import Location
from statectl.errors import DataError, ExitCode, StatectlError, UsageError
from statectl.layout import ObjectURL
from statectl.metastore import RowFilter, StateRow, utcnow

if TYPE_CHECKING:
    from statectl.lock import BucketLock
    from statectl.scan import Scan, ScanEntry
    from statectl.store import StateStore

DEFAULT_GRACE = timedelta(hours=1)
MIN_GRACE = timedelta(minutes=1)
FIRST_ENTRIES = 20
BATCH = 1000  # S3 deletes up to 1000 keys per request


class Category(StrEnum):
    EXPIRED = "expired"  # expired task rows, and their objects
    ORPHANS = "orphans"  # objects no row references, older than the grace
    OLD = "older_than"  # objects last modified before --older-than, and the rows referencing them
    OUTSIDE = "outside_base"  # refs outside the base path: reported, the object never touched
    FRESH = "fresh_orphans"  # orphans younger than the grace: kept (maybe a worker's write in flight)


@dataclass(frozen=True)
class PruneOptions:
    flt: RowFilter = field(default_factory=RowFilter)
    orphans: bool = True
    grace: timedelta = DEFAULT_GRACE
    older_than: timedelta | None = None
    max_delete: int | None = None
    batch_size: int = BATCH
    first: int = FIRST_ENTRIES

    def check(self) -> None:
        if self.grace < MIN_GRACE:
            raise UsageError("--grace must be at least 1m: a worker writes the object before its row")
        if self.max_delete is not None and self.max_delete < 0:
            raise UsageError("--max-delete must be 0 or more")
        if not 1 <= self.batch_size <= BATCH:
            raise UsageError(f"--batch-size must be between 1 and {BATCH}")


@dataclass
class Tally:
    rows: int = 0
    objects: int = 0
    bytes: int = 0
    first: list[str] = field(default_factory=list)

    def add(self, label: str, *, rows: int = 0, objects: int = 0, size: int = 0, limit: int = FIRST_ENTRIES) -> None:
        self.rows += rows
        self.objects += objects
        self.bytes += size
        if len(self.first) < limit:
            self.first.append(label)

    def as_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "objects": self.objects, "bytes": self.bytes, "first": self.first}


def _tallies() -> dict[str, Tally]:
    return {c.value: Tally() for c in Category}


@dataclass
class PrunePlan:
    options: PruneOptions
    at: datetime
    tallies: dict[str, Tally] = field(default_factory=_tallies)
    orphans_refused: str | None = None  # why orphans will not be deleted: the scan could not read every row
    notes: list[str] = field(default_factory=list)

    @property
    def deletions(self) -> int:
        """Rows + objects the plan would delete (no orphans when they are refused)."""
        going = [Category.EXPIRED, Category.OLD] + ([] if self.orphans_refused else [Category.ORPHANS])
        return sum(self.tallies[c].rows + self.tallies[c].objects for c in going)

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "categories": {k: t.as_dict() for k, t in self.tallies.items()},
            "deletions": self.deletions,
            "orphans_refused": self.orphans_refused,
            "notes": self.notes,
        }


@dataclass
class PruneReport:
    plan: PrunePlan
    dry_run: bool
    deleted: dict[str, Tally] = field(default_factory=_tallies)
    changed_meanwhile: list[str] = field(default_factory=list)  # rows a worker rewrote: kept
    kept: list[tuple[str, str]] = field(default_factory=list)  # objects kept at the last check, and why
    object_errors: list[tuple[str, str]] = field(default_factory=list)
    orphans_refused: str | None = None
    stopped: str | None = None  # "max-delete" or why the run stopped early
    stopped_code: ExitCode | None = None
    lock_notes: list[str] = field(default_factory=list)

    @property
    def deletions(self) -> int:
        return sum(t.rows + t.objects for t in self.deleted.values())

    @property
    def exit_code(self) -> ExitCode:
        if self.stopped_code is not None:
            return self.stopped_code
        if self.object_errors or self.orphans_refused:
            return ExitCode.PARTIAL
        return ExitCode.OK

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "plan": self.plan.as_dict(),
            "deleted": {k: t.as_dict() for k, t in self.deleted.items() if k not in (Category.OUTSIDE, Category.FRESH)},
            "deletions": self.deletions,
            "changed_meanwhile": self.changed_meanwhile,
            "kept": [{"object": u, "reason": why} for u, why in self.kept],
            "object_errors": [{"object": u, "error": e} for u, e in self.object_errors],
            "orphans_refused": self.orphans_refused,
            "stopped": self.stopped,
            "lock": self.lock_notes,
            "exit_code": int(self.exit_code),
        }


Progress = Callable[[int], None]  # things (rows + objects) dealt with since the last call


def _label(row: StateRow) -> str:
    return f"{row.scope.kind} {row.scope.label()} key {row.key!r}"


def _referrer_rows(entry: ScanEntry) -> list[StateRow]:
    return [r.row for r in entry.referrers]


class _Pruner:
    """The rules, shared by plan and execute."""

    def __init__(self, store: StateStore, options: PruneOptions) -> None:
        options.check()
        self.store = store
        self.options = options
        self.base = store.base

    def expired_filter(self, now: datetime) -> RowFilter:
        return replace(self.options.flt, expired_before=now, assets=False)

    def object_of(self, row: StateRow) -> ObjectURL | str | None:
        """The row's object if prune may delete it, the reason if not, None for plain/inline rows."""
        stored = codec.classify(row.value)
        if stored.location is not Location.OBJECT or stored.ref is None:
            return None
        try:
            return layout.require_under_base(stored.ref, self.base)
        except DataError as e:
            return e.message

    def scan(self) -> Scan:
        """The merge scan over the filtered rows and objects (streamed by its entries())."""
        from statectl.scan import Scan

        return Scan(self.store, self.options.flt)

    def wants_scan(self) -> bool:
        return self.base is not None and (self.options.orphans or self.options.older_than is not None)


def plan_prune(store: StateStore, options: PruneOptions, progress: Progress | None = None) -> PrunePlan:
    """What prune would delete, from the rows and one listing; changes nothing."""
    pruner = _Pruner(store, options)
    now = utcnow()
    plan = PrunePlan(options, now)
    t = plan.tallies
    limit = options.first
    for batch in store.metastore.iter_batches(pruner.expired_filter(now), options.batch_size):
        for row in batch:
            target = pruner.object_of(row)
            size = len(row.value.encode())
            if isinstance(target, str):
                t[Category.OUTSIDE].add(f"{_label(row)}: {target}", rows=1, limit=limit)
            t[Category.EXPIRED].add(
                _label(row), rows=1, objects=int(isinstance(target, ObjectURL)), size=size, limit=limit
            )
        if progress:
            progress(len(batch))
    if store.base is None:
        plan.notes.append("no [common.io] state_store_objectstorage_path is configured: rows only, no objects")
    if not pruner.wants_scan():
        return plan
    scan = pruner.scan()
    grace_cutoff = now - options.grace
    old_cutoff = now - options.older_than if options.older_than else None
    for entry in scan.entries():
        obj = entry.obj
        if obj is None:
            continue
        size = obj.size or 0
        rows = _referrer_rows(entry)
        if not rows:
            if not options.orphans:
                continue
            young = obj.modified is None or obj.modified >= grace_cutoff
            t[Category.FRESH if young else Category.ORPHANS].add(str(obj.url), objects=1, size=size, limit=limit)
        elif any(r.expires_at is not None and r.expires_at < now for r in rows):
            t[Category.EXPIRED].bytes += size  # counted with its expired row above
        elif old_cutoff is not None and obj.modified is not None and obj.modified < old_cutoff:
            t[Category.OLD].add(str(obj.url), rows=len(rows), objects=1, size=size, limit=limit)
    if not scan.complete:
        plan.orphans_refused = f"not every row could be read ({scan.incomplete_reason}): orphans are not deleted"
    return plan


class _Executor:
    def __init__(self, store: StateStore, plan: PrunePlan, progress: Progress | None, lock: BucketLock | None) -> None:
        self.pruner = _Pruner(store, plan.options)
        self.store = store
        self.options = plan.options
        self.report = PruneReport(plan, dry_run=False, orphans_refused=plan.orphans_refused)
        self.progress = progress
        self.lock = lock
        self.now = utcnow()

    # -- budget ---------------------------------------------------------------------
    def _room(self) -> int | None:
        if self.options.max_delete is None:
            return None
        return self.options.max_delete - self.report.deletions

    def _fit(self, items: list[Any], cost: Callable[[Any], int]) -> list[Any]:
        """The items that fit in what --max-delete leaves; stop the run when some do not."""
        room = self._room()
        if room is None:
            return items
        kept: list[Any] = []
        for item in items:
            room -= cost(item)
            if room < 0:
                self.report.stopped = f"stopped at max-delete ({self.options.max_delete}): re-run to go on"
                self.report.stopped_code = ExitCode.MAX_DELETE
                break
            kept.append(item)
        return kept

    def _between_batches(self) -> None:
        if self.lock is not None:
            self.lock.check()

    def _tick(self, count: int) -> None:
        if self.progress:
            self.progress(count)

    # -- objects --------------------------------------------------------------------
    def _delete_objects(self, urls: list[ObjectURL], category: Category, sizes: dict[str, int] | None = None) -> None:
        """Delete objects no row references now (one query for the batch), strictly under the base."""
        if not urls:
            return
        texts = {str(u): codec.wrap_ref(str(u)) for u in urls}
        referenced = self.store.metastore.referenced_texts(list(texts.values()))
        going = []
        for url in urls:
            if texts[str(url)] in referenced:
                self.report.kept.append((str(url), "a row references it again (a worker wrote it meanwhile)"))
            elif self.pruner.base is None or not layout.is_under_base(url, self.pruner.base):
                self.report.kept.append((str(url), "outside the configured base path"))
            else:
                going.append(url)
        tally = self.report.deleted[category]
        for url, error in self.store.buckets.delete_many(going):
            if error:
                self.report.object_errors.append((str(url), error))
            else:
                tally.add(str(url), objects=1, size=(sizes or {}).get(str(url), 0), limit=self.options.first)

    def _delete_rows(self, rows: list[StateRow], category: Category, *, expired: bool) -> list[StateRow]:
        deleted = self.store.metastore.delete_many_if_unchanged(rows, still_expired_at=self.now if expired else None)
        gone = {id(r) for r in deleted}
        tally = self.report.deleted[category]
        for row in rows:
            if id(row) in gone:
                tally.add(_label(row), rows=1, size=len(row.value.encode()), limit=self.options.first)
            else:
                self.report.changed_meanwhile.append(_label(row))
        return deleted

    # -- expired rows -----------------------------------------------------------------
    def expired(self) -> None:
        flt = self.pruner.expired_filter(self.now)
        for batch in self.store.metastore.iter_batches(flt, self.options.batch_size):
            self._between_batches()
            targets = {id(row): self.pruner.object_of(row) for row in batch}
            batch = self._fit(batch, lambda row, targets=targets: 1 + isinstance(targets[id(row)], ObjectURL))
            deleted = self._delete_rows(batch, Category.EXPIRED, expired=True)
            urls = [t for r in deleted if isinstance(t := targets[id(r)], ObjectURL)]
            self._delete_objects(urls, Category.EXPIRED)
            self._tick(len(batch) + len(urls))
            if self.report.stopped:
                return

    # -- orphans and old objects --------------------------------------------------------
    def scanned(self) -> None:
        if not self.pruner.wants_scan():
            return
        scan = self.pruner.scan()
        orphans_allowed = self.options.orphans and self.report.orphans_refused is None
        old_cutoff = self.now - self.options.older_than if self.options.older_than else None
        orphans: list[Any] = []
        old: list[Any] = []
        for entry in scan.entries():
            obj = entry.obj
            if obj is None:
                continue
            rows = _referrer_rows(entry)
            if not rows:
                if orphans_allowed and obj.modified is not None and obj.modified < self.now - self.options.grace:
                    orphans.append(obj)
            elif old_cutoff is not None and obj.modified is not None and obj.modified < old_cutoff:
                old.append((obj, rows))
            if len(orphans) >= self.options.batch_size:
                self._orphan_batch(orphans)
                orphans = []
            if len(old) >= self.options.batch_size:
                self._old_batch(old)
                old = []
            if self.report.stopped:
                return
        self._orphan_batch(orphans)
        if not self.report.stopped:
            self._old_batch(old)
        if not scan.complete and self.options.orphans and self.report.orphans_refused is None:
            self.report.orphans_refused = (
                f"not every row could be read during the run ({scan.incomplete_reason}); the orphans deleted "
                "were each re-checked against the metastore"
            )

    def _orphan_batch(self, objects: list[Any]) -> None:
        if not objects:
            return
        self._between_batches()
        objects = self._fit(objects, lambda _obj: 1)
        # Still old enough now (a worker may have rewritten it since the listing).
        modified = self.store.buckets.modified_many([o.url for o in objects])
        cutoff = utcnow() - self.options.grace
        urls = []
        for obj, when in zip(objects, modified, strict=True):
            if when is None or when >= cutoff:
                self.report.kept.append((str(obj.url), "modified since the listing, or gone"))
            else:
                urls.append(obj.url)
        self._delete_objects(urls, Category.ORPHANS, {str(o.url): o.size or 0 for o in objects})
        self._tick(len(objects))

    def _old_batch(self, items: list[tuple[Any, list[StateRow]]]) -> None:
        if not items:
            return
        self._between_batches()
        items = self._fit(items, lambda item: 1 + len(item[1]))
        deleted = {
            id(r) for r in self._delete_rows([r for _, rows in items for r in rows], Category.OLD, expired=False)
        }
        # An object goes only once every row that referenced it is gone.
        urls = [obj.url for obj, rows in items if all(id(r) in deleted for r in rows)]
        self._delete_objects(urls, Category.OLD, {str(o.url): o.size or 0 for o, _ in items})
        self._tick(sum(1 + len(rows) for _, rows in items))


def execute_prune(
    store: StateStore, plan: PrunePlan, progress: Progress | None = None, lock: BucketLock | None = None
) -> PruneReport:
    """Delete what the plan's rules select, batch by batch, recomputed from the stores as they are now."""
    run = _Executor(store, plan, progress, lock)
    try:
        run.expired()
        if not run.report.stopped:
            run.scanned()
    except StatectlError as e:
        # A store went away or the lock was lost: what is done is consistent; say so and stop.
        run.report.stopped = e.message
        run.report.stopped_code = e.exit_code
    return run.report


def run_prune(
    store: StateStore,
    options: PruneOptions,
    *,
    dry_run: bool = False,
    confirm: Callable[[PrunePlan], bool] | None = None,
    progress: Progress | None = None,
    lock_timeout: timedelta | None = None,
) -> PruneReport:
    """Plan, then (unless dry run, or not confirmed) execute under the bucket lock."""
    from statectl.lock import DEFAULT_LOCK_TIMEOUT, BucketLock

    options.check()
    store.check_reachable(store.base)
    if dry_run:
        return PruneReport(plan_prune(store, options), dry_run=True)
    lock = None
    if store.base is not None:
        lock = BucketLock(store.buckets, store.base, timeout=lock_timeout or DEFAULT_LOCK_TIMEOUT)
        lock.acquire()
    try:
        plan = plan_prune(store, options)
        if plan.deletions == 0:
            report = PruneReport(plan, dry_run=False, orphans_refused=plan.orphans_refused)
        elif confirm is not None and not confirm(plan):
            report = PruneReport(plan, dry_run=True, stopped="not confirmed: nothing changed")
            report.stopped_code = ExitCode.USAGE
        else:
            report = execute_prune(store, plan, progress, lock)
    finally:
        if lock is not None:
            lock.release()
    report.lock_notes = lock.notes if lock is not None else ["no lock: no bucket is configured (rows only)"]
    return report
