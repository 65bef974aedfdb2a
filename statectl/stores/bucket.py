"""Object storage through fsspec, reached the way a worker reaches it.

``file://`` uses fsspec's LocalFileSystem directly (what Airflow does too). Any other
scheme goes through Airflow's own ``attach(protocol, conn_id)``, so a ``conn_id`` in the URL
resolves through Airflow connections (``AIRFLOW_CONN_*``, secrets backends, the metadata
DB) to the very filesystem a worker builds.

One bytes codec (:func:`encode_object` / :func:`decode_object`) makes and reads the provider's
bytes, codec framing included; one read path and one write path use it for every store. Batch
calls answer per object with a :data:`Result`: the value, or the error for that object. A store
that cannot be reached at all raises instead. Every request to an object store is retried on
transient failures (throttling, 5xx, dropped connections, timeouts) by :mod:`statectl.stores.retry`;
one still failing after its last try is that object's error (TransientFailure).
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
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar, Union

from statectl.core.config import DEFAULT_CONCURRENCY
from statectl.core.layout import ObjectURL, reserved_url
from statectl.errors import ConfigError, DataError, StatectlError, UnreachableError
from statectl.stores import schemes
from statectl.stores.retry import (
    TRANSIENT_CODES,
    TransientFailure,
    describe,
    retry_async,
    retry_sync,
)

if TYPE_CHECKING:
    from statectl.stores.listing import ListedObject

MULTIPART_FROM = 100 * 2**20  # s3fs uploads at least twice its 50 MiB chunk size in parts
DELETE_BATCH = 1000  # S3 deletes up to 1000 keys per request
AZURE_BLOCKS_FROM = 64 * 2**20 + 1  # azure-storage-blob uploads more than 64 MiB (max_single_put_size) in blocks
T = TypeVar("T")
R = TypeVar("R")
# What a batch call did for one object: its value, or the error that object met.
Result = Union[T, StatectlError]  # noqa: UP007 - a generic alias needs Union at runtime on 3.11

log = logging.getLogger(__name__)

__all__ = ["Buckets", "ObjectExists", "ObjectInfo", "ObjectMissing", "Result"]


class ObjectMissing(DataError):
    pass


class ObjectExists(DataError):
    """A create-if-absent write found something already at the path (nothing was written)."""


@dataclass(frozen=True)
class ObjectInfo:
    url: ObjectURL
    size: int | None
    exists: bool
    modified: datetime | None = None  # UTC, None if unknown


def _unreachable(url: ObjectURL, e: BaseException) -> UnreachableError:
    return UnreachableError(f"object storage {url.protocol}://{url.path.split('/')[0] or '/'}: {describe(e)}")


def _missing(url: ObjectURL) -> ObjectMissing:
    return ObjectMissing(f"object {url} does not exist (a worker reads None)")


def _exists_error(url: ObjectURL) -> ObjectExists:
    return ObjectExists(f"object {url} already exists; nothing written")


class Buckets:
    """Filesystems per (protocol, conn_id), built once and shared by all operations."""

    def __init__(self, concurrency: int = DEFAULT_CONCURRENCY) -> None:
        self.concurrency = concurrency
        self._filesystems: dict[tuple[str, str | None], Any] = {}
        self._honours_if_absent: dict[tuple[str, str | None], bool] = {}
        self._building = threading.Lock()  # a batch read ahead in a thread may need a filesystem first

    def fs(self, url: ObjectURL) -> Any:
        key = (url.protocol, url.conn_id)
        if key not in self._filesystems:
            with self._building:
                if key not in self._filesystems:
                    self._filesystems[key] = self._build(url)
        return self._filesystems[key]

    def _build(self, url: ObjectURL) -> Any:
        if url.is_local:
            from fsspec.implementations.local import LocalFileSystem

            return LocalFileSystem()
        scheme = schemes.require_provider(url.protocol)  # a missing provider is a configuration error
        try:
            from airflow.sdk.io.store import attach
        except ImportError as e:  # pragma: no cover - Airflow is a dependency
            raise UnreachableError(f"cannot build a filesystem for {url.protocol}://: {e}") from None
        if url.conn_id and scheme is not None:
            _check_connection(url)
        try:
            fs = attach(url.protocol, url.conn_id).fs
        except ValueError as e:
            if "No filesystem registered" not in str(e) or url.conn_id:
                raise _unreachable(url, e) from None
            # No Airflow provider registers this scheme: workers cannot use it either, but
            # fsspec's own filesystem can still read it.
            import fsspec

            log.warning("no Airflow provider registers %s://; used fsspec directly", url.protocol)
            return fsspec.filesystem(url.protocol)
        except ImportError as e:
            hint = f": {scheme.install_hint()}" if scheme is not None else ""
            raise ConfigError(f"{url.protocol}:// cannot be used, {e.name or e} is not importable{hint}") from None
        except StatectlError:
            raise
        except Exception as e:
            raise _unreachable(url, e) from None
        own_retries(fs)
        fast_timestamps(fs)
        return fs

    def _is_async(self, url: ObjectURL) -> bool:
        return not url.is_local and bool(getattr(self.fs(url), "async_impl", False))

    # -- single objects: a batch of one ---------------------------------------------------
    def read_text(self, url: ObjectURL) -> str:
        """Read as the provider does: compression inferred from the suffix, UTF-8."""
        return _value(self.read_many([url])[0])

    def write_text(self, url: ObjectURL, text: str, compression: str | None, *, if_absent: bool = False) -> None:
        """Write as the provider does, verified before anyone points to it (see write_many)."""
        error = self.write_many([(url, text)], compression, if_absent=if_absent)[0]
        if error is not None:
            raise error

    def stat(self, url: ObjectURL) -> ObjectInfo:
        """Existence, size and last-modified time from one request."""
        return _value(self.stat_many([url])[0])

    def probe(self, url: ObjectURL) -> None:
        """Fail early if the store behind a base path cannot be reached (a listing, no writes)."""
        fs = self.fs(url)
        try:
            _remote_sync(url, partial(fs.exists, url.path))
        except StatectlError:
            raise
        except Exception as e:
            raise _unreachable(url, e) from None

    # -- listing --------------------------------------------------------------------
    def iter_listing(self, url: ObjectURL, prefix: str = "") -> Iterator[ListedObject]:
        """Every object below ``url`` whose path relative to it starts with ``prefix``, streamed in
        plain str order of the path (see :mod:`statectl.stores.listing`)."""
        from statectl.stores import listing  # only scans list: simple commands do without it

        yield from self._listed(url, listing.iter_listing(url, prefix, self.fs))

    def iter_listing_by_folder(self, url: ObjectURL, keep: Callable[[str], bool]) -> Iterator[ListedObject]:
        """Every object below ``url`` whose top-level name ``keep`` accepts, in path order; object stores
        list several folders at once (:func:`statectl.stores.listing.iter_listing_by_folder`)."""
        from statectl.stores import listing

        ahead = 0 if url.is_local else self.concurrency  # a local walk waits on nothing worth overlapping
        yield from self._listed(url, listing.iter_listing_by_folder(url, keep, self.fs, ahead=ahead))

    @staticmethod
    def _listed(url: ObjectURL, listed: Iterator[ListedObject]) -> Iterator[ListedObject]:
        try:
            yield from listed
        except StatectlError:
            raise
        except FileNotFoundError:
            return
        except Exception as e:
            raise _unreachable(url, e) from None

    # -- many objects ---------------------------------------------------------------
    def map(self, func: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        """Run I/O concurrently, in order, with a bounded number of items in flight."""
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            yield from pool.map(func, items)

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

        results: list[Any] = sync(fs.loop, run_all)
        return results

    def _grouped(
        self,
        urls: Sequence[ObjectURL],
        sync_one: Callable[[int], R],
        async_one: Callable[[Any, int], Awaitable[R]],
    ) -> list[R]:
        """Per filesystem: a thread pool for synchronous ones, the filesystem's event loop for async
        ones. An exception escaping ``async_one`` is re-raised here (the store is unreachable)."""
        results: list[Any] = [None] * len(urls)
        groups: dict[tuple[str, str | None], list[int]] = {}
        for index, url in enumerate(urls):
            groups.setdefault((url.protocol, url.conn_id), []).append(index)
        for indices in groups.values():
            first = urls[indices[0]]
            if self._is_async(first):
                fs = self.fs(first)
                outcomes = self._gather(fs, [partial(async_one, fs, i) for i in indices])
                for index, outcome in zip(indices, outcomes, strict=True):
                    if isinstance(outcome, StatectlError) or not isinstance(outcome, BaseException):
                        continue
                    if isinstance(outcome, Exception):
                        raise _unreachable(urls[index], outcome) from None
                    raise outcome
            elif len(indices) == 1:
                outcomes = [sync_one(indices[0])]  # one object: no thread pool to start and join
            else:
                outcomes = list(self.map(sync_one, indices))
            for index, outcome in zip(indices, outcomes, strict=True):
                results[index] = outcome
        return results

    def read_many(self, urls: Sequence[ObjectURL]) -> list[Result[str]]:
        """Read objects as the provider does, concurrently: per URL its text, or the DataError
        (ObjectMissing included) met reading it, or TransientFailure. An unreachable store raises.

        On async filesystems (S3, GCS) one GET per object (fs.open would first send a HEAD, and
        on S3 a listing when the object is missing)."""
        return [r if isinstance(r, StatectlError) else r[0] for r in self.read_many_stored(urls)]

    def read_many_stored(self, urls: Sequence[ObjectURL]) -> list[Result[tuple[str, bytes]]]:
        """:meth:`read_many`, with each object's stored bytes beside its text."""

        def read_one(index: int) -> Result[tuple[str, bytes]]:
            url = urls[index]
            fs = self.fs(url)
            try:
                data = _remote_sync(url, partial(fs.cat_file, url.path))
            except FileNotFoundError:
                return _missing(url)
            except IsADirectoryError:
                return DataError(f"object {url} is a directory, not an object")
            except TransientFailure as e:
                return e
            except StatectlError:
                raise
            except Exception as e:
                raise _unreachable(url, e) from None
            return _with_bytes(_decoded(url, data), data)

        async def read_async(fs: Any, index: int) -> Result[tuple[str, bytes]]:
            url = urls[index]
            try:
                data = await retry_async(partial(fs._cat_file, url.path, **_cat_kwargs(fs)), str(url))
            except FileNotFoundError:
                return _missing(url)
            return _with_bytes(_decoded(url, data), data)

        return self._grouped(urls, read_one, read_async)

    def stat_many(self, urls: Sequence[ObjectURL]) -> list[Result[ObjectInfo]]:
        """Existence, size and last-modified time per object, concurrently (one request each)."""

        from statectl.stores.listing import modified_from_info

        def info(url: ObjectURL, answer: dict[str, Any]) -> ObjectInfo:
            return ObjectInfo(url, answer.get("size"), True, modified_from_info(answer))

        def stat_one(index: int) -> Result[ObjectInfo]:
            url = urls[index]
            fs = self.fs(url)
            try:
                return info(url, _remote_sync(url, partial(fs.info, url.path)))
            except FileNotFoundError:
                return ObjectInfo(url, None, False)
            except StatectlError as e:
                return e
            except Exception as e:
                return _unreachable(url, e)

        async def stat_async(fs: Any, index: int) -> Result[ObjectInfo]:
            url = urls[index]
            try:
                return info(url, await retry_async(partial(_fresh_info, fs, url.path), str(url)))
            except FileNotFoundError:
                return ObjectInfo(url, None, False)
            except StatectlError as e:
                return e
            except Exception as e:
                return _unreachable(url, e)

        return self._grouped(urls, stat_one, stat_async)

    def write_many(
        self,
        objects: Sequence[tuple[ObjectURL, str]],
        compression: str | None,
        *,
        if_absent: bool = False,
        payloads: Sequence[bytes | None] = (),
    ) -> list[Result[None]]:
        """Write objects as the provider does and verify each before anyone points to it.

        Per object: None when written and verified, else the error. The object's bytes are
        encoded here with the provider's codec (and checked to decode back to the text). Local
        files are written beside the target and renamed over it (a kill never leaves a truncated
        object), then read back and compared. Object stores get one PUT; the checksum the store
        reports for it (S3 ETag or Azure Content-MD5 in the PUT response, else a HEAD's ETag / GCS
        md5Hash / Azure content_md5) must be that of the bytes sent; a store that reports no checksum
        is read back and compared.

        ``if_absent``: write only where nothing is (ObjectExists otherwise), atomically. Pass it
        only where :meth:`honours_if_absent` is true (local files: always atomic). On an object store,
        an object found holding exactly these bytes counts as written: a try of this write whose
        answer was lost may have created it (the condition then refuses the next try).

        ``payloads[i]``, when given and not None: the bytes to write for ``objects[i]`` as they are,
        already encoded with ``compression`` (a copy of a stored object); verified the same way.
        """

        def encoded(index: int, *, local: bool, verify: bool = True) -> bytes:
            url, text = objects[index]
            if index < len(payloads) and (payload := payloads[index]) is not None:
                return payload
            return encode_object(url, text, compression, local=local, verify=verify)

        def write_one(index: int) -> Result[None]:
            url, text = objects[index]
            # Written first, verified after: a local object that does not decode back is where a worker
            # would have put the same bytes, and the read-back refuses it before any row points to it.
            payload = encoded(index, local=url.is_local, verify=False)
            if url.is_local:
                error = _write_local(url, payload, if_absent)
            else:
                error = _write_sync(self.fs(url), url, payload, if_absent)
            return error if error is not None else _decoded_as(url, payload, text)

        async def put_and_check(fs: Any, index: int) -> Result[None]:
            try:
                return await put(fs, index)
            except StatectlError as e:  # TransientFailure: tried and tried again
                return e
            except Exception as e:  # e.g. a store that refuses the conditional header: this object failed
                return _unreachable(objects[index][0], e)

        async def put(fs: Any, index: int) -> Result[None]:
            url = objects[index][0]
            try:
                # Compressing in a worker thread (zlib releases the GIL) keeps the loop's I/O going.
                payload = await asyncio.to_thread(partial(encoded, index, local=False))
            except DataError as e:
                return e
            conditional = _if_absent_kwargs(fs) if if_absent else {}
            # s3fs sends large objects in parts and drops the condition, and a filesystem without a
            # create-if-absent keyword has none to send: check first (not atomic).
            checked_first = conditional is None or ("mode" in conditional and len(payload) >= MULTIPART_FROM)
            if if_absent and checked_first and await retry_async(partial(_exists, fs, url.path), str(url)):
                return _exists_error(url)
            try:
                # The store checks the bytes it received (botocore sends a CRC32 checksum) and answers
                # with their checksum: when it does, that verifies the object without a HEAD.
                send = partial(fs._pipe_file, url.path, payload, **(conditional or {}))
                response = await retry_async(send, str(url))
            except Exception as e:
                if not _already_exists(e):
                    raise
                # Refused because something is there: maybe this very write, sent again after its answer was
                # lost (by statectl, botocore or aiohttp, which resends a PUT on a dropped keep-alive connection
                # unseen). The same bytes count as written: the caller finds what it wanted at the path.
                return None if await _holds(fs, url, payload) else _exists_error(url)
            if _is_adlfs(fs) and len(payload) >= AZURE_BLOCKS_FROM:
                response = None  # a block upload answers with the Content-MD5 of its block list, not of the blob
            same = _same_bytes(response, payload) if isinstance(response, dict) else None
            return None if same or (same is None and await _holds(fs, url, payload)) else _not_as_written(url)

        return self._grouped([url for url, _ in objects], write_one, put_and_check)

    def delete_many(self, urls: Sequence[ObjectURL]) -> list[Result[None]]:
        """Delete objects (a missing one counts as deleted); per URL None, or the error."""
        results: list[Result[None]] = [None] * len(urls)
        groups: dict[tuple[str, str | None], list[int]] = {}
        for index, url in enumerate(urls):
            groups.setdefault((url.protocol, url.conn_id), []).append(index)
        for indices in groups.values():
            fs = self.fs(urls[indices[0]])
            if urls[indices[0]].is_local:
                errors = self.map(partial(_delete_at, fs, urls), indices)
                for index, error in zip(indices, errors, strict=True):
                    results[index] = error
                continue
            if _is_adlfs(fs):
                # Azure deletes one blob a request: concurrently on adlfs's loop, each answering for itself
                # (its rm() checks every path first, one after another, and answers for the whole batch).
                outcomes = self._gather(fs, [partial(_delete_async, fs, urls[i]) for i in indices])
                for index, outcome in zip(indices, outcomes, strict=True):
                    if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
                        raise outcome
                    results[index] = _delete_error(outcome) if isinstance(outcome, Exception) else None
                continue
            # Object stores batch deletes (S3 takes 1000 keys a request).
            for start in range(0, len(indices), DELETE_BATCH):
                chunk = indices[start : start + DELETE_BATCH]
                if _is_s3fs(fs):
                    answers = _sync(fs, partial(_delete_s3, fs, [urls[i] for i in chunk]))
                    for index, answer in zip(chunk, answers, strict=True):
                        results[index] = answer
                    continue
                # fs.rm expands glob characters: a path with one goes alone, as itself.
                literal = [i for i in chunk if not _has_magic(urls[i].path)]
                for i in set(chunk).difference(literal):
                    results[i] = _delete_one(fs, urls[i])
                if not literal:
                    continue
                try:
                    retry_sync(partial(fs.rm, [urls[i].path for i in literal]), f"deleting {len(literal)} objects")
                except FileNotFoundError:
                    for i in literal:
                        results[i] = _delete_one(fs, urls[i])
                except Exception as e:
                    for i in literal:
                        results[i] = _delete_error(e)
        return results

    # -- create-if-absent ---------------------------------------------------------------
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

        if not base.is_local and (not self._is_async(base) or _if_absent_kwargs(self.fs(base)) is None):
            return False
        probe = reserved_url(base, f"probe-{uuid4().hex}")
        try:
            first = self.write_many([(probe, "probe")], None, if_absent=True)[0]
            second = self.write_many([(probe, "probe again")], None, if_absent=True)[0]
        finally:
            left = self.delete_many([probe])[0]
            if left is not None:  # a reserved name: nothing takes it for state, prune never touches it
                log.warning("could not delete the probe object %s (%s); it is harmless", probe, left.message)
        for answer in (first, second):
            if isinstance(answer, TransientFailure):
                raise answer  # no answer, so no verdict (and none remembered): the operation stops (exit 8)
        if first is not None:
            log.debug("conditional create probe: %s", first)
        honoured = first is None and isinstance(second, ObjectExists)
        if not honoured:
            log.debug("%s:// does not honour create-if-absent writes; checked before writing", base.protocol)
        return honoured


def modified_or_none(result: Result[ObjectInfo]) -> datetime | None:
    """The last-modified time a stat_many answer gives; None if unknown, missing or unreadable."""
    return None if isinstance(result, StatectlError) or not result.exists else result.modified


def _check_connection(url: ObjectURL) -> None:
    """The base path's connection exists and is of a type the scheme's filesystem reads."""
    from airflow.sdk import Connection

    assert url.conn_id is not None
    try:
        conn = Connection.get(url.conn_id)
    except Exception as e:
        if type(e).__name__ != "AirflowNotFoundException":
            raise _unreachable(url, e) from None
        raise ConfigError(
            f"connection {url.conn_id!r} (from {url.protocol}://{url.conn_id}@...) is not defined here: set "
            f"{schemes.connection_env_var(url.conn_id)}, or add it to the metadata DB or a secrets backend"
        ) from None
    schemes.require_connection_type(url.protocol, url.conn_id, conn.conn_type)


def _value(result: Result[T]) -> T:
    """The value of a batch of one, or its error raised."""
    if isinstance(result, StatectlError):
        raise result
    return result


def _write_local(url: ObjectURL, payload: bytes, if_absent: bool) -> Result[None]:
    # Killed mid-write, a file written in place is a truncated object a re-run takes for a worker's
    # write in flight: write beside it and rename over it (atomic), or link it (refuses to replace).
    temporary = f"{url.path}.statectl-{os.getpid()}-{threading.get_ident()}.tmp"
    try:
        os.makedirs(url.path.rsplit("/", 1)[0], exist_ok=True)
        with open(temporary, "wb") as f:
            f.write(payload)
        if if_absent:
            try:
                os.link(temporary, url.path)
            except FileExistsError:
                return _exists_error(url)
            finally:
                os.unlink(temporary)
        else:
            os.replace(temporary, url.path)
        with open(url.path, "rb") as f:
            written = f.read()
    except Exception as e:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        return _unreachable(url, e)
    return None if written == payload else _not_as_written(url)


def _write_sync(fs: Any, url: ObjectURL, payload: bytes, if_absent: bool) -> Result[None]:
    """Another synchronous filesystem: create-if-absent is checked first (not atomic)."""
    what = str(url)
    try:
        if if_absent and retry_sync(partial(fs.exists, url.path), what):
            return _exists_error(url)
        retry_sync(partial(fs.pipe_file, url.path, payload), what)
        written = retry_sync(partial(fs.cat_file, url.path), what)
    except StatectlError as e:
        return e
    except Exception as e:
        return _unreachable(url, e)
    return None if written == payload else _not_as_written(url)


def _remote_sync(url: ObjectURL, call: Callable[[], T]) -> T:
    """``call()`` on a synchronous filesystem: retried on transient failures unless the files are local."""
    return call() if url.is_local else retry_sync(call, str(url))


def _sync(fs: Any, make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine on the filesystem's own event loop, from this thread."""
    from fsspec.asyn import sync

    result: T = sync(fs.loop, make)
    return result


def _delete_at(fs: Any, urls: Sequence[ObjectURL], index: int) -> Result[None]:
    return _delete_one(fs, urls[index])


def _delete_one(fs: Any, url: ObjectURL) -> Result[None]:
    try:
        _remote_sync(url, partial(fs.rm_file, url.path))
    except FileNotFoundError:
        return None
    except Exception as e:
        return _delete_error(e)
    return None


async def _delete_async(fs: Any, url: ObjectURL) -> None:
    with contextlib.suppress(FileNotFoundError):  # a missing object counts as deleted
        await retry_async(partial(fs._rm_file, url.path), str(url))


class _KeysNotDeleted(Exception):
    """Keys a DeleteObjects answer listed as not deleted for a transient reason (S3 answers per key); the
    answer's code makes it transient to the retry policy, and the next try sends only those keys."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.response = {"Error": {"Code": code, "Message": message}}


async def _delete_s3(fs: Any, urls: Sequence[ObjectURL]) -> list[Result[None]]:
    """Delete up to 1000 objects with one DeleteObjects request per bucket (a missing key counts as deleted).

    Keys go as they are: s3fs's rm() expands glob characters (``a[bc]`` deletes ``ab`` and ``ac``, not
    itself). Its bulk delete also drops the per-key errors of the answer (e.g. InternalError or SlowDown for
    some keys of a request that succeeded): here each is that object's error, the transient ones sent again."""
    results: list[Result[None]] = [None] * len(urls)
    by_bucket: dict[str, dict[str, int]] = {}  # bucket -> key -> index
    for index, url in enumerate(urls):
        bucket, _, key = url.path.partition("/")
        by_bucket.setdefault(bucket, {})[key] = index
    for bucket, keys in by_bucket.items():
        pending = dict(keys)  # the keys not yet answered for: each try sends these

        async def attempt(bucket: str = bucket, pending: dict[str, int] = pending) -> None:
            delete = {"Objects": [{"Key": key} for key in pending], "Quiet": True}
            answer = await fs._call_s3("delete_objects", Bucket=bucket, Delete=delete)
            failed = {str(e.get("Key")): (str(e.get("Code")), str(e.get("Message"))) for e in answer.get("Errors", [])}
            for key, index in list(pending.items()):
                code, message = failed.get(key, ("", ""))
                if code in TRANSIENT_CODES:
                    continue  # sent again
                del pending[key]
                results[index] = (
                    UnreachableError(f"object {urls[index]} was not deleted: {code}: {message}") if code else None
                )
            if pending:
                raise _KeysNotDeleted(*failed[next(iter(pending))])

        try:
            await retry_async(attempt, f"deleting {len(keys)} objects in s3://{bucket}")
        except Exception as e:
            for index in pending.values():
                results[index] = _delete_error(e)
        for key in keys:
            fs.invalidate_cache(f"{bucket}/{key}")
    return results


def _delete_error(e: Exception) -> StatectlError:
    return e if isinstance(e, StatectlError) else UnreachableError(f"{type(e).__name__}: {e}")


def _has_magic(path: str) -> bool:
    """Whether fsspec would take the path for a glob pattern."""
    return any(c in path for c in "*?[")


def _not_as_written(url: ObjectURL) -> DataError:
    return DataError(f"object {url} did not read back as written; the row was not changed")


async def _holds(fs: Any, url: ObjectURL, payload: bytes) -> bool:
    """Whether the object at ``url`` is these bytes: by the checksum its HEAD reports, else read back."""
    what = str(url)
    try:
        same = _same_bytes(await retry_async(partial(_fresh_info, fs, url.path), what), payload)
        if same is None:  # no checksum to compare: read it back
            same = await retry_async(partial(fs._cat_file, url.path, **_cat_kwargs(fs)), what) == payload
    except FileNotFoundError:
        return False
    return same


async def _exists(fs: Any, path: str) -> bool:
    try:
        await _fresh_info(fs, path)
    except FileNotFoundError:
        return False
    return True


async def _fresh_info(fs: Any, path: str) -> dict[str, Any]:
    """``fs._info(path)`` from the store. adlfs answers from its listing cache when it holds the parent's
    listing (the filesystem is shared with everything in the process that used the connection): that may
    be an object since deleted or rewritten, with another size and checksum."""
    answer: dict[str, Any] = await (fs._info(path, refresh=True) if _is_adlfs(fs) else fs._info(path))
    return answer


def _if_absent_kwargs(fs: Any) -> dict[str, Any] | None:
    """The keyword that makes this filesystem's ``_pipe_file`` a create-if-absent (conditional) PUT, or
    None when it has none: s3fs and gcsfs take ``mode="create"``, adlfs ``overwrite=False`` (Azure's
    If-None-Match: *). Whether the store behind it honours the condition is for the probe to find out."""
    try:
        params = inspect.signature(fs._pipe_file).parameters
    except (TypeError, ValueError):
        return None
    if "mode" in params:
        return {"mode": "create"}
    if "overwrite" in params:
        return {"overwrite": False}
    return None


def _is_s3fs(fs: Any) -> bool:
    return type(fs).__module__.split(".")[0] == "s3fs"


def own_retries(fs: Any) -> None:
    """Leave retrying to statectl (and to botocore below it) on an s3fs filesystem: s3fs's own loop multiplies
    botocore's tries for the errors it retries (125 sends of a GET that times out) and ignores the others
    (see :mod:`statectl.stores.retry`). statectl alone uses the filesystem in its process."""
    if _is_s3fs(fs) and isinstance(getattr(fs, "retries", None), int):
        fs.retries = 1


def fast_timestamps(fs: Any) -> None:
    """botocore parses every timestamp of an answer with dateutil, 70 us each: 70 ms of CPU per 1000-key
    listing page, half of what a listing costs the client. An s3fs filesystem's client reads ISO 8601 with
    ``datetime.fromisoformat`` (0.3 us) and leaves anything else (an HTTP date header) to botocore's parser."""
    if not _is_s3fs(fs):
        return
    try:
        from botocore.parsers import DEFAULT_TIMESTAMP_PARSER  # type: ignore[import-untyped]

        # The endpoint of the client s3fs uses from now on (made here, not on first use) makes a parser per
        # answer from this factory.
        factory = fs.connect()._endpoint._response_parser_factory
        botocore_parse = factory._defaults.get("timestamp_parser") or DEFAULT_TIMESTAMP_PARSER
        factory.set_parser_defaults(timestamp_parser=partial(parse_timestamp, botocore_parse))
    except Exception:  # another botocore: its own parser stays
        log.debug("botocore's timestamp parser left as it is", exc_info=True)


def parse_timestamp(fallback: Callable[[Any], datetime], value: Any) -> datetime:
    if isinstance(value, str) and len(value) >= 20 and value[10] == "T":
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(value)
    return fallback(value)


def _is_adlfs(fs: Any) -> bool:
    from statectl.stores.listing import is_adlfs

    return is_adlfs(fs)


def _already_exists(e: BaseException) -> bool:
    """A conditional PUT refused because something is at the path: fsspec's FileExistsError, or Azure's
    409 BlobAlreadyExists (ResourceExistsError) / 412 ConditionNotMet (the If-None-Match: * failed)."""
    if isinstance(e, FileExistsError):
        return True
    code = str(getattr(e, "error_code", "") or "")
    return type(e).__name__ == "ResourceExistsError" or code in ("BlobAlreadyExists", "ConditionNotMet")


def _cat_kwargs(fs: Any) -> dict[str, Any]:
    """s3fs sizes an object with a HEAD before a GET unless told to fetch it in one piece."""
    try:
        params = inspect.signature(fs._cat_file).parameters
    except (TypeError, ValueError):
        return {}
    return {"max_concurrency": 1} if "max_concurrency" in params else {}


# -- the bytes codec ---------------------------------------------------------------------


class _Sink(io.BytesIO):
    """A buffer the codec cannot close. Like a remote upload stream it cannot seek (zipfile then
    writes data descriptors, exactly as on fsspec's upload files); like a local file it can."""

    def __init__(self, seekable: bool) -> None:
        super().__init__()
        self._seekable = seekable

    def close(self) -> None:
        pass

    def seekable(self) -> bool:
        return self._seekable

    def seek(self, offset: int, whence: int = 0) -> int:
        if not self._seekable:
            raise OSError(errno.ESPIPE, "Seek only available in read mode")
        return super().seek(offset, whence)


def encode_object(
    url: ObjectURL, text: str, compression: str | None, *, local: bool = False, verify: bool = True
) -> bytes:
    """The bytes the provider writes for ``text`` at ``url`` (same codec callback and mode as
    fs.open(compression=...)), checked to decode back to the text the way a worker reads them
    (``verify``; DataError otherwise).

    ``local``: as on a local file, which can seek and whose name gzip records in its header."""
    data = text.encode("utf-8")
    if compression:
        from fsspec.compression import compr

        sink = _Sink(seekable=local)
        named = {"filename": url.path} if local and compression == "gzip" else {}
        with compr[compression](sink, mode="w", **named) as f:
            f.write(data)
        data = sink.getvalue()
    if verify and _decoded(url, data) != text:
        raise DataError(f"object {url} does not decode back to its value with {compression}; nothing written")
    return data


def _with_bytes(decoded: Result[str], data: bytes) -> Result[tuple[str, bytes]]:
    return decoded if isinstance(decoded, StatectlError) else (decoded, data)


def _decoded_as(url: ObjectURL, data: bytes, text: str) -> Result[None]:
    """None when the bytes read back decode to the text, else the error."""
    decoded = _decoded(url, data)
    if isinstance(decoded, StatectlError):
        return decoded
    return None if decoded == text else _not_as_written(url)


def decode_object(url: ObjectURL, data: bytes) -> str:
    """What a worker reads from these bytes: compression inferred from the suffix, UTF-8."""
    return _value(_decoded(url, data))


def _decoded(url: ObjectURL, data: bytes) -> Result[str]:
    from fsspec.utils import infer_compression

    compression = infer_compression(url.path)
    if compression:
        from fsspec.compression import compr

        try:
            with compr[compression](io.BytesIO(data), mode="rb") as f:
                data = f.read()
        except Exception as e:
            return DataError(f"object {url} does not decompress: {type(e).__name__}: {e}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return DataError(f"object {url} is not UTF-8 text (wrong compression suffix?)")


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
    # Azure: the MD5 the service computed over a single-request upload (Put Blob's Content-MD5 response
    # header), or the blob's content_md5 property (adlfs info: content_settings); absent after a block upload.
    settings: Any = info.get("content_settings")  # azure's ContentSettings: a mapping, not a dict
    azure_md5 = info.get("content_md5") or (settings.get("content_md5") if hasattr(settings, "get") else None)
    if isinstance(azure_md5, (bytes, bytearray)) and azure_md5:
        return bytes(azure_md5) == hashlib.md5(payload, usedforsecurity=False).digest()
    return None
