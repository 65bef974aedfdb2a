"""Object storage through fsspec, reached the way a worker reaches it.

``file://`` uses fsspec's LocalFileSystem directly (what Airflow does too). Any other
scheme goes through Airflow's own ``attach(protocol, conn_id)``, so a ``conn_id`` in the URL
resolves through Airflow connections (``AIRFLOW_CONN_*``, secrets backends, the metadata
DB) to the very filesystem a worker builds. Reads and writes open the object exactly as the
provider does, so the bytes (codec framing included) are the provider's.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import hashlib
import inspect
import io
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

from statectl.errors import DataError, StatectlError, UnreachableError
from statectl.layout import ObjectURL

DEFAULT_CONCURRENCY = 16
MULTIPART_FROM = 100 * 2**20  # s3fs uploads at least twice its 50 MiB chunk size in parts
T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger(__name__)


class ObjectMissing(DataError):
    pass


class ObjectExists(DataError):
    """A create-if-absent write found something already at the path (nothing was written)."""


@dataclass(frozen=True)
class ListedObject:
    """One object of a listing: its filesystem path, size and last-modified time (UTC)."""

    path: str
    size: int | None
    modified: datetime | None


@dataclass(frozen=True)
class ObjectInfo:
    url: ObjectURL
    size: int | None
    exists: bool


def _unreachable(url: ObjectURL, e: Exception) -> UnreachableError:
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return UnreachableError(f"object storage {url.protocol}://{url.path.split('/')[0] or '/'}: {reason}")


class Buckets:
    """Filesystems per (protocol, conn_id), built once and shared by all operations."""

    def __init__(self, concurrency: int = DEFAULT_CONCURRENCY) -> None:
        self.concurrency = concurrency
        self._filesystems: dict[tuple[str, str | None], Any] = {}
        self._honours_if_absent: dict[tuple[str, str | None], bool] = {}
        self.notes: list[str] = []

    def fs(self, url: ObjectURL) -> Any:
        key = (url.protocol, url.conn_id)
        if key not in self._filesystems:
            self._filesystems[key] = self._build(url)
        return self._filesystems[key]

    def _build(self, url: ObjectURL) -> Any:
        if url.is_local:
            from fsspec.implementations.local import LocalFileSystem

            return LocalFileSystem()
        try:
            from airflow.sdk.io.store import attach
        except ImportError as e:  # pragma: no cover - Airflow is a dependency
            raise UnreachableError(f"cannot build a filesystem for {url.protocol}://: {e}") from None
        try:
            return attach(url.protocol, url.conn_id).fs
        except ValueError as e:
            if "No filesystem registered" not in str(e) or url.conn_id:
                raise _unreachable(url, e) from None
            # No Airflow provider registers this scheme: workers cannot use it either, but
            # fsspec's own filesystem (honouring e.g. STORAGE_EMULATOR_HOST) can still read it.
            import fsspec

            self.notes.append(f"no Airflow provider registers {url.protocol}://; used fsspec directly")
            return fsspec.filesystem(url.protocol)
        except StatectlError:
            raise
        except Exception as e:
            raise _unreachable(url, e) from None

    # -- single objects -------------------------------------------------------------
    def read_text(self, url: ObjectURL) -> str:
        """Read as the provider does: compression inferred from the suffix, UTF-8."""
        fs = self.fs(url)
        try:
            with fs.open(url.path, mode="rb", compression="infer") as f:
                data = f.read()
        except FileNotFoundError:
            raise ObjectMissing(f"object {url} does not exist (a worker reads None)") from None
        except StatectlError:
            raise
        except (OSError, EOFError, ValueError) as e:
            if isinstance(e, (ConnectionError, TimeoutError)) or "connect" in str(e).lower():
                raise _unreachable(url, e) from None
            raise DataError(f"object {url} does not decompress: {type(e).__name__}: {e}") from None
        except Exception as e:
            if type(e).__module__.split(".")[0] in ("lzma", "_lzma", "zlib", "gzip", "bz2", "zipfile"):
                raise DataError(f"object {url} does not decompress: {e}") from None
            raise _unreachable(url, e) from None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise DataError(f"object {url} is not UTF-8 text (wrong compression suffix?)") from None

    def write_text(self, url: ObjectURL, text: str, compression: str | None, *, if_absent: bool = False) -> None:
        """Write as the provider does, then read back and compare before anyone points to it.

        With ``if_absent`` nothing is written when an object is already there (ObjectExists);
        only local files here, object stores through write_many.
        """
        if if_absent and not url.is_local:
            raise StatectlError(f"{url.protocol}:// create-if-absent writes go through write_many")
        fs = self.fs(url)
        data = text.encode("utf-8")
        path = url.path
        try:
            if url.is_local:
                fs.makedirs(url.path.rsplit("/", 1)[0], exist_ok=True)
                # Killed mid-write, a file written in place is a truncated object a re-run takes for a
                # worker's write in flight: write beside it and rename over it (atomic). Object stores
                # publish an upload only once it is complete.
                path = f"{url.path}.statectl-{os.getpid()}-{threading.get_ident()}.tmp"
            # The codec wrapper fsspec returns for open(compression=...) does not close the file under
            # it: a remote upload would only commit when garbage-collected, after the read-back below.
            # Same codec callback and mode as fs.open(compression=...), so the bytes are the provider's.
            with fs.open(path, mode="wb") as raw:
                if compression:
                    from fsspec.compression import compr

                    # gzip records the file's name in its header: the object's, not the temporary file's.
                    named = {"filename": url.path} if compression == "gzip" and path != url.path else {}
                    with compr[compression](raw, mode="w", **named) as f:
                        f.write(data)
                else:
                    raw.write(data)
            if path != url.path and if_absent:
                try:
                    os.link(path, url.path)  # atomic, and refuses to replace an existing file
                except FileExistsError:
                    raise ObjectExists(f"object {url} already exists; nothing written") from None
                finally:
                    os.unlink(path)
            elif path != url.path:
                os.replace(path, url.path)
        except StatectlError:
            raise
        except Exception as e:
            if path != url.path:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            raise _unreachable(url, e) from None
        if self.read_text(url) != text:
            raise DataError(f"object {url} did not read back as written; the row was not changed")

    def stat(self, url: ObjectURL) -> ObjectInfo:
        fs = self.fs(url)
        try:
            info = fs.info(url.path)
        except FileNotFoundError:
            return ObjectInfo(url, None, False)
        except Exception as e:
            raise _unreachable(url, e) from None
        return ObjectInfo(url, info.get("size"), True)

    def stat_modified(self, url: ObjectURL) -> tuple[ObjectInfo, datetime | None]:
        """Existence, size and last-modified time (UTC, None if unknown) from one request."""
        fs = self.fs(url)
        try:
            info = fs.info(url.path)
        except FileNotFoundError:
            return ObjectInfo(url, None, False), None
        except Exception as e:
            raise _unreachable(url, e) from None
        return ObjectInfo(url, info.get("size"), True), _modified_from_info(info)

    def probe(self, url: ObjectURL) -> None:
        """Fail early if the store behind a base path cannot be reached (a listing, no writes)."""
        fs = self.fs(url)
        try:
            fs.exists(url.path)
        except StatectlError:
            raise
        except Exception as e:
            raise _unreachable(url, e) from None

    def modified(self, url: ObjectURL) -> datetime | None:
        """Last-modified time (UTC) as the filesystem reports it, or None if unknown."""
        try:
            info = self.fs(url).info(url.path)
        except Exception:
            return None
        return _modified_from_info(info)

    # -- listing --------------------------------------------------------------------
    def iter_listing(self, url: ObjectURL, prefix: str = "") -> Iterator[ListedObject]:
        """Every object below ``url`` whose path relative to it starts with ``prefix``, streamed in
        plain str order of the path (= UTF-8 byte order, the order object stores list keys in).

        Local files: a sorted walk that holds one directory's names per level. S3 / GCS: the
        paginated listing, page by page, with size and last-modified from the listing itself.
        """
        try:
            if url.is_local:
                yield from _walk_sorted(url.path, prefix)
            elif url.protocol in ("s3", "s3a"):
                yield from self._list_s3(url, prefix)
            elif url.protocol in ("gs", "gcs"):
                yield from self._list_gcs(url, prefix)
            else:
                # No streaming listing known for this store: fsspec's find() holds the whole listing.
                fs = self.fs(url)
                found = fs.find(f"{url.path}/{prefix}".rstrip("/"), detail=True)
                for path in sorted(found):
                    if path.startswith(f"{url.path}/{prefix}"):
                        info = found[path]
                        yield ListedObject(path, info.get("size"), _modified_from_info(info))
        except StatectlError:
            raise
        except FileNotFoundError:
            return
        except Exception as e:
            raise _unreachable(url, e) from None

    def _list_pages(self, url: ObjectURL, fetch_page: Callable[[Any, str | None], Awaitable[Any]]) -> Iterator[Any]:
        """Pages of a listing, one request each on the filesystem's loop (a page is at most 1000 keys)."""
        from fsspec.asyn import sync

        fs = self.fs(url)
        token: str | None = None
        while True:
            page, token = sync(fs.loop, fetch_page, fs, token)
            yield page
            if not token:
                return

    def _list_s3(self, url: ObjectURL, prefix: str) -> Iterator[ListedObject]:
        bucket, _, key = url.path.partition("/")
        key_prefix = f"{key}/{prefix}" if key else prefix

        async def fetch(fs: Any, token: str | None) -> tuple[list[dict[str, Any]], str | None]:
            kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": key_prefix, **getattr(fs, "req_kw", {})}
            if token:
                kwargs["ContinuationToken"] = token
            out = await fs._call_s3("list_objects_v2", **kwargs)
            return out.get("Contents", []), (out.get("NextContinuationToken") if out.get("IsTruncated") else None)

        for page in self._list_pages(url, fetch):
            for item in page:
                if not item["Key"].endswith("/"):  # folder markers some tools create are no objects
                    modified = item.get("LastModified")
                    yield ListedObject(f"{bucket}/{item['Key']}", item.get("Size"), _as_utc(modified))

    def _list_gcs(self, url: ObjectURL, prefix: str) -> Iterator[ListedObject]:
        bucket, _, key = url.path.partition("/")
        key_prefix = f"{key}/{prefix}" if key else prefix

        async def fetch(fs: Any, token: str | None) -> tuple[list[dict[str, Any]], str | None]:
            params: dict[str, Any] = {"prefix": key_prefix or None, "maxResults": 1000}
            if token:
                params["pageToken"] = token
            out = await fs._call("GET", "b/{}/o", bucket, json_out=True, **params)
            return out.get("items", []), out.get("nextPageToken")

        for page in self._list_pages(url, fetch):
            for item in page:
                if not item["name"].endswith("/"):
                    yield ListedObject(f"{bucket}/{item['name']}", int(item.get("size", 0)), _modified_from_info(item))

    # -- many objects ---------------------------------------------------------------
    def map(self, func: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        """Run I/O concurrently, in order, with a bounded number of items in flight."""
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            yield from pool.map(func, items)

    def _is_async(self, url: ObjectURL) -> bool:
        return not url.is_local and bool(getattr(self.fs(url), "async_impl", False))

    def _gather(self, fs: Any, coros: Sequence[Callable[[], Awaitable[Any]]]) -> list[Any]:
        """Run coroutines on the filesystem's own event loop (no thread per call), at most
        `concurrency` at a time; each result is the value or the exception raised."""
        from fsspec.asyn import sync

        limit = self.concurrency

        async def run_all() -> list[Any]:
            semaphore = asyncio.Semaphore(limit)

            async def one(make: Callable[[], Awaitable[Any]]) -> Any:
                async with semaphore:
                    return await make()

            return await asyncio.gather(*(one(c) for c in coros), return_exceptions=True)

        return sync(fs.loop, run_all)

    def _grouped(
        self,
        urls: Sequence[ObjectURL],
        sync_one: Callable[[int], R],
        async_group: Callable[[Any, list[int]], list[R]],
    ) -> list[R]:
        """Per filesystem: a thread pool for synchronous ones, one event loop for async ones."""
        results: list[Any] = [None] * len(urls)
        groups: dict[tuple[str, str | None], list[int]] = {}
        for index, url in enumerate(urls):
            groups.setdefault((url.protocol, url.conn_id), []).append(index)
        for indices in groups.values():
            first = urls[indices[0]]
            if self._is_async(first):
                outcomes = async_group(self.fs(first), indices)
            else:
                outcomes = list(self.map(sync_one, indices))
            for index, outcome in zip(indices, outcomes, strict=True):
                results[index] = outcome
        return results

    def read_many(self, urls: Sequence[ObjectURL]) -> list[str | DataError]:
        """Read objects as the provider does, concurrently: per URL its text, or the DataError
        (ObjectMissing included) that reading it raised. An unreachable store raises.

        On async filesystems (S3, GCS) one GET per object, all on the filesystem's event loop
        (fs.open would first send a HEAD, and on S3 a listing when the object is missing).
        """

        def read_group(fs: Any, indices: list[int]) -> list[str | DataError]:
            kwargs = _cat_kwargs(fs)
            fetched = self._gather(fs, [partial(fs._cat_file, urls[i].path, **kwargs) for i in indices])
            out: list[str | DataError] = []
            for index, data in zip(indices, fetched, strict=True):
                url = urls[index]
                if isinstance(data, FileNotFoundError):
                    out.append(ObjectMissing(f"object {url} does not exist (a worker reads None)"))
                elif isinstance(data, Exception):
                    raise _unreachable(url, data) from None
                elif isinstance(data, BaseException):
                    raise data
                else:
                    try:
                        out.append(_decode(url, data))
                    except DataError as e:
                        out.append(e)
            return out

        return self._grouped(urls, lambda i: self._read_or_error(urls[i]), read_group)

    def _read_or_error(self, url: ObjectURL) -> str | DataError:
        try:
            return self.read_text(url)
        except DataError as e:
            return e

    def modified_many(self, urls: Sequence[ObjectURL]) -> list[datetime | None]:
        """Last-modified times (None if unknown or missing), concurrently."""

        def stat_group(fs: Any, indices: list[int]) -> list[datetime | None]:
            infos = self._gather(fs, [partial(fs._info, urls[i].path) for i in indices])
            return [None if isinstance(info, BaseException) else _modified_from_info(info) for info in infos]

        return self._grouped(urls, lambda i: self.modified(urls[i]), stat_group)

    def write_many(
        self, objects: Sequence[tuple[ObjectURL, str]], compression: str | None, *, if_absent: bool = False
    ) -> list[StatectlError | None]:
        """Write objects as the provider does and verify each before anyone points to it.

        Per object: None when written and verified, else the error. On async filesystems the
        object's bytes are encoded here with the provider's codec (and checked to decode back
        to the text) and uploaded with one PUT; the checksum the store reports for it (S3 ETag
        in the PUT response, else a HEAD's ETag / GCS md5Hash) must be that of the bytes sent;
        a store that reports no checksum is read back in full and compared.

        ``if_absent``: write only where nothing is (ObjectExists otherwise), atomically. Pass it
        only for stores where :meth:`honours_if_absent` is true.
        """

        async def put_and_check(fs: Any, url: ObjectURL, text: str) -> StatectlError | None:
            try:
                # Compressing in a worker thread (zlib releases the GIL) keeps the loop's I/O going.
                payload = await asyncio.to_thread(_encode, url, text, compression)
            except DataError as e:
                return e
            # s3fs sends large objects in parts and drops the condition: check first (not atomic).
            if if_absent and len(payload) >= MULTIPART_FROM and await _exists(fs, url.path):
                return ObjectExists(f"object {url} already exists; nothing written")
            try:
                # The store checks the bytes it received (botocore sends a CRC32 checksum) and answers
                # with their checksum: when it does, that verifies the object without a HEAD.
                response = await fs._pipe_file(url.path, payload, **({"mode": "create"} if if_absent else {}))
            except FileExistsError:
                return ObjectExists(f"object {url} already exists; nothing written")
            same = _same_bytes(response, payload) if isinstance(response, dict) else None
            if same is None:
                same = _same_bytes(await fs._info(url.path), payload)
            if same is None:  # no checksum to compare: read it back
                same = _decode(url, await fs._cat_file(url.path, **_cat_kwargs(fs))) == text
            if not same:
                return DataError(f"object {url} did not read back as written; the row was not changed")
            return None

        def write_group(fs: Any, indices: list[int]) -> list[StatectlError | None]:
            outcomes = self._gather(fs, [partial(put_and_check, fs, *objects[i]) for i in indices])
            out: list[StatectlError | None] = []
            for index, outcome in zip(indices, outcomes, strict=True):
                if outcome is None or isinstance(outcome, StatectlError):
                    out.append(outcome)
                elif isinstance(outcome, Exception):
                    out.append(_unreachable(objects[index][0], outcome))
                else:
                    raise outcome
            return out

        urls = [url for url, _ in objects]
        return self._grouped(
            urls, lambda i: self._write_or_error(*objects[i], compression, if_absent=if_absent), write_group
        )

    def _write_or_error(
        self, url: ObjectURL, text: str, compression: str | None, *, if_absent: bool = False
    ) -> StatectlError | None:
        try:
            self.write_text(url, text, compression, if_absent=if_absent)
        except StatectlError as e:
            return e
        return None

    def honours_if_absent(self, base: ObjectURL) -> bool:
        """Whether create-if-absent writes are atomic on this store, from one probe under the base
        path (a create that must succeed, the same again that must be refused, then a delete):
        locally a hard link (which some FUSE mounts refuse), on object stores a conditional PUT.
        A store that ignores S3's If-None-Match would silently overwrite, so none is trusted untested."""
        # Local directories may sit on different filesystems: one probe per base path there.
        key = (base.protocol, base.path if base.is_local else base.conn_id)
        if key not in self._honours_if_absent:
            self._honours_if_absent[key] = self._probe_if_absent(base)
        return self._honours_if_absent[key]

    def _probe_if_absent(self, base: ObjectURL) -> bool:
        from uuid import uuid4

        from statectl.layout import reserved_url

        if not base.is_local and (
            not self._is_async(base) or "mode" not in inspect.signature(self.fs(base)._pipe_file).parameters
        ):
            return False
        probe = reserved_url(base, f"probe-{uuid4().hex}")
        try:
            first = self.write_many([(probe, "probe")], None, if_absent=True)[0]
            second = self.write_many([(probe, "probe again")], None, if_absent=True)[0]
        finally:
            self.delete_many([probe])
        if first is not None:
            log.debug("conditional create probe: %s", first)
        honoured = first is None and isinstance(second, ObjectExists)
        if not honoured:
            self.notes.append(f"{base.protocol}:// does not honour create-if-absent writes; checked before writing")
        return honoured

    def delete_many(self, urls: list[ObjectURL]) -> list[tuple[ObjectURL, str | None]]:
        """Delete objects (missing ones count as deleted); return (url, error or None)."""
        results: list[tuple[ObjectURL, str | None]] = []
        by_fs: dict[tuple[str, str | None], list[ObjectURL]] = {}
        for url in urls:
            by_fs.setdefault((url.protocol, url.conn_id), []).append(url)
        for group in by_fs.values():
            fs = self.fs(group[0])
            if group[0].is_local:
                results.extend(self.map(lambda u, fs=fs: (u, self._delete_one(fs, u)), group))
                continue
            # Object stores batch deletes (S3 takes 1000 keys a request).
            for start in range(0, len(group), 1000):
                chunk = group[start : start + 1000]
                try:
                    fs.rm([u.path for u in chunk])
                    results.extend((u, None) for u in chunk)
                except FileNotFoundError:
                    results.extend((u, self._delete_one(fs, u)) for u in chunk)
                except Exception as e:
                    results.extend((u, f"{type(e).__name__}: {e}") for u in chunk)
        return results

    @staticmethod
    def _delete_one(fs: Any, url: ObjectURL) -> str | None:
        try:
            fs.rm_file(url.path)
        except FileNotFoundError:
            return None
        except Exception as e:
            return f"{type(e).__name__}: {e}"
        return None


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


async def _exists(fs: Any, path: str) -> bool:
    try:
        await fs._info(path)
    except FileNotFoundError:
        return False
    return True


def _modified_from_info(info: dict[str, Any]) -> datetime | None:
    for key in ("LastModified", "mtime", "updated", "last_modified"):
        value = info.get(key)
        if isinstance(value, datetime):
            return value if value.tzinfo else value.replace(tzinfo=UTC)
        if isinstance(value, (int, float)):
            return datetime.fromtimestamp(value, tz=UTC)
        if isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def _cat_kwargs(fs: Any) -> dict[str, Any]:
    """s3fs sizes an object with a HEAD before a GET unless told to fetch it in one piece."""
    try:
        params = inspect.signature(fs._cat_file).parameters
    except (TypeError, ValueError):
        return {}
    return {"max_concurrency": 1} if "max_concurrency" in params else {}


class _Sink(io.BytesIO):
    """A buffer that behaves like a remote upload stream: the codec cannot close it, and it
    cannot seek (zipfile then writes data descriptors, exactly as on fsspec's upload files)."""

    def close(self) -> None:
        pass

    def seekable(self) -> bool:
        return False

    def seek(self, offset: int, whence: int = 0) -> int:
        raise OSError(errno.ESPIPE, "Seek only available in read mode")


def _encode(url: ObjectURL, text: str, compression: str | None) -> bytes:
    """The bytes the provider writes (same codec callback and mode as fs.open(compression=...)),
    checked to decode back to the text the way a worker reads them."""
    data = text.encode("utf-8")
    if compression:
        from fsspec.compression import compr

        sink = _Sink()
        with compr[compression](sink, mode="w") as f:
            f.write(data)
        data = sink.getvalue()
    if _decode(url, data) != text:
        raise DataError(f"object {url} does not decode back to its value with {compression}; nothing written")
    return data


def _decode(url: ObjectURL, data: bytes) -> str:
    """What a worker reads from these bytes: compression inferred from the suffix, UTF-8."""
    from fsspec.utils import infer_compression

    compression = infer_compression(url.path)
    if compression:
        from fsspec.compression import compr

        try:
            with compr[compression](io.BytesIO(data), mode="rb") as f:
                data = f.read()
        except Exception as e:
            raise DataError(f"object {url} does not decompress: {type(e).__name__}: {e}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"object {url} is not UTF-8 text (wrong compression suffix?)") from None


def _same_bytes(info: dict[str, Any], payload: bytes) -> bool | None:
    """Whether the stored object is these bytes, by size and checksum; None if no checksum."""
    if info.get("size") is not None and int(info["size"]) != len(payload):
        return False
    etag = str(info.get("ETag") or info.get("etag") or "").strip('"')
    if len(etag) == 32 and all(c in "0123456789abcdefABCDEF" for c in etag):  # single-part S3 upload: MD5
        return etag.lower() == hashlib.md5(payload, usedforsecurity=False).hexdigest()
    md5_b64 = info.get("md5Hash")  # GCS
    if isinstance(md5_b64, str) and md5_b64:
        return base64.b64decode(md5_b64) == hashlib.md5(payload, usedforsecurity=False).digest()
    return None
