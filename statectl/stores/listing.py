"""Listing strategies: every object under a path, streamed in plain str order of the path.

That is UTF-8 byte order, the order object stores list keys in, so the merge scan can join the
listing with the rows' refs sorted the same way. One strategy per kind of store:

- local files: a sorted walk that holds one directory's names per level;
- S3 and GCS: the paginated listing, page by page (one request each, at most 1000 keys), with
  size and last-modified from the listing itself;
- anything else: fsspec's ``find``, which holds the whole listing in memory.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from statectl.core.layout import ObjectURL

FetchPage = Callable[[Any, str | None], Awaitable[tuple[list[dict[str, Any]], str | None]]]


@dataclass(frozen=True)
class ListedObject:
    """One object of a listing: its filesystem path, size and last-modified time (UTC)."""

    path: str
    size: int | None
    modified: datetime | None


def iter_listing(url: ObjectURL, prefix: str, fs_for: Callable[[ObjectURL], Any]) -> Iterator[ListedObject]:
    """The objects below ``url`` whose relative path starts with ``prefix``, in path order.
    ``fs_for`` builds the filesystem (only object stores need one)."""
    if url.is_local:
        yield from _walk_sorted(url.path, prefix)
    elif url.protocol in ("s3", "s3a"):
        yield from _list_s3(fs_for(url), url, prefix)
    elif url.protocol in ("gs", "gcs"):
        yield from _list_gcs(fs_for(url), url, prefix)
    else:
        yield from _list_find(fs_for(url), url, prefix)


def _list_find(fs: Any, url: ObjectURL, prefix: str) -> Iterator[ListedObject]:
    found = fs.find(f"{url.path}/{prefix}".rstrip("/"), detail=True)
    for path in sorted(found):
        if path.startswith(f"{url.path}/{prefix}"):
            info = found[path]
            yield ListedObject(path, info.get("size"), modified_from_info(info))


def _pages(fs: Any, fetch_page: FetchPage) -> Iterator[list[dict[str, Any]]]:
    """Pages of a listing, one request each on the filesystem's own event loop."""
    from fsspec.asyn import sync

    token: str | None = None
    while True:
        page, token = sync(fs.loop, fetch_page, fs, token)
        yield page
        if not token:
            return


def _split(url: ObjectURL, prefix: str) -> tuple[str, str]:
    """(bucket, key prefix) of the listing."""
    bucket, _, key = url.path.partition("/")
    return bucket, f"{key}/{prefix}" if key else prefix


def _list_s3(fs: Any, url: ObjectURL, prefix: str) -> Iterator[ListedObject]:
    bucket, key_prefix = _split(url, prefix)

    async def fetch(fs: Any, token: str | None) -> tuple[list[dict[str, Any]], str | None]:
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": key_prefix, **getattr(fs, "req_kw", {})}
        if token:
            kwargs["ContinuationToken"] = token
        out = await fs._call_s3("list_objects_v2", **kwargs)
        return out.get("Contents", []), (out.get("NextContinuationToken") if out.get("IsTruncated") else None)

    for page in _pages(fs, fetch):
        for item in page:
            if not item["Key"].endswith("/"):  # folder markers some tools create are no objects
                yield ListedObject(f"{bucket}/{item['Key']}", item.get("Size"), _as_utc(item.get("LastModified")))


def _list_gcs(fs: Any, url: ObjectURL, prefix: str) -> Iterator[ListedObject]:
    bucket, key_prefix = _split(url, prefix)

    async def fetch(fs: Any, token: str | None) -> tuple[list[dict[str, Any]], str | None]:
        params: dict[str, Any] = {"prefix": key_prefix or None, "maxResults": 1000}
        if token:
            params["pageToken"] = token
        out = await fs._call("GET", "b/{}/o", bucket, json_out=True, **params)
        return out.get("items", []), out.get("nextPageToken")

    for page in _pages(fs, fetch):
        for item in page:
            if not item["name"].endswith("/"):
                yield ListedObject(f"{bucket}/{item['name']}", int(item.get("size", 0)), modified_from_info(item))


def _walk_sorted(root: str, prefix: str = "") -> Iterator[ListedObject]:
    """Regular files below ``root`` (relative path starting with ``prefix``) in str order of the full
    path: a directory sorts as its name + "/" (so "a-b" < "a/x" < "a0", as keys list on S3).
    Symbolic links are not followed (nothing the provider writes is one)."""
    start, _, name_prefix = prefix.rpartition("/")
    top = f"{root}/{start}" if start else root
    yield from _walk_dir(top, name_prefix)


def _walk_dir(top: str, name_prefix: str = "") -> Iterator[ListedObject]:
    try:
        with os.scandir(top) as entries:
            names = sorted(
                (entry.name + "/" if entry.is_dir(follow_symlinks=False) else entry.name)
                for entry in entries
                if entry.name.startswith(name_prefix)
                and (entry.is_dir(follow_symlinks=False) or entry.is_file(follow_symlinks=False))
            )
    except (FileNotFoundError, NotADirectoryError):
        return
    for name in names:
        path = f"{top}/{name.rstrip('/')}"
        if name.endswith("/"):
            yield from _walk_dir(path)
            continue
        try:
            st = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:  # deleted since the directory was read
            continue
        yield ListedObject(path, st.st_size, datetime.fromtimestamp(st.st_mtime, tz=UTC))


def _as_utc(value: Any) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def modified_from_info(info: dict[str, Any]) -> datetime | None:
    """Last-modified time (UTC) from a listing item or an ``info()`` answer of any fsspec store."""
    for key in ("LastModified", "mtime", "updated", "last_modified"):
        value = info.get(key)
        if isinstance(value, datetime):
            return _as_utc(value)
        if isinstance(value, (int, float)):
            return datetime.fromtimestamp(value, tz=UTC)
        if isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
            return _as_utc(parsed)
    return None
