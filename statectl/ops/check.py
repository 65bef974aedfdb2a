"""statectl check: what is wrong, or about to surprise a worker, across the metastore and the bucket.

Two streamed passes, memory flat in the size of both stores:

1. the rows (``Metastore.iter_rows``): values that do not decode (bad JSON in a plain row or in an
   inline ref), plain rows that a worker with a backend reads with a warning (the SDK's accessors
   return the raw value and log "... was not written through the configured state backend"), ref
   rows that a worker without a backend silently misreads (it gets the wrapper dict), totals per DAG;
2. the merge scan (``statectl.ops.scan.Scan``) of the listing and the refs: dangling refs, orphan
   objects (older than the grace; younger ones may be a write in flight), refs outside the base
   path, objects whose suffix is not the configured compression's, object sizes per DAG; with
   ``deep`` the referenced objects are read (concurrently, in batches) and decoded as a worker does.

Every finding list keeps the first ``limit`` items and a full count.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import unquote

from statectl.core import codec, layout
from statectl.core.codec import Location
from statectl.core.filters import RowFilter, utcnow
from statectl.core.scopes import TaskScope
from statectl.errors import ExitCode, StatectlError, UsageError
from statectl.ops.report import Progress, no_progress
from statectl.ops.scan import DEFAULT_GRACE, Scan, ScanEntry
from statectl.stores.bucket import ObjectMissing
from statectl.stores.metastore import StateRow
from statectl.stores.retry import TransientFailure
from statectl.stores.store import StateStore

DEFAULT_LIMIT = 20
ASSETS_GROUP = "(assets)"  # the per-DAG totals' line for asset state

# Finding kinds, in report order. Problems make `check` exit non-zero; warnings only with strict.
PROBLEMS = ("dangling", "orphans", "outside_base", "undecodable", "refs_without_backend")
WARNINGS = ("suffix_mismatch", "plain_with_backend")
INFO = ("recent_orphans",)
DESCRIPTIONS = {
    "dangling": "rows whose ref points at a missing object (a worker reads None)",
    "orphans": "objects no row references, older than the grace (prune removes them)",
    "outside_base": "refs outside the configured base path (never deleted by statectl)",
    "undecodable": "values that do not decode: bad JSON in a row, corrupt or non-JSON objects (--deep)",
    "refs_without_backend": "ref rows that workers without a state_store_backend read as the wrapper dict",
    "suffix_mismatch": "objects whose suffix is not the configured compression's (written under another setting)",
    "plain_with_backend": "plain rows that workers with the backend return raw, logging 'not written through the "
    "configured state backend'",
    "recent_orphans": "unreferenced objects younger than the grace: maybe a worker's write in flight",
}


@dataclass
class Findings:
    """A bounded list of findings and the full count."""

    limit: int
    count: int = 0
    items: list[dict[str, Any]] = field(default_factory=list)

    def add(self, item: dict[str, Any]) -> None:
        self.count += 1
        if len(self.items) < self.limit:
            self.items.append(item)


@dataclass
class Totals:
    rows: int = 0
    row_bytes: int = 0
    objects: int = 0
    object_bytes: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class CheckOptions:
    flt: RowFilter = field(default_factory=RowFilter)
    grace: timedelta = DEFAULT_GRACE
    deep: bool = False  # read every referenced object and decode it as a worker does
    limit: int = DEFAULT_LIMIT  # items listed per finding (counts are always complete)
    strict: bool = False  # warnings count as problems too

    def check(self) -> None:
        if self.limit < 0:
            raise UsageError("--limit must be 0 or more")


@dataclass
class CheckReport:
    base: str | None
    backend: bool  # workers offload through the object storage backend
    compression: str | None
    deep: bool
    grace: timedelta
    limit: int
    findings: dict[str, Findings]
    strict: bool = False
    shard: str | None = None  # --shard I/N
    locations: dict[str, int] = field(default_factory=lambda: {loc.value: 0 for loc in Location})
    per_dag: dict[str, Totals] = field(default_factory=dict)
    scan_complete: bool = True
    incomplete_reason: str | None = None
    objects_read: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def problems(self) -> int:
        kinds = PROBLEMS + WARNINGS if self.strict else PROBLEMS
        return sum(self.findings[k].count for k in kinds) + (0 if self.scan_complete else 1)

    @property
    def ok(self) -> bool:
        return self.problems == 0

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.OK if self.ok else ExitCode.PROBLEMS_FOUND

    @property
    def total(self) -> Totals:
        total = Totals()
        for t in self.per_dag.values():
            total.rows += t.rows
            total.row_bytes += t.row_bytes
            total.objects += t.objects
            total.object_bytes += t.object_bytes
        return total

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "problems": self.problems,
            "strict": self.strict,
            "shard": self.shard,
            "base": self.base,
            "backend": self.backend,
            "compression": self.compression,
            "deep": self.deep,
            "grace_seconds": int(self.grace.total_seconds()),
            "limit": self.limit,
            "scan_complete": self.scan_complete,
            "incomplete_reason": self.incomplete_reason,
            "findings": {
                kind: {
                    "severity": "problem" if kind in PROBLEMS else "warning" if kind in WARNINGS else "info",
                    "description": DESCRIPTIONS[kind],
                    "count": f.count,
                    "items": f.items,
                }
                for kind, f in self.findings.items()
            },
            "locations": self.locations,
            "objects_read": self.objects_read,
            "totals": self.total.as_dict(),
            "per_dag": {name: t.as_dict() for name, t in sorted(self.per_dag.items())},
            "notes": self.notes,
        }


def _row_where(row: StateRow) -> dict[str, Any]:
    scope = row.scope
    if isinstance(scope, TaskScope):
        return {
            "kind": "task",
            "dag_id": scope.dag_id,
            "run_id": scope.run_id,
            "task_id": scope.task_id,
            "map_index": scope.map_index,
            "key": row.key,
        }
    return {"kind": "asset", "asset": scope.label(), "key": row.key}


def _group(row: StateRow) -> str:
    return row.scope.dag_id if isinstance(row.scope, TaskScope) else ASSETS_GROUP


def _path_group(path: str) -> str:
    """The per-DAG line of an object no row references, from its path."""
    segments = path.split("/")
    if len(segments) == 3 and segments[0] == layout.ASSETS_FOLDER:
        return ASSETS_GROUP
    return unquote(segments[0]) if len(segments) >= 5 else "(other)"


class _Check:
    """One check run: scan both stores and fill the report (see the module docstring)."""

    def __init__(self, store: StateStore, options: CheckOptions, progress: Progress) -> None:
        self.store = store
        self.flt = options.flt
        self.grace = options.grace
        self.deep = options.deep
        self.limit = options.limit
        self.progress = progress
        config = store.config
        self.report = CheckReport(
            base=None if store.base is None else str(store.base),
            backend=config.offloads,
            compression=config.compression,
            deep=options.deep,
            grace=options.grace,
            limit=options.limit,
            findings={kind: Findings(options.limit) for kind in PROBLEMS + WARNINGS + INFO},
            strict=options.strict,
            shard=options.flt.shard_label,
        )

    def _totals(self, group: str) -> Totals:
        if group not in self.report.per_dag:
            self.report.per_dag[group] = Totals()
        return self.report.per_dag[group]

    def run(self) -> CheckReport:
        self._check_rows()
        if self.store.base is None:
            self.report.notes.append("no [common.io] state_store_objectstorage_path: the bucket was not scanned")
        else:
            self._check_objects()
        if not self.deep:
            self.report.notes.append(
                "objects were listed, not read: corrupt compression and bad JSON inside objects need --deep"
            )
        return self.report

    # -- pass 1: the rows -----------------------------------------------------------
    def _check_rows(self) -> None:
        f = self.report.findings
        backend = self.report.backend
        done = 0
        for row in self.store.metastore.iter_rows(self.flt):
            stored = codec.classify(row.value)
            self.report.locations[stored.location.value] += 1
            totals = self._totals(_group(row))
            totals.rows += 1
            totals.row_bytes += stored.stored_bytes
            if stored.location is Location.PLAIN:
                if (reason := codec.json_error(row.value)) is not None:
                    f["undecodable"].add({**_row_where(row), "what": "row", "reason": f"not JSON: {reason}"})
                elif backend:
                    f["plain_with_backend"].add(_row_where(row))
            elif not backend:
                f["refs_without_backend"].add({**_row_where(row), "location": stored.location.value})
            elif stored.location is Location.INLINE:
                assert stored.ref is not None
                if (reason := codec.json_error(stored.ref)) is not None:
                    f["undecodable"].add({**_row_where(row), "what": "inline ref", "reason": f"not JSON: {reason}"})
            done += 1
            if done % 1000 == 0:
                self.progress("rows", 1000)
        self.progress("rows", done % 1000)

    # -- pass 2: the merge scan -----------------------------------------------------
    def _check_objects(self) -> None:
        f = self.report.findings
        scan = Scan(self.store, self.flt, sample_limit=self.limit)
        suffix = layout.compression_suffix(self.report.compression) if self.report.compression else ""
        expected_codec = codec.infer_compression(f"x{suffix}") if suffix else None
        now = utcnow()
        batch: list[ScanEntry] = []
        pending_dangling: list[ScanEntry] = []
        batch_size = max(4 * self.store.concurrency, 16)
        done = 0
        for entry in scan.entries():
            done += 1
            if done % 1000 == 0:
                self.progress("objects", 1000)
            if entry.obj is None:
                pending_dangling.append(entry)
                if len(pending_dangling) >= batch_size:
                    self._confirm_dangling(pending_dangling)
                    pending_dangling = []
                continue
            group = _group(entry.referrers[0].row) if entry.referrers else _path_group(entry.path)
            totals = self._totals(group)
            totals.objects += 1
            totals.object_bytes += entry.obj.size or 0
            if codec.infer_compression(entry.path) != expected_codec:
                f["suffix_mismatch"].add({"path": entry.path, "url": str(entry.obj.url), "configured": suffix or None})
            if not entry.referrers:
                modified = entry.obj.modified
                item = {
                    "path": entry.path,
                    "url": str(entry.obj.url),
                    "size": entry.obj.size,
                    "modified": None if modified is None else modified.isoformat(),
                }
                if modified is not None and now - modified < self.grace:
                    f["recent_orphans"].add(item)
                else:
                    f["orphans"].add(item)
            elif self.deep:
                batch.append(entry)
                if len(batch) >= batch_size:
                    self._read(batch)
                    batch = []
        self.progress("objects", done % 1000)
        self._read(batch)
        self._confirm_dangling(pending_dangling)
        for outside in scan.outside_sample:
            f["outside_base"].items.append({**_row_where(outside.row), "ref": outside.ref, "reason": outside.reason})
        f["outside_base"].count = scan.outside_count
        self.report.scan_complete = scan.complete
        self.report.incomplete_reason = scan.incomplete_reason
        if not scan.complete:
            self.report.notes.append(f"the scan is incomplete ({scan.incomplete_reason}): orphans are not trustworthy")
        if scan.other_connection_count:
            self.report.notes.append(
                f"{scan.other_connection_count} ref(s) name the base path through another conn_id or scheme; "
                "workers read them through that connection"
            )

    def _confirm_dangling(self, entries: list[ScanEntry]) -> None:
        """A ref whose object the listing did not show, unless it exists now: the listing had passed
        its path when a worker wrote the object (a worker writes the object before the row)."""
        if not entries:
            return
        base = self.store.require_base()
        infos = self.store.buckets.stat_many([base.child(e.path) for e in entries])
        for entry, info in zip(entries, infos, strict=True):
            if isinstance(info, StatectlError):
                raise info  # the store did not answer: no finding can be trusted
            if info.exists:
                continue
            for referrer in entry.referrers:
                self.report.findings["dangling"].add(
                    {**_row_where(referrer.row), "path": entry.path, "ref": str(referrer.url)}
                )

    def _read(self, entries: list[ScanEntry]) -> None:
        """Read referenced objects as a worker does (compression from the suffix, UTF-8, JSON)."""
        if not entries:
            return
        texts = self.store.buckets.read_many([e.obj.url for e in entries if e.obj is not None])
        self.report.objects_read += len(entries)
        for entry, text in zip(entries, texts, strict=True):
            if isinstance(text, ObjectMissing):  # deleted since it was listed
                self._confirm_dangling([entry])
                continue
            if isinstance(text, TransientFailure):
                raise text  # the store did not answer: no finding can be trusted (exit 8, as for stats)
            reason = text.message if isinstance(text, StatectlError) else None
            if not isinstance(text, StatectlError) and (bad := codec.json_error(text)) is not None:
                reason = f"object {entry.obj.url if entry.obj else entry.path} is not JSON: {bad}"
            if reason is not None:
                for referrer in entry.referrers:
                    self.report.findings["undecodable"].add(
                        {**_row_where(referrer.row), "what": "object", "path": entry.path, "reason": reason}
                    )


def run_check(store: StateStore, options: CheckOptions, *, progress: Progress | None = None) -> CheckReport:
    """Scan the metastore and the bucket and report what is wrong; changes nothing."""
    options.check()
    store.check_reachable(store.base)
    return _Check(store, options, progress or no_progress).run()
