"""Object storage through fsspec, reached the way a worker reaches it.

``file://`` uses fsspec's LocalFileSystem directly (what Airflow does too). Any other
scheme goes through Airflow's own ``attach(protocol, conn_id)``, so a ``conn_id`` in the URL
resolves through Airflow connections (``AIRFLOW_CONN_*``, secrets backends, the metadata
DB) to the very filesystem a worker builds. Reads and writes open the object exactly as the
provider does, so the bytes (codec framing included) are the provider's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from statectl.errors import DataError, StatectlError, UnreachableError
from statectl.layout import ObjectURL

DEFAULT_CONCURRENCY = 16
T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger(__name__)


class ObjectMissing(DataError):
    pass


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

    def write_text(self, url: ObjectURL, text: str, compression: str | None) -> None:
        """Write as the provider does, then read back and compare before anyone points to it."""
        fs = self.fs(url)
        data = text.encode("utf-8")
        try:
            if url.is_local:
                fs.makedirs(url.path.rsplit("/", 1)[0], exist_ok=True)
            # The codec wrapper fsspec returns for open(compression=...) does not close the file under
            # it: a remote upload would only commit when garbage-collected, after the read-back below.
            # Same codec callback and mode as fs.open(compression=...), so the bytes are the provider's.
            with fs.open(url.path, mode="wb") as raw:
                if compression:
                    from fsspec.compression import compr

                    with compr[compression](raw, mode="w") as f:
                        f.write(data)
                else:
                    raw.write(data)
        except StatectlError:
            raise
        except Exception as e:
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

    # -- many objects ---------------------------------------------------------------
    def map(self, func: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        """Run I/O concurrently, in order, with a bounded number of items in flight."""
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            yield from pool.map(func, items)

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
