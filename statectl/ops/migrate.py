"""Move state between the metastore and the bucket, and between buckets, without losing a value.

``run_migration`` plans first (actions, rows and bytes, no writes), asks, then executes batch by
batch. Per batch:

1. read each row's value (objects concurrently) and work out the row's target form;
2. write and verify the new objects (concurrently) before any row points to them;
3. update each row only if it still holds the value read (one transaction per batch);
4. delete the objects the committed rows no longer reference (only under a base path).

A kill at any point leaves every row pointing at a complete object or holding its value, and
re-running the same command finishes the job: rows already in their target form are skipped.
Objects written in step 2 whose rows were never updated are rewritten in place by the re-run;
old objects not yet deleted in step 4 are left to ``statectl prune``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from statectl.core import codec, layout
from statectl.core.codec import Location, StoredValue
from statectl.core.filters import RowFilter
from statectl.core.layout import ObjectURL
from statectl.core.readahead import read_ahead
from statectl.errors import DataError, ExitCode, StatectlError, UnreachableError, UsageError
from statectl.ops.objects import ObjectBusy, ObjectWrite, Placed, place_objects
from statectl.ops.report import NOT_CONFIRMED, Confirm, Progress
from statectl.stores.metastore import Metastore, StateRow
from statectl.stores.store import StateStore

DEFAULT_BATCH = 500
PLANNING = "planning"


class Direction(StrEnum):
    TO_BUCKET = "to-bucket"
    TO_METASTORE = "to-metastore"
    RELOCATE = "relocate"


class Action(StrEnum):
    UPLOAD = "upload"  # the value goes to an object, the row gets the object ref
    INLINE = "inline"  # the row gets the inline ref wrapper
    PLAIN = "plain"  # the row gets the plain value
    MOVE = "move"  # the object moves to another path or codec, the row gets the new ref
    DONE = "done"  # already in its target form
    SKIP = "skip"  # left as it is: see the reason


@dataclass(frozen=True)
class Target:
    """What the rows should look like afterwards."""

    direction: Direction
    base: ObjectURL | None  # where objects go (to-bucket, relocate)
    compression: str | None
    threshold: int
    source_base: ObjectURL | None  # where existing objects may be read and deleted
    keep_objects: bool = False
    max_value_bytes: int = 0


@dataclass
class Item:
    """One row's part in the migration."""

    row: StateRow
    stored: StoredValue
    action: Action
    reason: str | None = None
    source_url: ObjectURL | None = None  # the object the row references now
    target_url: ObjectURL | None = None  # the object the row will reference
    serialized: str | None = None  # the value's JSON text, once known
    new_text: str | None = None  # the row's new column text
    stored_bytes: bytes | None = None  # relocate: the source object's bytes, when they can be copied as they are
    bytes: int = 0  # the value's size as it is stored now (row text or object size)

    @property
    def label(self) -> str:
        return self.row.label


@dataclass(frozen=True)
class MigrationOptions:
    direction: Direction
    flt: RowFilter = field(default_factory=RowFilter)
    to: str | None = None  # relocate: the new base path
    compression: str | None = None  # relocate: the new objects' codec ("" for none; None: unchanged)
    keep_objects: bool = False  # to-metastore: leave the objects in place
    batch_size: int = DEFAULT_BATCH

    def check(self) -> None:
        if self.batch_size < 1:
            raise UsageError("--batch-size must be 1 or more")


@dataclass
class ActionTally:
    rows: int = 0
    bytes: int = 0

    def add(self, size: int) -> None:
        self.rows += 1
        self.bytes += size


@dataclass
class MigrationReport:
    """The plan (dry run) or the outcome of a migration, per action."""

    direction: Direction
    dry_run: bool
    actions: dict[str, ActionTally] = field(default_factory=lambda: {a.value: ActionTally() for a in Action})
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (row label, reason)
    changed_meanwhile: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    objects_written: int = 0
    objects_deleted: int = 0
    objects_to_write: int = 0  # planned (dry run); at most: a value under a raised threshold goes inline
    objects_to_delete: int = 0  # planned (dry run)
    objects_left: list[tuple[str, str]] = field(default_factory=list)  # (url, why it stays)
    over_limit: list[str] = field(default_factory=list)  # values over max_value_storage_bytes
    interrupted: str | None = None
    declined: bool = False  # the plan was shown and not confirmed: nothing changed
    target: Target | None = None
    shard: str | None = None  # --shard I/N

    @property
    def selected(self) -> int:
        """The rows the filters selected (each has exactly one action)."""
        return sum(t.rows for t in self.actions.values())

    @property
    def ok(self) -> bool:
        """Every selected row is in its target form (a skipped row is not: it needs a look)."""
        if self.declined:
            return True
        return not (self.failed or self.changed_meanwhile or self.interrupted or self.skipped)

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.OK if self.ok else ExitCode.PARTIAL

    def as_dict(self) -> dict[str, Any]:
        return {
            "direction": self.direction.value,
            "dry_run": self.dry_run,
            "shard": self.shard,
            "actions": {k: {"rows": t.rows, "bytes": t.bytes} for k, t in self.actions.items()},
            "objects_written": self.objects_written,
            "objects_deleted": self.objects_deleted,
            **(
                {"objects_to_write": self.objects_to_write, "objects_to_delete": self.objects_to_delete}
                if self.dry_run
                else {}
            ),
            "skipped": [{"row": r, "reason": why} for r, why in self.skipped],
            "changed_meanwhile": self.changed_meanwhile,
            "failed": [{"row": r, "error": e} for r, e in self.failed],
            "objects_left": [{"object": u, "reason": why} for u, why in self.objects_left],
            "over_max_value_storage_bytes": self.over_limit,
            "interrupted": self.interrupted,
            "ok": self.ok,
            **({"stopped": NOT_CONFIRMED} if self.declined else {}),
        }


class Migration:
    """One migration over the rows a filter selects."""

    def __init__(self, store: StateStore, target: Target, flt: RowFilter, batch_size: int = DEFAULT_BATCH) -> None:
        if batch_size < 1:
            raise UsageError("--batch-size must be 1 or more")
        self.store = store
        self.target = target
        self.flt = flt
        self.batch_size = batch_size

    def count(self) -> int:
        return self.store.metastore.count_rows(self.flt)

    # -- classification -------------------------------------------------------------
    def _target_url(self, row: StateRow) -> ObjectURL:
        assert self.target.base is not None
        return layout.object_url(self.target.base, row.scope, row.key, self.target.compression)

    def _source_object(self, item: Item) -> ObjectURL | None:
        """The referenced object if statectl may read it; otherwise mark the item skipped."""
        assert item.stored.ref is not None
        try:
            # Strict: a ref outside the base path is reported and left as it is.
            return layout.require_under_base(item.stored.ref, self.target.source_base)
        except DataError as e:
            item.action, item.reason = Action.SKIP, e.message
            return None

    def classify(self, row: StateRow) -> Item:
        """The row's action from the row alone (no object reads): what a plan shows."""
        stored = codec.classify(row.value)
        item = Item(row, stored, Action.DONE, bytes=stored.stored_bytes)
        direction = self.target.direction
        if stored.location is Location.OBJECT:
            if direction is Direction.RELOCATE and stored.ref == str(self._target_url(row)):
                # Moved by an earlier run: under the new base, which need not be under the configured one.
                item.source_url = item.target_url = self._target_url(row)
                return item
            item.source_url = self._source_object(item)
            if item.source_url is None:
                return item
        elif stored.location is Location.INLINE:
            item.serialized = stored.ref
        else:
            item.serialized = stored.text

        if direction is Direction.TO_METASTORE:
            item.action = Action.DONE if stored.location is Location.PLAIN else Action.PLAIN
        elif direction is Direction.RELOCATE:
            if stored.location is Location.OBJECT:
                item.target_url = self._target_url(row)
                item.action = Action.DONE if str(item.target_url) == stored.ref else Action.MOVE
        else:  # to-bucket
            item.target_url = self._target_url(row)
            if item.serialized is not None:
                size = len(item.serialized.encode())
                if size < self.target.threshold:
                    item.target_url = None
                    inline_done = stored.location is Location.INLINE and _is_canonical(item.serialized)
                    item.action = Action.DONE if inline_done else Action.INLINE
                else:
                    item.action = Action.UPLOAD
            elif str(item.target_url) == stored.ref:
                # At its target path: right unless a raised threshold now wants it inline,
                # which only the value's size can tell (known after reading, see _prepare).
                item.action = Action.DONE
            else:
                item.action = Action.MOVE
        return item

    # -- plan -----------------------------------------------------------------------
    def plan(self, progress: Progress | None = None) -> MigrationReport:
        """What would happen, from the rows (and object sizes) alone; changes nothing."""
        report = MigrationReport(self.target.direction, dry_run=True, shard=self.flt.shard_label)
        for batch in self.store.metastore.iter_batches(self.flt, self.batch_size):
            items = [self.classify(row) for row in batch]
            self._measure_objects(items)
            for item in items:
                self._count(report, item)
                if item.action in (Action.UPLOAD, Action.MOVE):
                    report.objects_to_write += 1
                if item.action in (Action.PLAIN, Action.INLINE, Action.MOVE) and item.source_url is not None:
                    report.objects_to_delete += 0 if self.target.keep_objects else 1
            if progress:
                progress(PLANNING, len(items))
        return report

    def _measure_objects(self, items: list[Item]) -> None:
        """Stored sizes of referenced objects, and missing objects found early."""
        with_objects = [i for i in items if i.source_url is not None and i.action is not Action.SKIP]
        infos = self.store.buckets.stat_many([i.source_url for i in with_objects if i.source_url is not None])
        for item, info in zip(with_objects, infos, strict=True):
            if isinstance(info, StatectlError):
                raise info  # the store did not answer: stop before anything changes
            if not info.exists:
                item.action, item.reason = Action.SKIP, f"object {item.source_url} is missing"
            else:
                item.bytes = info.size or 0

    @staticmethod
    def _count(report: MigrationReport, item: Item) -> None:
        report.actions[item.action.value].add(item.bytes)
        if item.action is Action.SKIP:
            report.skipped.append((item.label, item.reason or ""))

    # -- execute --------------------------------------------------------------------
    def execute(self, progress: Progress | None = None) -> MigrationReport:
        report = MigrationReport(self.target.direction, dry_run=False, shard=self.flt.shard_label)
        try:
            for items in self._prepared_batches():
                self._run_batch(items, report)
                if progress:
                    progress(self.target.direction.value, len(items))
        except StatectlError as e:
            # A store went away mid-run: what is committed is consistent; say so and stop.
            report.interrupted = e.message
        return report

    def _prepared_batches(self) -> Iterator[list[Item]]:
        """The batches, each read and prepared (source objects fetched, new texts computed). On
        PostgreSQL the next batch is prepared on a connection and thread of its own while this one is
        written and committed: it reads only, and every update is conditional on the value it read."""
        metastore = self.store.metastore
        if metastore.dialect == "sqlite":  # one writer at a time: a second connection would wait on it
            yield from (self._prepared(batch) for batch in metastore.iter_batches(self.flt, self.batch_size))
            return
        reader = Metastore(metastore.url)
        try:
            batches = reader.iter_batches(self.flt, self.batch_size)
            yield from read_ahead((self._prepared(batch) for batch in batches), depth=1)
        finally:
            reader.close()

    def _prepared(self, batch: list[StateRow]) -> list[Item]:
        items = [self.classify(row) for row in batch]
        # Rows already pointing at their target object: a missing object is reported, as in the plan.
        self._measure_objects(
            [i for i in items if i.action is Action.DONE and i.source_url is not None and not self._done_needs_check(i)]
        )
        self._fetch_sources(items)
        for item in items:  # CPU only now (JSON): threads would only contend for the GIL
            self._prepare(item)
        return items

    def _run_batch(self, items: list[Item], report: MigrationReport) -> None:
        self._write_all([i for i in items if i.action in (Action.UPLOAD, Action.MOVE)], report)
        committed = self._update_rows(items, report)
        self._delete_old_objects(committed, report)
        committed_ids = {id(i) for i in committed}
        for item in items:
            if item.action in (Action.SKIP, Action.DONE) or id(item) in committed_ids:
                self._count(report, item)

    def _needs_value(self, item: Item) -> bool:
        return item.action is not Action.SKIP and (item.action is not Action.DONE or self._done_needs_check(item))

    def _fetch_sources(self, items: list[Item]) -> None:
        """Read the referenced objects of a batch at once (one GET each, concurrently)."""
        wanted = [i for i in items if self._needs_value(i) and i.serialized is None and i.source_url is not None]
        stored = self.store.buckets.read_many_stored([i.source_url for i in wanted if i.source_url is not None])
        for item, read in zip(wanted, stored, strict=True):
            if isinstance(read, StatectlError):  # missing (ObjectMissing) or undecodable
                item.action, item.reason = Action.SKIP, read.message
                continue
            item.serialized, data = read
            item.bytes = len(item.serialized.encode())
            if self._copies_bytes(item):
                item.stored_bytes = data

    def _copies_bytes(self, item: Item) -> bool:
        """Relocate between object stores with the codec unchanged: the stored bytes are what the provider
        would write at the new path (no file name in the header, unlike a local gzip file), so they go as
        they are, if the value's text is already the canonical one (checked in _prepare), instead of being
        decompressed and compressed again at the provider's level 9."""
        source, target = item.source_url, item.target_url
        return (
            self.target.direction is Direction.RELOCATE
            and source is not None
            and target is not None
            and not source.is_local
            and not target.is_local
            and codec.infer_compression(source.path) == (self.target.compression or None)
        )

    def _prepare(self, item: Item) -> None:
        """Read the value (object rows), check it decodes, and compute the new row text."""
        if not self._needs_value(item):
            return
        try:
            if item.serialized is None:
                assert item.source_url is not None
                item.serialized = self.store.buckets.read_text(item.source_url)
                item.bytes = len(item.serialized.encode())
            value = json.loads(item.serialized)
        except DataError as e:  # missing, or does not decode
            item.action, item.reason = Action.SKIP, e.message
            return
        except ValueError as e:
            item.action, item.reason = Action.SKIP, f"the value does not decode as JSON: {e}"
            return
        serialized = codec.serialize(value)
        if serialized != item.serialized:
            item.stored_bytes = None  # not the canonical text: written afresh, as a worker would
        direction = self.target.direction
        if direction is Direction.TO_METASTORE:
            item.new_text = serialized
        elif direction is Direction.TO_BUCKET and len(serialized.encode()) < self.target.threshold:
            item.action, item.target_url = Action.INLINE, None
            item.new_text = codec.wrap_ref(serialized)
        else:
            if item.action is Action.DONE:
                return
            if item.target_url is None:
                # The stored text looked small enough to inline, but the value's json.dumps is not.
                item.action, item.target_url = Action.UPLOAD, self._target_url(item.row)
            item.new_text = codec.wrap_ref(str(item.target_url))
        item.serialized = serialized
        if item.new_text == item.row.value:
            item.action = Action.DONE

    def _done_needs_check(self, item: Item) -> bool:
        """An object already at its target path is right unless the threshold now inlines it."""
        return (
            self.target.direction is Direction.TO_BUCKET and self.target.threshold > 0 and item.source_url is not None
        )

    def _write_all(self, items: list[Item], report: MigrationReport) -> None:
        """Write the target objects, except those already holding the value or maybe a worker's
        (see :func:`statectl.ops.objects.place_objects`); each write verified before its row may point to it."""
        items = [i for i in items if i.target_url is not None and i.serialized is not None]
        writes = [
            ObjectWrite(i.target_url, i.serialized, payload=i.stored_bytes)
            for i in items
            if i.target_url and i.serialized is not None
        ]
        results = place_objects(self.store, self.target.base, self.target.compression, writes)
        for _, result in zip(items, results, strict=True):
            if isinstance(result, UnreachableError):
                raise result  # the store went away: stop the run before this batch changes any row
        for item, result in zip(items, results, strict=True):
            if result is Placed.WRITTEN:
                report.objects_written += 1
            elif isinstance(result, ObjectBusy):
                item.action, item.reason = Action.SKIP, result.message
            elif isinstance(result, StatectlError):
                item.action, item.reason = Action.SKIP, result.message
                report.failed.append((item.label, result.message))

    def _update_rows(self, items: list[Item], report: MigrationReport) -> list[Item]:
        """Conditional updates in one transaction; return the items committed."""
        metastore = self.store.metastore
        committed: list[Item] = []
        changing = [i for i in items if i.action not in (Action.DONE, Action.SKIP) and i.new_text is not None]
        updated = metastore.update_many_if_unchanged([(i.row, i.new_text) for i in changing if i.new_text is not None])
        for item, ok in zip(changing, updated, strict=True):
            if ok:
                committed.append(item)
            else:
                report.changed_meanwhile.append(item.label)
        metastore.commit()
        limit = self.target.max_value_bytes
        for item in committed:
            if item.new_text is not None and limit > 0 and len(item.new_text) > limit:
                report.over_limit.append(f"{item.label} ({len(item.new_text)} bytes)")
        return committed

    def _delete_old_objects(self, committed: list[Item], report: MigrationReport) -> None:
        """Objects that committed rows no longer reference (only under the source base path)."""
        old = [i.source_url for i in committed if i.source_url is not None and i.target_url != i.source_url]
        if self.target.keep_objects:
            report.objects_left.extend((str(u), "--keep-objects") for u in old)
            return
        for url, error in zip(old, self.store.buckets.delete_many(old), strict=True):
            if error is not None:
                report.objects_left.append((str(url), error.message))
            else:
                report.objects_deleted += 1


def build_target(
    store: StateStore,
    direction: Direction,
    *,
    to: str | None = None,
    compression: str | None = None,
    keep_objects: bool = False,
) -> Target:
    """The target of a migration from the configuration (and, for relocate, --to)."""
    config = store.config
    max_bytes = config.max_value_bytes
    if direction is Direction.TO_METASTORE:
        if compression is not None or to is not None:
            raise UsageError("to-metastore takes neither --to nor --compression")
        return Target(direction, None, None, 0, store.base, keep_objects=keep_objects, max_value_bytes=max_bytes)
    source = store.require_base()
    if direction is Direction.TO_BUCKET:
        codec_name = config.compression
        layout.compression_suffix(codec_name)  # refuse a codec the provider cannot use, before any change
        return Target(direction, source, codec_name, config.threshold, source, max_value_bytes=max_bytes)
    if not to:
        raise UsageError("relocate needs --to URL, the new base path")
    new_base = layout.parse_base_path(to)
    codec_name = compression if compression is not None else config.compression
    codec_name = codec_name or None
    layout.compression_suffix(codec_name)
    if new_base == source and codec_name == config.compression:
        raise UsageError(f"--to {to} is the current base path and the compression is unchanged: nothing to move")
    if new_base != source and (_contains(new_base, source) or _contains(source, new_base)):
        raise UsageError(
            f"--to {to} and the current base path {source} contain one another; object paths could collide"
        )
    return Target(direction, new_base, codec_name, config.threshold, source, max_value_bytes=max_bytes)


def _is_canonical(serialized: str) -> bool:
    """The text is what json.dumps makes of its own value (so the inline ref is a worker's)."""
    try:
        return codec.serialize(json.loads(serialized)) == serialized
    except ValueError:
        return False


def _contains(outer: ObjectURL, inner: ObjectURL) -> bool:
    return (
        outer.protocol == inner.protocol
        and outer.conn_id == inner.conn_id
        and inner.parts[: len(outer.parts)] == outer.parts
    )


def run_migration(
    store: StateStore,
    options: MigrationOptions,
    *,
    dry_run: bool = False,
    confirm: Confirm[MigrationReport] | None = None,
    progress: Progress | None = None,
) -> MigrationReport:
    """Plan the migration (dry run, or to ask ``confirm``), then execute it batch by batch.

    Nothing changes before the stores answered and the target is valid. Without ``confirm`` and
    not a dry run, the plan is not computed (a second pass over every row and object)."""
    options.check()
    target = build_target(
        store, options.direction, to=options.to, compression=options.compression, keep_objects=options.keep_objects
    )
    migration = Migration(store, target, options.flt, batch_size=options.batch_size)
    store.check_reachable(target.base, target.source_base)
    total = migration.count()
    if progress and total:
        progress(PLANNING if dry_run or confirm else options.direction.value, 0, total=total)
    if dry_run or confirm is not None:
        plan = migration.plan(progress)
        plan.target = target
        if dry_run:
            return plan
        if total and confirm is not None and not confirm(plan):
            plan.dry_run, plan.declined = False, True
            return plan
        if progress and total:
            progress(options.direction.value, 0, total=total)
    report = migration.execute(progress)
    report.target = target
    return report


__all__ = [
    "Action",
    "Direction",
    "Migration",
    "MigrationOptions",
    "MigrationReport",
    "Target",
    "build_target",
    "run_migration",
]
