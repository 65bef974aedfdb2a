"""The merge scan: every object under the base path joined with the rows whose refs point at it.

Both sides are streamed in the same order, plain str order of the object's path relative to the
base (object stores list keys in UTF-8 byte order, which is str order; the DB sorts the ref texts in
byte order), so one pass pairs them with memory flat in the size of either store:

- the listing under the base path (``Buckets.iter_listing``), without statectl's reserved objects;
- the rows whose value is a ref wrapper holding an object URL under the base path, task and asset
  tables merged. A ref written under another conn_id or scheme of the same path is read by the
  provider through its own connection, so it is joined by its path too: one ordered stream per such
  URL prefix (a first, unordered pass over the refs not under the base URL finds them; refs
  elsewhere are counted and sampled, never joined).

A RowFilter narrows both sides to the same region of paths: a listing prefix plus a check of the path
segments, applied to listed objects and to refs alike, so a row of any scope that references an
object in the region is its referrer (prune must never take such an object for an orphan).
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from statectl.core import codec, layout
from statectl.core.codec import Location
from statectl.core.filters import RowFilter
from statectl.core.layout import ASSETS_FOLDER, ObjectURL
from statectl.errors import DataError, UsageError
from statectl.stores.metastore import Metastore, StateRow
from statectl.stores.store import StateStore

# A cap on distinct URL prefixes (connections / schemes) of refs to the base path; each is one
# ordered DB stream. More than this is not a deployment, and the scan says it is incomplete.
MAX_REF_PREFIXES = 64
# A worker writes the object before its row: an unreferenced object younger than this may be a write
# in flight (check reports it as recent, prune keeps it).
DEFAULT_GRACE = timedelta(hours=1)


@dataclass(frozen=True)
class StoredObject:
    url: ObjectURL
    size: int | None
    modified: datetime | None  # UTC, from the listing (no extra request per object)


@dataclass(frozen=True)
class Referrer:
    row: StateRow  # a task or asset row
    url: ObjectURL  # the row's ref, parsed


@dataclass
class ScanEntry:
    path: str  # object path relative to the base, e.g. "dag/run/task/-1/key.gz"
    obj: StoredObject | None  # None: dangling (rows reference a missing object)
    referrers: list[Referrer]  # []: orphan (no row references the object)


@dataclass(frozen=True)
class OutsideRef:
    """A row whose ref is not joined: outside the base path, or not placeable in path order."""

    row: StateRow
    ref: str
    reason: str


def _every(name: str) -> bool:
    return True


@dataclass(frozen=True)
class Region:
    """The part of the base path a RowFilter selects: a listing prefix and a check of the segments;
    with no prefix, which top-level names (dag folders, ``assets``) the listing goes into."""

    prefix: str
    accepts: Callable[[str], bool]
    folders: Callable[[str], bool] = _every


def _q(value: str, what: str) -> str:
    return layout.quote_segment(value, what)


def region_for(flt: RowFilter | None, asset_names: list[str] | None = None) -> Region:
    """Map a RowFilter to the narrowest listing prefix and a segment check (quoted as the provider
    quotes), narrowed to a shard's paths. ``asset_names``: the names of the asset an --asset-uri
    filter selects."""
    region = _scope_region(flt, asset_names)
    shard = flt.shard if flt is not None else None
    if shard is None or shard.whole:
        return region
    return Region(region.prefix, lambda path: shard.owns_path(path) and region.accepts(path), shard.owns_path)


def _scope_region(flt: RowFilter | None, asset_names: list[str] | None) -> Region:
    if flt is None:
        return Region("", lambda path: True)
    if flt.expired_before is not None:
        raise UsageError("--expired selects rows, not objects; a scan cannot narrow the listing by it")
    if flt.asset_name is not None or flt.asset_uri is not None:
        names = [flt.asset_name] if flt.asset_name is not None else (asset_names or [flt.asset_uri or ""])
        folders = {_q(name, "asset") for name in names}
        prefix = f"{ASSETS_FOLDER}/{next(iter(folders))}/" if len(folders) == 1 else f"{ASSETS_FOLDER}/"

        def accepts_asset(path: str) -> bool:
            segments = path.split("/")
            return layout.is_asset_path(segments) and segments[1] in folders

        return Region(prefix, accepts_asset)
    wanted = [
        None if value is None else _q(str(value), what) if what != "map index" else str(value)
        for value, what in (
            (flt.dag_id, "dag id"),
            (flt.run_id, "run id"),
            (flt.task_id, "task id"),
            (flt.map_index, "map index"),
        )
    ]
    if any(w is not None for w in wanted):
        prefix = ""
        for value in wanted[:3]:  # the path is dag/run/task/map_index/key: the prefix ends at the first gap
            if value is None:
                break
            prefix += f"{value}/"

        def accepts_task(path: str) -> bool:
            parts = layout.task_segments(path.split("/"))
            return parts is not None and all(w is None or w == p for w, p in zip(wanted, parts, strict=True))

        return Region(prefix, accepts_task)
    if flt.tasks and not flt.assets:
        return Region("", lambda path: not layout.is_asset_path(path.split("/")))
    if flt.assets and not flt.tasks:
        return Region(f"{ASSETS_FOLDER}/", lambda path: layout.is_asset_path(path.split("/")))
    if not flt.tasks and not flt.assets:
        return Region("", lambda path: False)
    return Region("", lambda path: True)


def _json_text(text: str) -> str:
    """How a string appears inside the worker's json.dumps output (ASCII escapes included)."""
    return json.dumps(text)[1:-1]


class Scan:
    """One merge join of the listing under the base path and the rows' refs, in path order."""

    def __init__(self, store: StateStore, flt: RowFilter | None = None, *, sample_limit: int = 20) -> None:
        self.store = store
        self.flt = flt
        self.sample_limit = sample_limit
        # valid once entries() is exhausted:
        self.complete = True
        self.incomplete_reason: str | None = None
        self.outside_count = 0  # refs not joined (outside the base path, or not placeable)
        self.outside_sample: list[OutsideRef] = []  # the first sample_limit of them
        self.other_connection_count = 0  # joined refs written under another conn_id or scheme
        self.objects_listed = 0
        self.refs_joined = 0

    def _incomplete(self, reason: str) -> None:
        if self.complete:
            self.complete, self.incomplete_reason = False, reason

    def _outside(self, row: StateRow, ref: str, reason: str) -> None:
        self.outside_count += 1
        if len(self.outside_sample) < self.sample_limit:
            self.outside_sample.append(OutsideRef(row, ref, reason))

    def _reader(self) -> Metastore:
        """The connection the scan streams on. PostgreSQL: its own, so that a consumer (prune) can
        commit on the store's connection without closing the scan's server-side cursors. SQLite:
        the store's, since a second connection's read lock would block that consumer's writes."""
        metastore = self.store.metastore
        return metastore if metastore.dialect == "sqlite" else Metastore(metastore.url)

    def entries(self) -> Iterator[ScanEntry]:
        base = self.store.require_base()
        reader = self._reader()
        try:
            asset_names = None
            if self.flt is not None and self.flt.asset_uri is not None and self.flt.asset_name is None:
                asset_names = reader.asset_names_for_uri(self.flt.asset_uri)
            region = region_for(self.flt, asset_names)
            base_prefix = f"{base}/"
            prefixes = [base_prefix, *sorted(self._other_prefixes(reader, base, base_prefix, region))]
            refs = heapq.merge(
                *(self._refs(reader, base, prefix, region) for prefix in prefixes), key=lambda item: item[0]
            )
            yield from self._join(self._objects(base, region), self._grouped(refs))
        finally:
            if reader is not self.store.metastore:
                reader.close()

    # -- the DB side ----------------------------------------------------------------
    def _other_prefixes(self, reader: Metastore, base: ObjectURL, base_prefix: str, region: Region) -> set[str]:
        """URL prefixes (other conn_id / scheme) of refs the provider reads from the base path; refs
        elsewhere are recorded as outside. One unordered pass over the refs not under the base URL."""
        found: set[str] = set()
        rows = reader.iter_rows_with_value_like(codec.WRAPPER_HEAD, "://", codec.WRAPPER_HEAD + _json_text(base_prefix))
        for row in rows:
            stored = codec.classify(row.value)
            if stored.location is not Location.OBJECT or stored.ref is None:
                continue
            try:
                url = layout.require_readable(stored.ref, base)
            except DataError as e:
                self._outside(row, stored.ref, e.message)
                continue
            relative = "/".join(url.parts[len(base.parts) :])
            prefix = stored.ref[: len(stored.ref) - len(relative)]
            if not relative or not stored.ref.endswith("/" + relative):
                self._outside(row, stored.ref, "the path cannot be placed in the listing's order")
                self._incomplete(f"the ref {stored.ref} could not be placed in path order")
                continue
            if not region.accepts(relative) or not relative.startswith(region.prefix):
                continue
            if prefix not in found and len(found) >= MAX_REF_PREFIXES:
                self._outside(row, stored.ref, "too many connections / schemes refer to the base path")
                self._incomplete(f"more than {MAX_REF_PREFIXES} URL prefixes refer to the base path")
                continue
            found.add(prefix)
        return found

    def _refs(self, reader: Metastore, base: ObjectURL, prefix: str, region: Region) -> Iterator[tuple[str, Referrer]]:
        """(relative path, referrer) for the refs starting with this URL prefix, in path order."""
        column_prefix = codec.WRAPPER_HEAD + _json_text(prefix + region.prefix)
        other_connection = prefix != f"{base}/"
        last = ""
        for row in reader.iter_rows_by_value_prefix(column_prefix):
            stored = codec.classify(row.value)
            if stored.location is not Location.OBJECT or stored.ref is None or not stored.ref.startswith(prefix):
                continue  # an extra member in the wrapper: not the worker's text; classify decides
            relative = stored.ref[len(prefix) :]
            try:
                url = layout.require_readable(stored.ref, base)
            except DataError as e:
                self._outside(row, stored.ref, e.message)
                continue
            if not relative:
                self._outside(row, stored.ref, "the ref is the base path itself, not an object under it")
                continue
            if not region.accepts(relative):
                continue
            if relative < last:
                self._incomplete(f"refs arrived out of path order ({relative!r} after {last!r})")
            last = relative
            self.refs_joined += 1
            self.other_connection_count += other_connection
            yield relative, Referrer(row, url)

    @staticmethod
    def _grouped(refs: Iterator[tuple[str, Referrer]]) -> Iterator[tuple[str, list[Referrer]]]:
        current: str | None = None
        group: list[Referrer] = []
        for relative, referrer in refs:
            if relative != current and group:
                yield current or "", group
                group = []
            current = relative
            group.append(referrer)
        if group:
            yield current or "", group

    # -- the bucket side ------------------------------------------------------------
    def _objects(self, base: ObjectURL, region: Region) -> Iterator[tuple[str, StoredObject]]:
        root = len(base.path) + 1
        last = ""
        buckets = self.store.buckets
        # No prefix: the dag folders one by one, several at once on an object store.
        listing = buckets.iter_listing_by_folder(base, region.folders) if not region.prefix else None
        for listed in listing or buckets.iter_listing(base, region.prefix):
            relative = listed.path[root:]
            if "/" not in relative and relative.startswith(layout.RESERVED_PREFIX):
                continue  # statectl's own lock / probe objects
            if not region.accepts(relative):
                continue
            if relative <= last:
                self._incomplete(f"the listing arrived out of order ({relative!r} after {last!r})")
            last = relative
            self.objects_listed += 1
            yield relative, StoredObject(base.child(relative), listed.size, listed.modified)

    # -- the join -------------------------------------------------------------------
    @staticmethod
    def _join(
        objects: Iterator[tuple[str, StoredObject]], refs: Iterator[tuple[str, list[Referrer]]]
    ) -> Iterator[ScanEntry]:
        obj = next(objects, None)
        ref = next(refs, None)
        while obj is not None or ref is not None:
            if ref is None or (obj is not None and obj[0] < ref[0]):
                assert obj is not None
                yield ScanEntry(obj[0], obj[1], [])
                obj = next(objects, None)
            elif obj is None or ref[0] < obj[0]:
                yield ScanEntry(ref[0], None, ref[1])
                ref = next(refs, None)
            else:
                yield ScanEntry(obj[0], obj[1], ref[1])
                obj, ref = next(objects, None), next(refs, None)
