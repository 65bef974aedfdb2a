"""Writing many values into a deployment as its workers would: the engine under import, cp and mv.

Each value is encoded with the *target's* configuration (threshold, compression, base path), exactly as
``put`` and a worker encode it. Per batch:

1. resolve the target scopes (task rows need their dag run, asset rows their active asset: rows without
   one are reported, never invented) and read the rows stored there now;
2. decide per value: new, overwrite, the same value already there (a re-run), kept (--on-conflict skip);
3. write and verify the objects (concurrently) before any row points to them;
4. insert the rows where none is, replace those that still hold the value read (one transaction);
5. delete objects that replaced rows no longer reference; for mv, remove each source row that still
   holds what was copied, then its object (only under the base path).

A kill at any point leaves every value readable, and running the same command again finishes the job:
values already at the target count as the same and are not written again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from statectl.core import codec, layout
from statectl.core.codec import Encoded, Location
from statectl.core.filters import utcnow
from statectl.core.layout import ObjectURL
from statectl.core.scopes import AssetScope, Scope, TaskScope
from statectl.core.snapshot import AssetWriter
from statectl.errors import ConflictError, ExitCode, NotFoundError, StatectlError, UnreachableError
from statectl.ops.objects import ObjectWrite, Placed, place_objects
from statectl.ops.read import read_values
from statectl.ops.report import NOT_CONFIRMED, Confirm, Progress
from statectl.ops.write import Expiry
from statectl.stores.metastore import NewValue, StateRow, address
from statectl.stores.retry import TransientFailure
from statectl.stores.store import StateStore

LISTED = 20  # labels kept per outcome, for plans and reports
PROBLEMS_LISTED = 1000  # problems kept with their reason (the count is always exact)


class OnConflict(StrEnum):
    SKIP = "skip"  # keep the value at the target
    OVERWRITE = "overwrite"  # replace it, only if it still holds what was read
    FAIL = "fail"  # stop before any change if a key holds another value


@dataclass(frozen=True)
class Incoming:
    """A value to write at a target scope and key."""

    scope: Scope  # an asset by name or uri: resolved against the target
    key: str
    value: Any = None
    expires_at: datetime | None = None  # the value's own expiry (task rows)
    writer: AssetWriter | None = None  # asset rows: who last wrote the value
    source: StateRow | None = None  # mv: the row the value comes from, removed once copied
    error: str | None = None  # the value could not be read at the source

    @property
    def label(self) -> str:
        return f"{self.scope} key {self.key!r}"


class Outcome(StrEnum):
    NEW = "new"  # no row at the target: written
    OVERWRITE = "overwrite"  # the target held another value: replaced
    SAME = "same"  # the target already holds this value (e.g. a re-run): nothing written
    KEPT = "kept"  # the target holds another value and --on-conflict skip keeps it
    CONFLICT = "conflict"  # the same, under --on-conflict fail (plans only: the run stops)
    NO_TARGET = "no-target"  # no dag run or active asset at the target
    UNREADABLE = "unreadable"  # the value could not be read at the source
    FAILED = "failed"  # its object could not be written, or may be a worker's write in flight
    CHANGED = "changed"  # a worker wrote the target row meanwhile: left as the worker wrote it


PROBLEMS = frozenset({Outcome.NO_TARGET, Outcome.UNREADABLE, Outcome.FAILED, Outcome.CHANGED})


@dataclass
class Tally:
    count: int = 0
    first: list[str] = field(default_factory=list)

    def add(self, label: str) -> None:
        self.count += 1
        if len(self.first) < LISTED:
            self.first.append(label)


@dataclass
class IngestReport:
    """The plan (dry run, or what a confirmation is asked for) or the outcome of an import, cp or mv."""

    verb: str  # import, cp, mv
    on_conflict: OnConflict
    dry_run: bool
    outcomes: dict[str, Tally] = field(default_factory=lambda: {o.value: Tally() for o in Outcome})
    problems: list[tuple[str, str, str]] = field(default_factory=list)  # (outcome, label, reason)
    objects_written: int = 0
    objects_deleted: int = 0  # objects no row references any more (replaced values, mv sources)
    object_errors: list[tuple[str, str]] = field(default_factory=list)  # (url, error): left for prune
    sources_removed: int = 0  # mv
    sources_kept: list[tuple[str, str]] = field(default_factory=list)  # mv: (label, why the source stays)
    over_limit: list[str] = field(default_factory=list)  # values over max_value_storage_bytes (written)
    interrupted: str | None = None
    declined: bool = False
    header: dict[str, Any] | None = None  # import: the snapshot's header

    def count(self, outcome: Outcome) -> int:
        return self.outcomes[outcome.value].count

    @property
    def total(self) -> int:
        return sum(t.count for t in self.outcomes.values())

    def record(self, outcome: Outcome, label: str, reason: str | None = None) -> None:
        self.outcomes[outcome.value].add(label)
        if reason is not None and len(self.problems) < PROBLEMS_LISTED:
            self.problems.append((outcome.value, label, reason))

    @property
    def exit_code(self) -> ExitCode:
        if self.declined or self.dry_run:
            return ExitCode.OK
        troubled = any(self.count(o) for o in PROBLEMS) or self.sources_kept or self.interrupted
        return ExitCode.PARTIAL if troubled else ExitCode.OK

    def as_dict(self) -> dict[str, Any]:
        return {
            "command": self.verb,
            "dry_run": self.dry_run,
            "on_conflict": self.on_conflict.value,
            "total": self.total,
            "outcomes": {name: {"count": t.count, "first": t.first} for name, t in self.outcomes.items()},
            "problems": [{"outcome": o, "key": label, "reason": why} for o, label, why in self.problems],
            "objects_written": self.objects_written,
            "objects_deleted": self.objects_deleted,
            "object_errors": [{"object": u, "error": e} for u, e in self.object_errors],
            **(
                {
                    "sources_removed": self.sources_removed,
                    "sources_kept": [{"key": label, "reason": why} for label, why in self.sources_kept],
                }
                if self.verb == "mv"
                else {}
            ),
            "over_max_value_storage_bytes": self.over_limit,
            "interrupted": self.interrupted,
            **({"snapshot": self.header} if self.header is not None else {}),
            **({"stopped": NOT_CONFIRMED} if self.declined else {}),
        }


@dataclass
class _Decision:
    item: Incoming
    outcome: Outcome
    reason: str | None = None
    new: NewValue | None = None
    encoded: Encoded | None = None
    url: ObjectURL | None = None  # the object the new row references
    existing: StateRow | None = None


class Ingest:
    """Writes batches of incoming values into one deployment under one conflict rule."""

    def __init__(
        self,
        store: StateStore,
        verb: str,
        on_conflict: OnConflict = OnConflict.SKIP,
        expiry: Expiry = Expiry(),
        *,
        remove_sources: bool = False,
    ) -> None:
        self.store = store
        self.verb = verb
        self.on_conflict = on_conflict
        self.expiry = expiry
        self.remove_sources = remove_sources
        config = store.config
        self.offload = config.offloads
        self.threshold = config.threshold if self.offload else 0
        self.compression = config.compression if self.offload else None
        self.base = store.require_base() if self.offload else None
        if self.offload:
            layout.compression_suffix(self.compression)  # a codec the provider cannot use: refused before any change
        self.max_value_bytes = config.max_value_bytes
        self._runs: dict[tuple[str, str], int | None] = {}
        self._assets: dict[tuple[str | None, str | None], AssetScope | None] = {}
        self.now = utcnow()

    def report(self, dry_run: bool) -> IngestReport:
        return IngestReport(self.verb, self.on_conflict, dry_run)

    # -- deciding ---------------------------------------------------------------------
    def _resolve(self, items: list[Incoming]) -> list[Scope | None]:
        """Each item's target scope with its asset resolved; None where the target has no dag run or asset."""
        metastore = self.store.metastore
        runs = [(s.dag_id, s.run_id) for s in (i.scope for i in items) if isinstance(s, TaskScope)]
        unknown = [r for r in dict.fromkeys(runs) if r not in self._runs]
        if unknown:
            found = metastore.dag_run_ids(unknown)
            self._runs.update((r, found.get(r)) for r in unknown)
        resolved: list[Scope | None] = []
        for item in items:
            scope = item.scope
            if isinstance(scope, TaskScope):
                resolved.append(scope if self._runs[(scope.dag_id, scope.run_id)] is not None else None)
                continue
            name_uri = (scope.name, scope.uri)
            if name_uri not in self._assets:
                try:
                    self._assets[name_uri] = metastore.resolve_asset(scope)
                except NotFoundError:
                    self._assets[name_uri] = None
            resolved.append(self._assets[name_uri])
        return resolved

    def decide(self, items: list[Incoming]) -> list[_Decision]:
        """What happens to each item, from the target as it is now (reads rows and, to compare
        values, the objects of rows already there)."""
        decisions: list[_Decision] = []
        wanted: list[_Decision] = []
        seen: set[tuple[Any, ...]] = set()
        for item, scope in zip(items, self._resolve(items), strict=True):
            if item.error is not None:
                decisions.append(_Decision(item, Outcome.UNREADABLE, item.error))
                continue
            if scope is None:
                what = "dag run" if isinstance(item.scope, TaskScope) else "active asset"
                decisions.append(_Decision(item, Outcome.NO_TARGET, f"no {what} for {item.scope} at the target"))
                continue
            where = address(scope, item.key)
            if where in seen:
                decisions.append(_Decision(item, Outcome.FAILED, "the key appears twice in the input"))
                continue
            seen.add(where)
            decision = self._encode(item, scope)
            decisions.append(decision)
            wanted.append(decision)
        existing = self.store.metastore.existing_rows([d.new for d in wanted if d.new is not None])
        for decision in wanted:
            assert decision.new is not None
            decision.existing = existing.get(address(decision.new.scope, decision.new.key))
        present = [d for d in wanted if d.existing is not None]
        current = read_values(self.store, [d.existing for d in present if d.existing is not None])
        for decision, value in zip(present, current, strict=True):
            assert decision.encoded is not None
            if isinstance(value, TransientFailure):  # the target's value is unknown: no conflict, no overwrite
                decision.outcome, decision.reason = Outcome.FAILED, value.message
                continue
            same = not isinstance(value, StatectlError) and codec.serialize(value) == _serialized(decision.encoded)
            if same:
                decision.outcome = Outcome.SAME
            elif self.on_conflict is OnConflict.OVERWRITE:
                decision.outcome = Outcome.OVERWRITE
            else:
                decision.outcome = Outcome.CONFLICT if self.on_conflict is OnConflict.FAIL else Outcome.KEPT
        return decisions

    def _encode(self, item: Incoming, scope: Scope) -> _Decision:
        url = layout.object_url(self.base, scope, item.key, self.compression) if self.base is not None else None
        encoded = codec.encode(item.value, offload=self.offload, threshold=self.threshold, url=url)
        expires_at = self.expiry.or_else(item.expires_at, self.now) if isinstance(scope, TaskScope) else None
        dag_run_id = self._runs[(scope.dag_id, scope.run_id)] if isinstance(scope, TaskScope) else None
        writer = item.writer if isinstance(scope, AssetScope) else None
        new = NewValue(scope, item.key, encoded.column_text, expires_at, dag_run_id, writer)
        at = url if encoded.location is Location.OBJECT else None
        return _Decision(item, Outcome.NEW, new=new, encoded=encoded, url=at)

    # -- plan -------------------------------------------------------------------------
    def plan(self, batches: Iterable[list[Incoming]], progress: Progress | None = None) -> IngestReport:
        """What would happen, changing nothing; --on-conflict fail stops here if a key holds another value."""
        report = self.report(dry_run=True)
        for items in batches:
            for decision in self.decide(items):
                outcome = decision.outcome
                if self.remove_sources and outcome is Outcome.KEPT:
                    report.sources_kept.append((decision.item.label, "the target holds another value"))
                report.record(outcome, decision.item.label, decision.reason)
            if progress is not None:
                progress("planning", len(items))
        conflicts = report.outcomes[Outcome.CONFLICT.value]
        if conflicts.count:
            raise ConflictError(
                f"{conflicts.count} key(s) already hold another value at the target, e.g. {conflicts.first[0]}; "
                "nothing was written (--on-conflict skip keeps them, overwrite replaces them)"
            )
        return report

    # -- execute ----------------------------------------------------------------------
    def execute(self, batches: Iterable[list[Incoming]], progress: Progress | None = None) -> IngestReport:
        report = self.report(dry_run=False)
        try:
            for items in batches:
                self._write_batch(items, report)
                if progress is not None:
                    progress(self.verb, len(items))
        except StatectlError as e:
            # A store went away mid-run: what is committed is consistent; say so and stop.
            report.interrupted = e.message
        return report

    def _write_batch(self, items: list[Incoming], report: IngestReport) -> None:
        decisions = self.decide(items)
        for decision in decisions:
            if decision.outcome is Outcome.CONFLICT:  # appeared since the plan: keep it, never fail halfway
                decision.outcome, decision.reason = Outcome.CHANGED, "a value appeared at the target since the plan"
        self._place(decisions, report)
        self._write_rows(decisions)
        for decision in decisions:
            outcome = decision.outcome
            if self.remove_sources and outcome is Outcome.KEPT:
                report.sources_kept.append((decision.item.label, "the target holds another value"))
            report.record(outcome, decision.item.label, decision.reason)
            if outcome in (Outcome.NEW, Outcome.OVERWRITE):
                self._check_size(decision, report)
        self._delete_replaced(decisions, report)
        if self.remove_sources:
            self._remove_sources(decisions, report)

    def _place(self, decisions: list[_Decision], report: IngestReport) -> None:
        """Write the new objects before any row points to them."""
        writing = [
            d
            for d in decisions
            if d.outcome in (Outcome.NEW, Outcome.OVERWRITE) and d.url is not None and d.encoded is not None
        ]
        writes = []
        for d in writing:
            assert d.url is not None and d.encoded is not None and d.encoded.object_text is not None
            owned = d.existing is not None and codec.classify(d.existing.value).ref == str(d.url)
            writes.append(ObjectWrite(d.url, d.encoded.object_text, owned=owned))
        results = place_objects(self.store, self.base, self.compression, writes)
        for result in results:
            if isinstance(result, UnreachableError):
                raise result  # stop before this batch changes any row
        for decision, result in zip(writing, results, strict=True):
            if result is Placed.WRITTEN:
                report.objects_written += 1
            elif isinstance(result, StatectlError):
                decision.outcome, decision.reason = Outcome.FAILED, result.message

    def _write_rows(self, decisions: list[_Decision]) -> None:
        """Insert where no row is, replace where the row still holds the value read; one transaction."""
        metastore = self.store.metastore
        news = [d for d in decisions if d.outcome is Outcome.NEW]
        inserted = metastore.insert_many_if_absent([d.new for d in news if d.new is not None])
        for decision, ok in zip(news, inserted, strict=True):
            if not ok:
                decision.outcome, decision.reason = Outcome.CHANGED, "a row appeared at the target meanwhile"
        overwrites = [d for d in decisions if d.outcome is Outcome.OVERWRITE]
        changes = [(d.existing, d.new) for d in overwrites if d.existing is not None and d.new is not None]
        for decision, ok in zip(overwrites, metastore.replace_many_if_unchanged(changes), strict=True):
            if not ok:
                decision.outcome, decision.reason = Outcome.CHANGED, "the target row was rewritten meanwhile"
        metastore.commit()

    def _check_size(self, decision: _Decision, report: IngestReport) -> None:
        limit = self.max_value_bytes
        assert decision.encoded is not None
        size = codec.worker_size(decision.encoded.column_text)
        if limit > 0 and size > limit:
            report.over_limit.append(f"{decision.item.label} ({size} bytes)")

    def _delete_replaced(self, decisions: list[_Decision], report: IngestReport) -> None:
        """Objects of replaced rows that the new rows no longer reference (only under the base path)."""
        stale: list[ObjectURL] = []
        for d in decisions:
            if d.outcome is not Outcome.OVERWRITE or d.existing is None:
                continue
            ref = codec.classify(d.existing.value).object_url
            if ref is not None and ref != (str(d.url) if d.url else None):
                target = self.store.deletable(ref)
                if isinstance(target, ObjectURL):
                    stale.append(target)
        self._delete_objects(stale, report)

    def _remove_sources(self, decisions: list[_Decision], report: IngestReport) -> None:
        """mv: each source row whose value the target now holds goes, if it still holds what was copied;
        then its object, unless a target row references it."""
        copied = [
            d
            for d in decisions
            if d.item.source is not None and d.outcome in (Outcome.NEW, Outcome.OVERWRITE, Outcome.SAME)
        ]
        for d in decisions:
            if d.item.source is not None and d.outcome in PROBLEMS:
                report.sources_kept.append((d.item.label, d.reason or d.outcome.value))
        sources = [d.item.source for d in copied if d.item.source is not None]
        removed = self.store.metastore.delete_many_if_unchanged(sources)
        report.sources_removed += len(removed)
        removed_ids = {id(r) for r in removed}
        for source in sources:
            if id(source) not in removed_ids:
                report.sources_kept.append((source.label, "rewritten at the source meanwhile (by a worker?)"))
        in_use = {str(d.url) for d in decisions if d.url is not None}
        objects: list[ObjectURL] = []
        for source in removed:
            ref = codec.classify(source.value).object_url
            if ref is None or ref in in_use:
                continue
            target = self.store.deletable(ref)
            if isinstance(target, ObjectURL):
                objects.append(target)
        self._delete_objects(objects, report)

    def _delete_objects(self, urls: list[ObjectURL], report: IngestReport) -> None:
        for url, error in zip(urls, self.store.buckets.delete_many(urls), strict=True):
            if error is None:
                report.objects_deleted += 1
            else:
                report.object_errors.append((str(url), error.message))


def _serialized(encoded: Encoded) -> str:
    """The value's json.dumps text, as the encoded column or object holds it."""
    if encoded.object_text is not None:
        return encoded.object_text
    stored = codec.classify(encoded.column_text) if encoded.location is Location.INLINE else None
    return stored.ref if stored is not None and stored.ref is not None else encoded.column_text


def run_ingest(
    ingest: Ingest,
    batches: Callable[[], Iterator[list[Incoming]]],
    *,
    dry_run: bool = False,
    confirm: Confirm[IngestReport] | None = None,
    progress: Progress | None = None,
    check_plan: Callable[[IngestReport], None] | None = None,
) -> IngestReport:
    """Plan over every batch (refusing --on-conflict fail conflicts before any change), ask, then
    write batch by batch. ``batches()`` is called once per pass and must give the same items;
    ``check_plan`` may refuse the plan (raise) before anything changes."""
    plan = ingest.plan(batches(), progress)
    if check_plan is not None:
        check_plan(plan)
    if dry_run:
        return plan
    if confirm is not None and plan.total and not confirm(plan):
        plan.dry_run, plan.declined = False, True
        return plan
    if progress is not None and plan.total:
        progress(ingest.verb, 0, total=plan.total)
    return ingest.execute(batches(), progress)
