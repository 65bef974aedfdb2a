"""moto's S3 made to list and fill at a real store's cost per request, for the latency bed (benchmarks/latency_bed.py).

Costs of moto's in-memory S3 that no real store has, which would make the bed measure moto rather than the tools:

- listing: every ListObjectsV2 page walks, filters and sorts ALL keys of the bucket (``S3Backend.list_objects``),
  then skips to the continuation token: about 0.3 s a page at 20k objects, 0.5 s at 50k, so a 100k-object listing
  costs moto some 100 s of CPU where S3 takes 100 pages x its latency (and moto's own listing fails with a
  KeyError, a 500, when a key is deleted while it walks them). :func:`install` gives each bucket a sorted index
  of its key names, kept up to date as keys are set and removed, and answers a listing of an unversioned bucket
  from it (bisect to the start, read ``max-keys`` + 1 entries; with a delimiter, one entry per common prefix and a
  bisect past its keys): the same keys, prefixes, order, token and truncation as moto's own answer, which still
  serves versioned buckets. The answer's XML is written directly too (moto's serializer: 0.13 s a page).
- filling: a PUT through HTTP costs moto and boto3 about 4-5 ms of CPU in this process (200k objects: 15 min).
  :func:`put_objects` puts straight into moto's backend in this process (the same FakeKeys, etag and
  last-modified a PUT makes), for a harness's set-up.
- every request: moto's server looks for the request's backend by listing its own package's folders anew (some
  180 stat calls: half of a GET's CPU); :func:`install` lists them once.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any

from sortedcontainers import SortedList  # type: ignore[import-untyped]

__all__ = ["backend_of", "delete_objects", "install", "key_names", "put_objects"]

_installed = threading.Lock()
_installed_bucket = threading.Lock()  # one adoption per bucket, even when two listings start at once
_done = False


def _indexed_store_class() -> type:
    from moto.s3.utils import _VersionedKeyStore

    class IndexedKeyStore(_VersionedKeyStore):
        """moto's key store with a sorted index of its names (a lock: requests are served on many threads)."""

        index: Any
        index_lock: threading.Lock

        def adopt(self) -> None:
            self.index_lock = threading.Lock()
            self.index = SortedList(dict.keys(self))

        def __setitem__(self, key: str, value: Any) -> Any:
            with self.index_lock:
                new = not dict.__contains__(self, key)
                super().__setitem__(key, value)
                if new:
                    self.index.add(key)

        def setlist(self, key: Any, list_: Any) -> Any:
            with self.index_lock:
                new = not dict.__contains__(self, key)
                super().setlist(key, list_)
                if new:
                    self.index.add(key)

        def pop(self, key: str) -> None:  # type: ignore[override]
            with self.index_lock:
                super().pop(key)  # raises KeyError for a missing key, as moto expects
                self.index.discard(key)

        def __delitem__(self, key: str) -> None:
            with self.index_lock:
                super().__delitem__(key)
                self.index.discard(key)

        def entries_after(self, prefix: str, after: str | None, count: int, delimiter: str | None) -> list[Any]:
            """Up to ``count`` entries whose names start with ``prefix`` and sort after ``after``, in order: the
            latest version of a key (a FakeKey), or with a delimiter the common prefix (a str) of the keys that have
            one after ``prefix``, as S3 answers. Under the lock: a key deleted meanwhile cannot end a page early."""
            out: list[Any] = []
            with self.index_lock:
                index = self.index
                at = max(index.bisect_right(after) if after else 0, index.bisect_left(prefix))
                while at < len(index) and len(out) < count:
                    name = index[at]
                    if not name.startswith(prefix):
                        break
                    cut = name.find(delimiter, len(prefix)) if delimiter else -1
                    if delimiter is None or cut < 0:
                        out.append(dict.__getitem__(self, name)[-1])
                        at += 1
                        continue
                    folder = name[: cut + len(delimiter)]
                    if after is None or folder > after:
                        out.append(folder)
                    # past every name in the folder: the least string above all that start with it
                    at = index.bisect_left(folder[:-1] + chr(ord(folder[-1]) + 1))
            return out

    return IndexedKeyStore


def install() -> None:
    """Patch moto's S3Backend.list_objects_v2 in this process (once): indexed listings, see the module's text."""
    global _done
    with _installed:
        if _done:
            return
        from moto.s3.models import FakeTableStorageBucket, S3Backend

        indexed = _indexed_store_class()
        original = S3Backend.list_objects_v2

        def list_objects_v2(
            self: Any,
            bucket: Any,
            prefix: str | None,
            delimiter: str | None,
            continuation_token: str | None,
            start_after: str | None,
            max_keys: int,
        ) -> Any:
            if bucket.versioning_status or isinstance(bucket, FakeTableStorageBucket):
                return original(self, bucket, prefix, delimiter, continuation_token, start_after, max_keys)
            keys = bucket.keys
            if type(keys) is not indexed:
                with _installed_bucket:
                    if type(keys) is not indexed:
                        keys.__class__ = indexed  # same layout (a dict subclass): the store keeps its contents
                        keys.adopt()
            after = self._pagination_tokens.get(continuation_token) if continuation_token else start_after
            found = keys.entries_after(prefix or "", after, max_keys + 1, delimiter or None)
            return self._truncate_result(found, max_keys)

        setattr(S3Backend, "list_objects_v2", list_objects_v2)  # noqa: B010 (a method replaced: mypy)
        _fast_listing_response()
        _cached_module_list()
        _done = True


def _cached_module_list() -> None:
    """moto's server finds the backend of every request by listing its own package's folders again (some 180
    stat calls, half of its CPU for a GET); they do not change while it runs."""
    from moto import backends

    modules = tuple(backends.list_of_moto_modules())
    setattr(backends, "list_of_moto_modules", lambda: modules)  # noqa: B010 (a module function replaced: mypy)


def _fast_listing_response() -> None:
    """ListObjectsV2's answer written directly as S3's XML (moto's generic serializer takes ~0.13 s of CPU for a
    page of 1000 keys, twice the latency the bed gives a page); only for what the index answers, else moto's."""
    from xml.sax.saxutils import escape

    from moto import settings
    from moto.s3.models import FakeTableStorageBucket
    from moto.s3.responses import S3Response

    original = S3Response.list_objects_v2

    def list_objects_v2(self: Any) -> Any:
        query = self.querystring
        token = query.get("continuation-token", [None])[0]
        if token == "" or {"fetch-owner", "encoding-type"} & query.keys():
            return original(self)
        bucket = self.backend.get_bucket(self.bucket_name)
        if bucket.versioning_status or isinstance(bucket, FakeTableStorageBucket):
            return original(self)
        prefix = self._get_querystring(self.request, self.uri).get("prefix", [None])[0]
        if isinstance(prefix, bytes):
            prefix = prefix.decode("utf-8")
        max_keys = int(query.get("max-keys", [settings.get_s3_default_max_keys()])[0])
        start_after = query.get("start-after", [None])[0]
        delimiter = query.get("delimiter", [None])[0]
        entries, truncated, next_token = self.backend.list_objects_v2(
            bucket, prefix, delimiter, token, start_after, max_keys
        )
        keys = [entry for entry in entries if not isinstance(entry, str)]
        folders = [entry for entry in entries if isinstance(entry, str)]
        parts = [
            '<?xml version="1.0" encoding="utf-8"?>\n<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">',
            f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>",
        ]
        for key in keys:
            parts.append(
                f"<Contents><Key>{escape(key.name)}</Key><LastModified>{key.last_modified_ISO8601}</LastModified>"
                f"<ETag>{escape(key.etag)}</ETag><Size>{key.size}</Size>"
                f"<StorageClass>{key.storage_class}</StorageClass></Contents>"
            )
        parts.append(
            f"<Name>{escape(bucket.name)}</Name><Prefix>{escape(prefix or '')}</Prefix><MaxKeys>{max_keys}</MaxKeys>"
            f"<KeyCount>{len(entries)}</KeyCount>"
        )
        if delimiter:
            parts.append(f"<Delimiter>{escape(delimiter)}</Delimiter>")
            parts.extend(f"<CommonPrefixes><Prefix>{escape(folder)}</Prefix></CommonPrefixes>" for folder in folders)
        if next_token:
            parts.append(f"<NextContinuationToken>{next_token}</NextContinuationToken>")
        if not token and start_after:
            parts.append(f"<StartAfter>{escape(start_after)}</StartAfter>")
        parts.append("</ListBucketResult>")
        return 200, {"Content-Type": "application/xml", **self.response_headers}, "".join(parts)

    setattr(S3Response, "list_objects_v2", list_objects_v2)  # noqa: B010 (a method replaced: mypy)


def backend_of(bucket: str) -> Any:
    """moto's backend (of this process) that holds the bucket."""
    from moto.s3.models import s3_backends

    partition, account = s3_backends.bucket_accounts[bucket]
    return s3_backends[account][partition]


def put_objects(bucket: str, objects: Mapping[str, bytes] | Iterable[tuple[str, bytes]]) -> None:
    """Put objects straight into moto's backend (no HTTP): what a PUT of each makes."""
    backend = backend_of(bucket)
    items = objects.items() if isinstance(objects, Mapping) else objects
    for key, body in items:
        backend.put_object(bucket, key, body)


def key_names(bucket: str) -> list[str]:
    """Every key in the bucket, sorted."""
    return sorted(dict.keys(backend_of(bucket).get_bucket(bucket).keys))


def delete_objects(bucket: str, keys: Iterable[str]) -> None:
    backend = backend_of(bucket)
    for key in keys:
        backend.delete_object(bucket, key)
