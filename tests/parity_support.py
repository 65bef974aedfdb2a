"""Helpers for the parity tests: the installed provider as the oracle, and byte comparison of objects.

Not a conftest: imported explicitly by tests/test_parity*.py.
"""

from __future__ import annotations

import contextlib
import gzip
import struct
from collections.abc import Iterator
from typing import Any

import pytest

PATH_ENV = "AIRFLOW__COMMON_IO__STATE_STORE_OBJECTSTORAGE_PATH"
THRESHOLD_ENV = "AIRFLOW__COMMON_IO__STATE_STORE_OBJECTSTORAGE_THRESHOLD"
COMPRESSION_ENV = "AIRFLOW__COMMON_IO__STATE_STORE_OBJECTSTORAGE_COMPRESSION"
BACKEND_ENV = "AIRFLOW__WORKERS__STATE_STORE_BACKEND"
OBJECT_STORAGE_BACKEND = "airflow.providers.common.io.state_store.backend.StateStoreObjectStorageBackend"
REF_KEY = "__airflow_state_ref__"


def provider_module() -> Any:
    from airflow.providers.common.io.state_store import backend

    return backend


def clear_provider_caches() -> None:
    p = provider_module()
    for fn in (p._get_base_path, p._get_compression, p._get_threshold):
        fn.cache_clear()


@contextlib.contextmanager
def provider_configured(
    base: str, threshold: int = 0, compression: str | None = None, extra_env: dict[str, str] | None = None
) -> Iterator[dict[str, str]]:
    """Configure the in-process provider through the environment (as a worker is configured).

    Yields the same settings as an environ dict, to hand to statectl's own Config.
    """
    env = {
        BACKEND_ENV: OBJECT_STORAGE_BACKEND,
        PATH_ENV: base,
        THRESHOLD_ENV: str(threshold),
        COMPRESSION_ENV: compression or "",
        **(extra_env or {}),
    }
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        clear_provider_caches()
        try:
            yield env
        finally:
            clear_provider_caches()
    clear_provider_caches()


def worker_column_text(ref: str) -> str:
    """What the API server stores for a worker's set(): json.dumps of the wrapped ref."""
    import json

    return json.dumps({REF_KEY: ref})


# -- object bytes -------------------------------------------------------------------------------


def _normalize_gzip(data: bytes) -> bytes:
    assert data[:2] == b"\x1f\x8b", data[:16]
    return data[:4] + b"\0\0\0\0" + data[8:]  # MTIME is bytes 4..7 (RFC 1952)


def _normalize_zip(data: bytes) -> bytes:
    """Zero the DOS time/date of every local and central header (the only time-dependent bytes)."""
    buf = bytearray(data)
    eocd = buf.rfind(b"PK\x05\x06")
    assert eocd >= 0, "not a zip archive"
    entries, cd_size, cd_offset = struct.unpack_from("<HII", buf, eocd + 10)
    pos = cd_offset
    for _ in range(entries):
        assert buf[pos : pos + 4] == b"PK\x01\x02"
        local = struct.unpack_from("<I", buf, pos + 42)[0]
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", buf, pos + 28)
        buf[pos + 12 : pos + 16] = b"\0\0\0\0"
        assert buf[local : local + 4] == b"PK\x03\x04"
        buf[local + 10 : local + 14] = b"\0\0\0\0"
        pos += 46 + name_len + extra_len + comment_len
    assert pos == cd_offset + cd_size
    return bytes(buf)


def normalized(data: bytes, compression: str | None) -> bytes:
    """Object bytes with the codec's timestamp fields zeroed; everything else is compared exactly."""
    if compression == "gzip":
        return _normalize_gzip(data)
    if compression == "zip":
        return _normalize_zip(data)
    return data


def decompress(data: bytes, compression: str | None) -> bytes:
    import bz2
    import io
    import lzma
    import zipfile

    if compression is None:
        return data
    if compression == "gzip":
        return gzip.decompress(data)
    if compression == "bz2":
        return bz2.decompress(data)
    if compression in ("xz", "lzma"):
        return lzma.decompress(data)
    if compression == "zip":
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            (name,) = z.namelist()
            return z.read(name)
    raise AssertionError(compression)
