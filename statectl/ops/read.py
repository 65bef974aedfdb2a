"""Reading values as a worker reads them: get one (row -> ref -> inline JSON or object -> value), or list
rows with where each value lives. Writing is in :mod:`statectl.ops.write`."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

from statectl.core import codec, layout
from statectl.core.codec import StoredValue
from statectl.core.durations import iso
from statectl.core.filters import RowFilter
from statectl.core.layout import ObjectURL
from statectl.core.scopes import Scope, TaskScope, check_key
from statectl.errors import DataError, NotFoundError, StatectlError
from statectl.stores.metastore import STREAM_BATCH, StateRow, iso_timestamp

if TYPE_CHECKING:  # not imported by ls: the bucket layer brings fsspec and asyncio (tens of ms of start-up)
    from statectl.stores.bucket import Result
    from statectl.stores.store import StateStore

# -- get ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReadResult:
    scope: Scope
    key: str
    value: Any
    stored: StoredValue | None  # None when read straight from the bucket
    row: StateRow | None
    url: ObjectURL | None = None


def get_value(store: StateStore, scope: Scope, key: str, *, raw: bool = False) -> ReadResult:
    """The value a worker reads for (scope, key); ``raw``: the row's text, undecoded."""
    check_key(key)
    scope = store.resolve(scope)
    row = store.metastore.get_row(scope, key)
    if row is None:
        if isinstance(scope, TaskScope):
            store.metastore.require_task_instance(scope)  # say which part of the scope is unknown
        raise NotFoundError(f"no key {key!r} in {scope}")
    stored = codec.classify(row.value)
    if raw:
        return ReadResult(scope, key, None, stored, row)
    value, url = store.decode(stored)
    return ReadResult(scope, key, value, stored, row, url)


def get_from_bucket(store: StateStore, scope: Scope, key: str) -> ReadResult:
    """Read the object at the provider's path, without the metastore."""
    check_key(key)
    url = store.object_url_for(scope, key)
    text = store.buckets.read_text(url)
    return ReadResult(scope, key, codec.decode_json(text, f"object {url}"), None, None, url)


def read_values(store: StateStore, rows: Sequence[StateRow]) -> list[Result[Any]]:
    """The value a worker reads for each row, objects read concurrently; per row the value or the error
    (a missing or corrupt object, a ref outside the base path, text that is not JSON)."""
    values: list[Result[Any]] = []
    reads: list[tuple[int, ObjectURL]] = []
    for index, row in enumerate(rows):
        stored = codec.classify(row.value)
        try:
            if stored.location is codec.Location.OBJECT:
                assert stored.ref is not None
                reads.append((index, layout.require_readable(stored.ref, store.base)))
                values.append(None)
            else:
                values.append(store.decode(stored)[0])
        except DataError as e:
            values.append(e)
    texts = store.buckets.read_many([url for _, url in reads])
    for (index, url), text in zip(reads, texts, strict=True):
        try:
            values[index] = text if isinstance(text, StatectlError) else codec.decode_json(text, f"object {url}")
        except DataError as e:
            values[index] = e
    return values


# -- ls ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One listed row, classified."""

    row: StateRow
    stored: StoredValue


def list_entries(store: StateStore, flt: RowFilter, key_glob: str | None = None) -> Iterator[Entry]:
    """Rows in scope order, streamed with flat memory, each with where its value lives."""
    for row in store.metastore.iter_rows(flt):
        if key_glob is not None and not fnmatchcase(row.key, key_glob):
            continue
        yield Entry(row, codec.classify(row.value))


# What ls shows of a row, a tuple in this order; the first LISTING_SCOPE_COLUMNS name the scope, the same for
# every key of it (and rows come in scope order).
LISTING_COLUMNS = (
    "kind",
    "dag_id",
    "run_id",
    "task_id",
    "map_index",
    "asset",
    "key",
    "bytes",
    "location",
    "compression",
    "updated_at",
    "expires_at",
    "object",
)
LISTING_SCOPE_COLUMNS = 6
_LOCATION_TEXT = {location: location.value for location in codec.Location}


def list_records(
    store: StateStore, flt: RowFilter, key_glob: str | None = None, batch_size: int = STREAM_BATCH
) -> Iterator[list[tuple[Any, ...]]]:
    """:func:`list_entries` as LISTING_COLUMNS tuples, a fetched batch at a time (flat memory). Task rows are
    made straight from the driver's tuples: at a million rows a StateRow, StoredValue and dict per row cost
    more than the query."""
    if flt.wants_tasks:
        for records in store.metastore.iter_task_records(flt, batch_size):
            batch = [_task_record(r) for r in records if key_glob is None or fnmatchcase(r[5], key_glob)]
            if batch:
                yield batch
    if flt.wants_assets:
        entries = list_entries(store, replace(flt, tasks=False), key_glob)
        while batch := [_entry_record(entry) for entry in itertools.islice(entries, batch_size)]:
            yield batch


def _task_record(r: Sequence[Any]) -> tuple[Any, ...]:
    """A row of Metastore.iter_task_records as LISTING_COLUMNS; the same as _entry_record of its Entry."""
    location, ref = codec.locate(r[6])
    url = ref if location is codec.Location.OBJECT else None
    compression = None if url is None else codec.infer_compression(url)
    updated_at, expires_at = iso_timestamp(r[7]), iso_timestamp(r[8])
    scope = ("task", r[1], r[2], r[3], int(r[4]), None)
    return (*scope, r[5], codec.text_bytes(r[6]), _LOCATION_TEXT[location], compression, updated_at, expires_at, url)


def _entry_record(entry: Entry) -> tuple[Any, ...]:
    """An Entry as LISTING_COLUMNS (asset rows; task rows take _task_record's shortcut)."""
    row, stored, scope = entry.row, entry.stored, entry.row.scope
    where: tuple[Any, ...]
    if isinstance(scope, TaskScope):
        where = (scope.dag_id, scope.run_id, scope.task_id, scope.map_index, None)
    else:
        where = (None, None, None, None, scope.label())
    times = (iso(row.updated_at), iso(row.expires_at))
    location, url = stored.location.value, stored.object_url
    return (scope.kind, *where, row.key, stored.stored_bytes, location, stored.compression, *times, url)
