"""Reading values as a worker reads them: get one (row -> ref -> inline JSON or object -> value), or list
rows with where each value lives. Writing is in :mod:`statectl.ops.write`."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from statectl.core import codec, layout
from statectl.core.codec import StoredValue
from statectl.core.filters import RowFilter
from statectl.core.layout import ObjectURL
from statectl.core.scopes import Scope, TaskScope, check_key
from statectl.errors import DataError, NotFoundError, StatectlError
from statectl.stores.bucket import Result
from statectl.stores.metastore import StateRow
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
