"""Prune: expired task rows and their objects, orphan objects, and (optionally) old objects with their rows.

The provider's backend ignores ``expires_at`` and ``airflow state-store clean`` skips custom backends,
so objects outlive their rows. Prune is planned (counts, bytes, first entries per category), then
executed batch by batch, so memory stays at one batch. Plan and execution apply the same rule per
category (:class:`_Rules`) at the same moment, the plan's ``at``; once a person has confirmed a plan,
execution deletes no more than it counted (what became eligible since is left for the next run):

- expired task rows: each row is deleted only if it still holds the value read and is still expired
  (a worker that re-set the key wins); the batch commits; then, after one query shows that no row
  references them now, their objects are deleted (only strictly under the base path);
- orphans (objects no row references, older than the grace: a worker writes the object before the
  row) come from the merge scan (statectl.ops.scan); they are deleted only when the plan's scan read every
  row, and each batch is re-checked first (no row references them now, still older than the grace);
- ``older_than``: objects last modified before that age go, their rows first (asset rows included).

Refs outside the base path are reported, never read or deleted (the expired row itself may go).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from functools import lru_cache, partial
from typing import TYPE_CHECKING, Any, TypeVar

from statectl.core import codec, layout
from statectl.core.codec import Location
from statectl.core.filters import RowFilter, utcnow
from statectl.core.layout import ObjectURL, TaskAddress
from statectl.errors import ExitCode, StatectlError, UsageError
from statectl.ops.report import NOT_CONFIRMED, Confirm, Progress
from statectl.ops.scan import DEFAULT_GRACE
from statectl.stores.bucket import DELETE_BATCH, Result, modified_or_none
from statectl.stores.deletions import Deletions
from statectl.stores.metastore import Metastore, StateRow

if TYPE_CHECKING:
    from statectl.ops.scan import Scan, ScanEntry, StoredObject
    from statectl.stores.lock import BucketLock
    from statectl.stores.store import StateStore

T = TypeVar("T")

MIN_GRACE = timedelta(minutes=1)
FIRST_ENTRIES = 20
BATCH = DELETE_BATCH
# Batches of object deletes in flight while the next batch's rows go: S3 answers a 1000-key delete in
# tens of ms, so a few overlap the DB work. A kill leaves at most these batches' objects (their rows
# gone) for the next run to collect as orphans after the grace.
DELETES_IN_FLIGHT = 4


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
class PruneTally:
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


def _tallies() -> dict[str, PruneTally]:
    return {c.value: PruneTally() for c in Category}


@dataclass
class PrunePlan:
    options: PruneOptions
    at: datetime
    tallies: dict[str, PruneTally] = field(default_factory=_tallies)
    orphans_refused: str | None = None  # why orphans will not be deleted: the scan could not read every row
    notes: list[str] = field(default_factory=list)

    @property
    def deletions(self) -> int:
        """Rows + objects the plan would delete (no orphans when they are refused)."""
        return sum(self.planned(c) for c in self.going)

    @property
    def going(self) -> list[Category]:
        """The categories execution deletes from."""
        return [Category.EXPIRED, Category.OLD] + ([] if self.orphans_refused else [Category.ORPHANS])

    def planned(self, category: Category) -> int:
        tally = self.tallies[category]
        return tally.rows + tally.objects

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "shard": self.options.flt.shard_label,
            "categories": {k: t.as_dict() for k, t in self.tallies.items()},
            "deletions": self.deletions,
            "orphans_refused": self.orphans_refused,
            "notes": self.notes,
        }


@dataclass
class PruneReport:
    plan: PrunePlan
    dry_run: bool
    deleted: dict[str, PruneTally] = field(default_factory=_tallies)
    changed_meanwhile: list[str] = field(default_factory=list)  # rows a worker rewrote: kept
    kept: list[tuple[str, str]] = field(default_factory=list)  # objects kept at the last check, and why
    object_errors: list[tuple[str, str]] = field(default_factory=list)
    orphans_refused: str | None = None
    stopped: str | None = None  # "max-delete" or why the run stopped early
    stopped_code: ExitCode | None = None
    lock_notes: list[str] = field(default_factory=list)
    declined: bool = False  # the plan was shown and not confirmed: nothing changed
    # Rows + objects per category that became eligible after a confirmed plan: left for the next run.
    beyond_plan: dict[str, int] = field(default_factory=dict)

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
            "beyond_plan": self.beyond_plan,
            "lock": self.lock_notes,
            "exit_code": int(self.exit_code),
        }


def _referrer_rows(entry: ScanEntry) -> list[StateRow]:
    return [r.row for r in entry.referrers]


class _Rules:
    """One rule per category, applied by plan and execution alike at the plan's moment ``now``."""

    def __init__(self, store: StateStore, options: PruneOptions, now: datetime) -> None:
        options.check()
        self.store = store
        self.options = options
        self.base = store.base
        self.now = now
        self.grace_cutoff = now - options.grace
        self.old_cutoff = now - options.older_than if options.older_than else None

    def expired_filter(self) -> RowFilter:
        """Expired task rows: expires_at before ``now`` (asset rows never expire)."""
        return replace(self.options.flt, expired_before=self.now, assets=False)

    def judged(self, rows: list[StateRow]) -> list[StateRow]:
        """The rows as they stood at ``now``: one written since (new value or new expiry) was not."""
        return [r for r in rows if r.updated_at is None or r.updated_at <= self.now]

    def object_of(self, row: StateRow) -> ObjectURL | str | None:
        """The row's object if prune may delete it, the reason if not, None for plain/inline rows."""
        stored = codec.classify(row.value)
        if stored.location is not Location.OBJECT or stored.ref is None:
            return None
        return self.store.deletable(stored.ref)

    def old_enough(self, modified: datetime | None) -> bool:
        """An orphan goes once older than the grace (a worker writes the object before its row)."""
        return modified is not None and modified < self.grace_cutoff

    def category(self, entry: ScanEntry) -> Category | None:
        """What the scan's entry is to prune: None for a ref without an object and a kept object."""
        obj = entry.obj
        if obj is None:
            return None
        rows = _referrer_rows(entry)
        if not rows:
            if not self.options.orphans:
                return None
            return Category.ORPHANS if self.old_enough(obj.modified) else Category.FRESH
        if any(r.expires_at is not None and r.expires_at < self.now for r in rows):
            return Category.EXPIRED  # goes with its expired row
        if self.old_cutoff is not None and obj.modified is not None and obj.modified < self.old_cutoff:
            return Category.OLD
        return None

    def scan(self) -> Scan:
        """The merge scan over the filtered rows and objects (streamed by its entries())."""
        from statectl.ops.scan import Scan

        return Scan(self.store, self.options.flt)

    def wants_scan(self) -> bool:
        return self.base is not None and (self.options.orphans or self.options.older_than is not None)


PRUNED = "rows and objects pruned"


def _tally_expired(plan: PrunePlan, row: StateRow, target: ObjectURL | str | None) -> None:
    """Count a judged expired row (and its object) in the plan."""
    t, limit = plan.tallies, plan.options.first
    if isinstance(target, str):
        t[Category.OUTSIDE].add(f"{row.label}: {target}", rows=1, limit=limit)
    has_object = int(isinstance(target, ObjectURL))
    t[Category.EXPIRED].add(row.label, rows=1, objects=has_object, size=len(row.value.encode()), limit=limit)


def _tally_entry(plan: PrunePlan, entry: ScanEntry, category: Category | None) -> None:
    """Count an object of the scan in the plan, by its category."""
    if category is None or entry.obj is None:
        return
    t, limit, size = plan.tallies, plan.options.first, entry.obj.size or 0
    if category is Category.EXPIRED:
        t[category].bytes += size  # counted with its expired row
    elif category is Category.OLD:
        t[category].add(str(entry.obj.url), rows=len(entry.referrers), objects=1, size=size, limit=limit)
    else:
        t[category].add(str(entry.obj.url), objects=1, size=size, limit=limit)


def _incomplete(scan: Scan) -> str:
    return f"not every row could be read ({scan.incomplete_reason}): orphans are not deleted"


def _new_plan(store: StateStore, options: PruneOptions, at: datetime) -> PrunePlan:
    plan = PrunePlan(options, at)
    if store.base is None:
        plan.notes.append("no [common.io] state_store_objectstorage_path is configured: rows only, no objects")
    return plan


def plan_prune(store: StateStore, options: PruneOptions, progress: Progress | None = None) -> PrunePlan:
    """What prune would delete, from the rows and one listing; changes nothing."""
    rules = _Rules(store, options, utcnow())
    plan = _new_plan(store, options, rules.now)
    for batch in store.metastore.iter_batches(rules.expired_filter(), options.batch_size):
        for row in rules.judged(batch):
            _tally_expired(plan, row, rules.object_of(row))
        if progress:
            progress("planning", len(batch))
    if not rules.wants_scan():
        return plan
    scan = rules.scan()
    for entry in scan.entries():
        _tally_entry(plan, entry, rules.category(entry))
    if not scan.complete:
        plan.orphans_refused = _incomplete(scan)
    return plan


def _expired_cost(targets: dict[int, ObjectURL | str | None], row: StateRow) -> int:
    """What deleting an expired row costs against the budgets: the row, and its object if it has one."""
    return 1 + isinstance(targets[id(row)], ObjectURL)


class _Executor:
    def __init__(
        self,
        store: StateStore,
        plan: PrunePlan,
        progress: Progress | None,
        lock: BucketLock | None,
        within_plan: bool,
        single_pass: bool = False,
    ) -> None:
        self.rules = _Rules(store, plan.options, plan.at)
        self.store = store
        self.plan = plan
        self.options = plan.options
        self.report = PruneReport(plan, dry_run=False, orphans_refused=plan.orphans_refused)
        self.progress = progress
        self.lock = lock
        # No plan was made first (nobody to show it to): the plan is counted as execution finds things.
        self.single_pass = single_pass
        # Object deletes run in the background, a few batches at once, while the next batch's rows go.
        self.deletions = Deletions(store.buckets, ahead=DELETES_IN_FLIGHT)
        self.unanswered = 0
        self.held_elsewhere: set[str] | None = None  # see _held_elsewhere
        self.orphans_sent = 0  # orphans sent for deletion (a few kept at the last check included)
        # After a person confirmed the plan, no category deletes more than the plan counted.
        self.room: dict[Category, int] | None = {c: plan.planned(c) for c in plan.going} if within_plan else None

    # -- budgets --------------------------------------------------------------------
    def _fit(self, items: list[T], category: Category, cost: Callable[[T], int]) -> list[T]:
        """The items that fit in what the confirmed plan and --max-delete leave. Past the plan, items
        are left for the next run (counted); past --max-delete, the run stops."""
        kept: list[T] = []
        done = self.report.deletions + self.unanswered  # objects sent for deletion count as deleted
        max_room = None if self.options.max_delete is None else self.options.max_delete - done
        for item in items:
            price = cost(item)
            if self.room is not None and self.room[category] < price:
                self.report.beyond_plan[category.value] = self.report.beyond_plan.get(category.value, 0) + price
                continue
            if max_room is not None and max_room < price:
                self.report.stopped = f"stopped at max-delete ({self.options.max_delete}): re-run to go on"
                self.report.stopped_code = ExitCode.MAX_DELETE
                break
            if self.room is not None:
                self.room[category] -= price
            if max_room is not None:
                max_room -= price
            kept.append(item)
        return kept

    def _between_batches(self) -> None:
        if self.lock is not None:
            self.lock.check()

    def _tick(self, count: int) -> None:
        if self.progress:
            self.progress(PRUNED, count)

    # -- objects --------------------------------------------------------------------
    def _delete_objects(self, urls: list[ObjectURL], category: Category, sizes: dict[str, int] | None = None) -> None:
        """Delete objects no row references now (one query for the batch), strictly under the base."""
        if not urls:
            return
        base = self.rules.base
        texts = [codec.wrap_ref(str(u)) for u in urls]
        addresses = [None if base is None else layout.task_address(u, base) for u in urls]
        referenced = self.store.metastore.referenced_texts(texts, addresses)
        held_elsewhere = self._held_elsewhere()
        going = []
        for url, text in zip(urls, texts, strict=True):
            if text in referenced:
                self.report.kept.append((str(url), "a row references it again (a worker wrote it meanwhile)"))
            elif url.path in held_elsewhere:
                self.report.kept.append((str(url), "a row of another task instance or an asset references it"))
            elif self.rules.base is None or not layout.is_under_base(url, self.rules.base):
                self.report.kept.append((str(url), "outside the configured base path"))
            else:
                going.append(url)
        if going:
            self.unanswered += len(going)
            self.deletions.submit(going, partial(self._objects_deleted, going, category, sizes or {}))

    def _held_elsewhere(self) -> set[str]:
        """The task objects' paths that rows of another task instance, or asset rows, reference: neither
        workers nor statectl write such refs, a hand may have. Read once per run, on the first deletion,
        so that the per-batch check can be an index probe. A holder this run deletes later still keeps
        its object for this run: the next run finds it an orphan."""
        if self.held_elsewhere is None:
            base = self.rules.base
            self.held_elsewhere = set() if base is None else refs_held_elsewhere(self.store.metastore, base)
        return self.held_elsewhere

    def _objects_deleted(
        self, urls: list[ObjectURL], category: Category, sizes: dict[str, int], errors: list[Result[None]]
    ) -> None:
        self.unanswered -= len(urls)
        tally = self.report.deleted[category]
        for url, error in zip(urls, errors, strict=True):
            if error is not None:
                self.report.object_errors.append((str(url), error.message))
            else:
                tally.add(str(url), objects=1, size=sizes.get(str(url), 0), limit=self.options.first)

    def _delete_rows(self, rows: list[StateRow], category: Category, *, expired: bool) -> list[StateRow]:
        still_expired_at = self.rules.now if expired else None
        deleted = self.store.metastore.delete_many_if_unchanged(rows, still_expired_at=still_expired_at)
        gone = {id(r) for r in deleted}
        tally = self.report.deleted[category]
        for row in rows:
            if id(row) in gone:
                tally.add(row.label, rows=1, size=len(row.value.encode()), limit=self.options.first)
            else:
                self.report.changed_meanwhile.append(row.label)
        return deleted

    # -- expired rows -----------------------------------------------------------------
    def expired(self) -> None:
        for batch in self.store.metastore.iter_batches(self.rules.expired_filter(), self.options.batch_size):
            self._between_batches()
            targets = {id(row): self.rules.object_of(row) for row in batch}
            cost = partial(_expired_cost, targets)
            judged = self.rules.judged(batch)
            if self.single_pass:
                for row in judged:
                    _tally_expired(self.plan, row, targets[id(row)])
            if len(judged) < len(batch):  # written after the plan's moment: the next run judges them
                kept = {id(r) for r in judged}
                late = sum(cost(r) for r in batch if id(r) not in kept)
                self.report.beyond_plan[Category.EXPIRED.value] = self.report.beyond_plan.get("expired", 0) + late
            batch = self._fit(judged, Category.EXPIRED, cost)
            deleted = self._delete_rows(batch, Category.EXPIRED, expired=True)
            urls = [t for r in deleted if isinstance(t := targets[id(r)], ObjectURL)]
            self._delete_objects(urls, Category.EXPIRED)
            self._tick(len(batch) + len(urls))
            if self.report.stopped:
                return

    # -- orphans and old objects --------------------------------------------------------
    def scanned(self) -> None:
        if not self.rules.wants_scan():
            return
        scan = self.rules.scan()
        orphans: list[StoredObject] = []
        old: list[tuple[StoredObject, list[StateRow]]] = []
        for entry in scan.entries():
            category = self.rules.category(entry)
            if self.single_pass:
                _tally_entry(self.plan, entry, category)
                if not scan.complete and self.report.orphans_refused is None:
                    # No orphan goes from here on. Refs of other connections come first, so this is
                    # mostly known before any orphan went; those that did were re-checked, as below.
                    went = self.orphans_sent
                    reason = _incomplete(scan) + (f" after {went} were re-checked and deleted" if went else "")
                    self.report.orphans_refused = self.plan.orphans_refused = reason
                    orphans = []
            if entry.obj is None:
                continue
            if category is Category.ORPHANS and self.report.orphans_refused is None:
                orphans.append(entry.obj)
            elif category is Category.OLD:
                old.append((entry.obj, _referrer_rows(entry)))
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

    def _orphan_batch(self, objects: list[StoredObject]) -> None:
        if not objects:
            return
        self._between_batches()
        objects = self._fit(objects, Category.ORPHANS, lambda _obj: 1)
        # Still old enough (a worker may have rewritten it since the listing), by the same rule.
        infos = self.store.buckets.stat_many([o.url for o in objects])
        urls = []
        for obj, info in zip(objects, infos, strict=True):
            if isinstance(info, StatectlError):  # not answered (retries spent): kept, and the run says so
                self.report.object_errors.append((str(obj.url), info.message))
            elif self.rules.old_enough(modified_or_none(info)):
                urls.append(obj.url)
            else:
                self.report.kept.append((str(obj.url), "modified since the listing, or gone"))
        self._delete_objects(urls, Category.ORPHANS, {str(o.url): o.size or 0 for o in objects})
        self.orphans_sent += len(urls)
        self._tick(len(objects))

    def _old_batch(self, items: list[tuple[StoredObject, list[StateRow]]]) -> None:
        if not items:
            return
        self._between_batches()
        items = self._fit(items, Category.OLD, lambda item: 1 + len(item[1]))
        deleted = {
            id(r) for r in self._delete_rows([r for _, rows in items for r in rows], Category.OLD, expired=False)
        }
        # An object goes only once every row that referenced it is gone.
        urls = [obj.url for obj, rows in items if all(id(r) in deleted for r in rows)]
        self._delete_objects(urls, Category.OLD, {str(o.url): o.size or 0 for o, _ in items})
        self._tick(sum(1 + len(rows) for _, rows in items))


def refs_held_elsewhere(metastore: Metastore, base: ObjectURL) -> set[str]:
    """See _Executor._held_elsewhere: one read of the rows holding object refs."""
    held: set[str] = set()

    @lru_cache(maxsize=4096)
    def own_head(address: TaskAddress) -> str:
        return codec.WRAPPER_HEAD + layout.objects_folder(base, address)

    for address, text in metastore.iter_ref_holders(codec.WRAPPER_HEAD):
        if address is not None and text.startswith(head := own_head(address)):
            # The usual case, told from the text alone: the worker's wrapper around an object of its own.
            name = text[len(head) : -2]
            if text.endswith('"}') and name and "/" not in name and '"' not in name and "\\" not in name:
                continue
        location, ref = codec.locate(text)
        if location is not Location.OBJECT or ref is None:
            continue
        try:
            url = ObjectURL.parse(ref)
        except ValueError:
            continue
        # Objects at other paths (assets', or none of the provider's) get a full check per batch.
        if (at := layout.task_address(url, base)) is not None and at != address:
            held.add(url.path)
    return held


def execute_prune(
    store: StateStore,
    plan: PrunePlan,
    progress: Progress | None = None,
    lock: BucketLock | None = None,
    *,
    within_plan: bool = False,
    single_pass: bool = False,
) -> PruneReport:
    """Delete what the plan's rules select at the plan's moment, batch by batch, re-checked against the
    stores as they are now. ``within_plan``: no category deletes more than the plan counted.
    ``single_pass``: ``plan`` is empty and is counted while executing (one read of the rows, one listing)."""
    run = _Executor(store, plan, progress, lock, within_plan, single_pass)
    try:
        try:
            run.expired()
            # The expired rows' objects are gone before the listing starts, or it would take them for orphans.
            run.deletions.drain()
            if not run.report.stopped:
                run.scanned()
        finally:
            run.deletions.drain()  # every delete sent is answered and counted before the lock goes
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
    confirm: Confirm[PrunePlan] | None = None,
    progress: Progress | None = None,
    lock_timeout: timedelta | None = None,
) -> PruneReport:
    """Plan, then (unless dry run, or not confirmed) execute exactly that plan under the bucket lock."""
    from statectl.stores.lock import DEFAULT_LOCK_TIMEOUT, BucketLock, prune_lock_name

    options.check()
    store.check_reachable(store.base)
    if dry_run:
        return PruneReport(plan_prune(store, options), dry_run=True)
    lock = None
    if store.base is not None:
        name = prune_lock_name(options.flt.shard)
        lock = BucketLock(store.buckets, store.base, name, timeout=lock_timeout or DEFAULT_LOCK_TIMEOUT)
        lock.acquire()
    try:
        if confirm is None:
            # Nobody to show a plan to (--yes): plan and execute in one pass, by the same rules.
            report = execute_prune(store, _new_plan(store, options, utcnow()), progress, lock, single_pass=True)
        elif (plan := plan_prune(store, options)).deletions == 0:
            report = PruneReport(plan, dry_run=False, orphans_refused=plan.orphans_refused)
        elif not confirm(plan):
            report = PruneReport(plan, dry_run=False, stopped=NOT_CONFIRMED, declined=True)
        else:
            report = execute_prune(store, plan, progress, lock, within_plan=True)
    finally:
        if lock is not None:
            lock.release()
    report.lock_notes = lock.notes if lock is not None else ["no lock: no bucket is configured (rows only)"]
    return report
