"""Listing strategies: every object under a path, streamed in plain str order of the path.

That is UTF-8 byte order, the order object stores list keys in, so the merge scan can join the
listing with the rows' refs sorted the same way. One strategy per kind of store:

- local files: a sorted walk that holds one directory's names per level;
- S3 and GCS: the paginated listing, page by page (one request each, at most 1000 keys), with
  size and last-modified from the listing itself;
- Azure Blob Storage (adlfs, ``abfs``/``abfss``/``adl``): the container's flat blob listing, page by
  page (at most 5000 blobs each); on accounts with a hierarchical namespace (ADLS Gen2), which list
  depth-first ("a/x" before "a-b"), one directory at a time as for local files; directory entries skipped;
- anything else: fsspec's ``find``, which holds the whole listing in memory.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from statectl.core.layout import ObjectURL
from statectl.stores.schemes import scheme_for

FetchPage = Callable[[Any, str | None], Awaitable[tuple[list[Any], str | None]]]

AZURE_PAGE_SIZE = 5000  # the most Azure's List Blobs returns per request


@dataclass(frozen=True)
class ListedObject:
    """One object of a listing: its filesystem path, size and last-modified time (UTC)."""

    path: str
    size: int | None
    modified: datetime | None


def iter_listing(
    url: ObjectURL, prefix: str, fs_for: Callable[[ObjectURL], Any], *, page_size: int | None = None
) -> Iterator[ListedObject]:
    """The objects below ``url`` whose relative path starts with ``prefix``, in path order.
    ``fs_for`` builds the filesystem (only object stores need one). ``page_size``: blobs per request
    on Azure (default and most: 5000); the other stores take their own fixed page size."""
    if url.is_local:
        yield from _walk_sorted(url.path, prefix)
        return
    scheme = scheme_for(url.protocol)
    package = scheme.fsspec_package if scheme is not None else None
    fs = fs_for(url)
    if package == "s3fs":
        yield from _list_s3(fs, url, prefix)
    elif package == "gcsfs":
        yield from _list_gcs(fs, url, prefix)
    elif is_adlfs(fs):
        yield from azure_listing(fs, url, prefix, page_size or AZURE_PAGE_SIZE)
    else:
        yield from _list_find(fs, url, prefix)


def iter_listing_by_folder(
    url: ObjectURL, keep: Callable[[str], bool], fs_for: Callable[[ObjectURL], Any], *, ahead: int
) -> Iterator[ListedObject]:
    """The objects below ``url`` whose top-level name (a folder's or an object's) ``keep`` accepts, in
    path order: one look at the top level, then one listing per kept folder, with up to ``ahead`` folders
    after the current one listed concurrently (a few pages each: memory stays flat). A folder sorts as
    its name + "/", so the folders' listings, one after the other, are in path order."""
    from statectl.core.readahead import chained_ahead

    def folder(name: str) -> Callable[[], Iterator[list[ListedObject]]]:
        return lambda: _chunks(iter_listing(url, name, fs_for))

    kept = [(name, listed) for name, listed in top_level(url, fs_for) if keep(name.rstrip("/"))]
    entries = _split_folders(url, kept, fs_for, want=SPLIT_FACTOR * ahead) if ahead > 0 else kept
    for chunk in chained_ahead(_sources(entries, folder), ahead):
        yield from chunk


def _sources(
    entries: list[tuple[str, ListedObject | None]], folder: Callable[[str], Callable[[], Iterator[list[ListedObject]]]]
) -> Iterator[Callable[[], Iterator[list[ListedObject]]] | list[list[ListedObject]]]:
    """A listing to make per folder; the objects between folders, already listed, as ready chunks."""
    listed_run: list[ListedObject] = []
    for name, listed in entries:
        if listed is not None:
            listed_run.append(listed)
            continue
        if listed_run:
            yield list(_chunks(iter(listed_run)))
            listed_run = []
        yield folder(name)
    if listed_run:
        yield list(_chunks(iter(listed_run)))


# A few folders to list at once are not enough: go down a level (dag, run, task, map index), up to this many,
# until there are SPLIT_FACTOR x ``ahead`` folders, so that one big dag still lists in parallel.
SPLIT_DEPTH = 4
SPLIT_FACTOR = 4


def _split_folders(
    url: ObjectURL, entries: list[tuple[str, ListedObject | None]], fs_for: Callable[[ObjectURL], Any], want: int
) -> list[tuple[str, ListedObject | None]]:
    """The entries with folders replaced by their own entries (one look each), level by level, while
    fewer than ``want`` folders. Sorted, the names are in path order: a folder sorts as its name + "/"
    and holds a range of paths no other entry's name falls in."""
    for _ in range(SPLIT_DEPTH):
        if not 0 < sum(listed is None for _, listed in entries) < want:
            break
        folders = [name for name, listed in entries if listed is None]
        with ThreadPoolExecutor(max_workers=min(len(folders), want)) as pool:
            below = pool.map(lambda name: top_level(url.child(*name.rstrip("/").split("/")), fs_for), folders)
            expanded: list[tuple[str, ListedObject | None]] = [(n, o) for n, o in entries if o is not None]
            for name, children in zip(folders, below, strict=True):
                expanded.extend((name + child, child_listed) for child, child_listed in children)
        entries = sorted(expanded, key=lambda entry: entry[0])
    return entries


def _chunks(listed: Iterator[ListedObject], size: int = 1000) -> Iterator[list[ListedObject]]:
    """A listing in lists of ``size``: one hand-over between threads per list, not per object."""
    chunk: list[ListedObject] = []
    for item in listed:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def top_level(url: ObjectURL, fs_for: Callable[[ObjectURL], Any]) -> list[tuple[str, ListedObject | None]]:
    """The names directly below ``url`` in path order: a folder as its name + "/" with None, an object
    as its name with its listing entry."""
    entries: dict[str, ListedObject | None] = {}
    if url.is_local:
        try:
            with os.scandir(url.path) as found:
                for entry in found:
                    if entry.is_dir(follow_symlinks=False):
                        entries[entry.name + "/"] = None
                    elif entry.is_file(follow_symlinks=False):
                        st = entry.stat(follow_symlinks=False)
                        modified = datetime.fromtimestamp(st.st_mtime, tz=UTC)
                        entries[entry.name] = ListedObject(entry.path, st.st_size, modified)
        except (FileNotFoundError, NotADirectoryError):
            return []
    else:
        fs = fs_for(url)
        fs.invalidate_cache(url.path)  # a listing cached earlier in this process may be stale
        try:
            from statectl.stores.retry import retry_sync  # as every object store request (see _pages)

            infos: list[dict[str, Any]] = retry_sync(lambda: fs.ls(url.path, detail=True), f"listing {url}")
        except FileNotFoundError:
            return []
        root = url.path.rstrip("/") + "/"
        for info in infos:
            path = str(info["name"]).rstrip("/")
            if not path.startswith(root) or path == root.rstrip("/"):
                continue
            name = path[len(root) :]
            if info.get("type") == "directory":
                entries[name + "/"] = None
            else:
                entries[name] = ListedObject(path, info.get("size"), modified_from_info(info))
    return sorted(entries.items())


def _list_find(fs: Any, url: ObjectURL, prefix: str) -> Iterator[ListedObject]:
    found = fs.find(f"{url.path}/{prefix}".rstrip("/"), detail=True)
    for path in sorted(found):
        if path.startswith(f"{url.path}/{prefix}"):
            info = found[path]
            yield ListedObject(path, info.get("size"), modified_from_info(info))


def _pages(fs: Any, fetch_page: FetchPage) -> Iterator[list[Any]]:
    """Pages of a listing, one request each on the filesystem's own event loop; a page that fails
    transiently is asked for again (same token), as every object store request is."""
    from functools import partial

    from fsspec.asyn import sync

    from statectl.stores.retry import retry_async

    token: str | None = None
    pages = 0
    while True:
        pages += 1
        page, token = sync(fs.loop, retry_async, partial(fetch_page, fs, token), f"listing page {pages}")
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


def is_adlfs(fs: Any) -> bool:
    """Whether ``fs`` is adlfs's AzureBlobFileSystem (what Airflow's Azure provider builds)."""
    return any(cls.__module__.split(".")[0] == "adlfs" for cls in type(fs).__mro__)


def azure_listing(
    fs: Any, url: ObjectURL, prefix: str, page_size: int = AZURE_PAGE_SIZE, *, hierarchical: bool | None = None
) -> Iterator[ListedObject]:
    """The listing on Azure Blob Storage, in path order.

    A flat List Blobs returns blobs in lexicographic order of their names on accounts without a
    hierarchical namespace, but depth-first on those with one (ADLS Gen2: "a/x" before "a-b"), so
    there the listing goes one directory at a time. ``hierarchical``: None asks the account."""
    container, name_prefix = _split(url, prefix)
    try:
        if hierarchical is None:
            hierarchical = _hierarchical_namespace(fs, container)
        if hierarchical:
            directory, slash, leaf = name_prefix.rpartition("/")
            yield from _azure_walk(fs, container, directory + slash, leaf, page_size)
        else:
            for page in azure_pages(fs, url, prefix, page_size):
                yield from page
    except Exception as e:
        if type(e).__name__ == "ResourceNotFoundError":  # no such container: nothing listed
            raise FileNotFoundError(url.path) from None
        raise


def _hierarchical_namespace(fs: Any, container: str) -> bool:
    """Whether the account has a hierarchical namespace (Get Account Information; a container SAS may ask)."""
    from fsspec.asyn import sync

    async def ask() -> dict[str, Any]:
        async with fs.service_client.get_container_client(container) as cc:
            info: dict[str, Any] = await cc.get_account_information()
            return info

    try:
        answer = sync(fs.loop, ask)
    except Exception:  # not allowed to ask: list one directory at a time, right on any account
        return True
    return bool(answer.get("is_hns_enabled"))


def azure_pages(fs: Any, url: ObjectURL, prefix: str, page_size: int = AZURE_PAGE_SIZE) -> Iterator[list[ListedObject]]:
    """The flat listing, one page (one List Blobs request) at a time, in the order the service lists.

    Accounts with a hierarchical namespace also return their directories as entries with
    ``hdi_isfolder=true`` metadata; those, and folder markers named ``.../``, are no objects."""
    container, name_prefix = _split(url, prefix)

    async def fetch(fs: Any, token: str | None) -> tuple[list[Any], str | None]:
        async with fs.service_client.get_container_client(container) as cc:
            pages = cc.list_blobs(
                name_starts_with=name_prefix or None, include=["metadata"], results_per_page=page_size
            ).by_page(continuation_token=token)
            try:
                page = await pages.__anext__()
            except StopAsyncIteration:
                return [], None
            blobs = [blob async for blob in page]
            return blobs, pages.continuation_token

    for page in _pages(fs, fetch):
        yield [
            ListedObject(f"{container}/{blob.name}", blob.size, _as_utc(blob.last_modified))
            for blob in page
            if not _azure_directory(blob)
        ]


def _azure_walk(fs: Any, container: str, directory: str, leaf: str, page_size: int) -> Iterator[ListedObject]:
    """The objects below ``directory`` (``""`` or ending in "/") whose names there start with ``leaf``, in
    path order: one directory's entries held at a time (all its pages), a subdirectory sorting as its name
    + "/" (so "a-b" < "a/x" < "a0"), as :func:`_walk_sorted` does for local files."""

    async def fetch(fs: Any, token: str | None) -> tuple[list[Any], str | None]:
        async with fs.service_client.get_container_client(container) as cc:
            pages = cc.walk_blobs(
                name_starts_with=directory + leaf or None,
                include=["metadata"],
                delimiter="/",
                results_per_page=page_size,
            ).by_page(continuation_token=token)
            try:
                page = await pages.__anext__()
            except StopAsyncIteration:
                return [], None
            items = [item async for item in page]
            return items, pages.continuation_token

    entries: dict[str, ListedObject | None] = {}  # name -> the object, or None for a subdirectory ("x/")
    for page in _pages(fs, fetch):
        for item in page:
            if type(item).__name__ == "BlobPrefix":
                entries[item.name] = None
            elif not _azure_directory(item):
                entries[item.name] = ListedObject(f"{container}/{item.name}", item.size, _as_utc(item.last_modified))
    for name in sorted(entries):
        listed = entries[name]
        if listed is None:
            yield from _azure_walk(fs, container, name, "", page_size)
        else:
            yield listed


def _azure_directory(blob: Any) -> bool:
    if blob.name.endswith("/"):
        return True
    metadata = {str(k).lower(): str(v).lower() for k, v in (blob.metadata or {}).items()}
    return metadata.get("hdi_isfolder") == "true" or metadata.get("is_directory") == "true"


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
