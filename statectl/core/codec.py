"""What the ``value`` column holds, and how a worker turns a value into it and back.

A worker with the object storage backend stores ``{"__airflow_state_ref__": ref}`` where
``ref`` is the value's ``json.dumps`` text (below the threshold) or the object's URL. A
worker without a backend stores ``json.dumps(value)``. The API server re-serializes what it
receives with ``json.dumps``, so the column text is always ``json.dumps`` output.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from enum import StrEnum
from json.decoder import scanstring  # type: ignore[attr-defined]  # C-accelerated, not in the stubs
from typing import Any

from statectl.core.layout import ObjectURL
from statectl.errors import DataError, UsageError

REF_KEY = "__airflow_state_ref__"


class Location(StrEnum):
    PLAIN = "plain"  # the value itself (no worker backend wrote it)
    INLINE = "inline"  # ref wrapper holding the value's JSON text
    OBJECT = "object"  # ref wrapper holding an object URL


def parse_value(text: str) -> Any:
    """Parse user input the way a worker would accept it: strict JSON, not null."""

    def _refuse_constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except ValueError as e:
        raise UsageError(f"VALUE is not valid JSON: {e}") from None
    if value is None:
        raise UsageError("VALUE is null; Airflow refuses to store None (use `statectl rm`)")
    return value


def serialize(value: Any) -> str:
    """The provider's and the API server's serialization: ``json.dumps`` with defaults."""
    return json.dumps(value)


def wrap_ref(ref: str) -> str:
    return serialize({REF_KEY: ref})


@dataclass(frozen=True)
class StoredValue:
    """A classified ``value`` column."""

    text: str
    location: Location
    ref: str | None = None

    @property
    def stored_bytes(self) -> int:
        return text_bytes(self.text)

    @property
    def object_url(self) -> str | None:
        return self.ref if self.location is Location.OBJECT else None

    @property
    def compression(self) -> str | None:
        """The codec a reader infers from the object's suffix, as fsspec's 'infer' does."""
        if self.location is not Location.OBJECT or self.ref is None:
            return None
        return infer_compression(self.ref)


# What fsspec registers at import whatever else is installed (zip, and bz2, gzip and lzma from Python's own
# library): answered here, so that listing a million refs neither imports fsspec (tens of ms) nor runs its
# splitext per ref. Any other extension (zst, lz4 when their library is installed) is asked of fsspec.
_FSSPEC_BUILTIN_CODECS = {"zip": "zip", "bz2": "bz2", "gz": "gzip", "lzma": "lzma", "xz": "xz"}


def infer_compression(url: str) -> str | None:
    """fsspec's own inference (os.path.splitext, lower-cased), which the provider's read uses:
    a name of dots only ("....gz") has no extension, and "KEY.GZ" counts as gzip."""
    name = url[url.rfind("/") + 1 :]
    dot = name.rfind(".")
    if dot <= 0 or not name[:dot].strip("."):  # splitext: leading dots start no extension
        return None
    extension = name[dot + 1 :].lower()
    if extension in _FSSPEC_BUILTIN_CODECS:
        return _FSSPEC_BUILTIN_CODECS[extension]
    return _fsspec_codec(extension) if extension else None


@functools.cache
def _fsspec_codec(extension: str) -> str | None:
    from fsspec.utils import compressions  # filled once, when fsspec is imported

    codec: str | None = compressions.get(extension)
    return codec


WRAPPER_HEAD = '{"' + REF_KEY + '": "'
_URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_PLAIN: tuple[Location, str | None] = (Location.PLAIN, None)


def classify(text: str) -> StoredValue:
    """Classify column text as a worker with a backend would read it."""
    return StoredValue(text, *locate(text))


def locate(text: str) -> tuple[Location, str | None]:
    """:func:`classify` without the object: where the value lives, and the ref (None for a plain value)."""
    if not text.startswith("{") or REF_KEY not in text:  # fast path: no wrapper possible
        return _PLAIN
    ref: str | None = None
    if text.startswith(WRAPPER_HEAD):
        # json.dumps({REF_KEY: ref}): decode just the one string member (C-accelerated).
        try:
            ref, end = scanstring(text, len(WRAPPER_HEAD))
        except ValueError:
            ref, end = None, 0
        if text[end:] != "}":
            ref = None  # more members, or not the worker's wrapper: parse it properly below
    if ref is None:
        try:
            document = json.loads(text)
        except ValueError:
            return _PLAIN
        ref = document.get(REF_KEY) if isinstance(document, dict) else None
    if not isinstance(ref, str) or not ref:
        return _PLAIN
    # A JSON text never starts with "scheme://", so an inline ref cannot look like a URL.
    if _URL_SCHEME.match(ref):
        return Location.OBJECT, ref
    return Location.INLINE, ref


def text_bytes(text: str) -> int:
    """The UTF-8 size of a column text (ASCII, the usual case, without encoding it)."""
    return len(text) if text.isascii() else len(text.encode())


def json_error(text: str) -> str | None:
    """None when the text is JSON, else the parser's reason."""
    try:
        json.loads(text)
    except ValueError as e:
        return str(e)
    return None


def decode_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as e:
        raise DataError(f"{where} does not hold valid JSON: {e}") from None


@dataclass(frozen=True)
class Encoded:
    """What a worker would write for a value: the column text and, maybe, an object."""

    column_text: str
    location: Location
    object_text: str | None = None  # the object's content before compression

    @property
    def column_bytes(self) -> int:
        return len(self.column_text)


def encode(
    value: Any,
    *,
    offload: bool,
    threshold: int,
    url: ObjectURL | None,
) -> Encoded:
    """The worker's write: plain without a backend; inline below the threshold; else object."""
    serialized = serialize(value)
    if not offload:
        return Encoded(serialized, Location.PLAIN)
    if len(serialized.encode()) < threshold:
        return Encoded(wrap_ref(serialized), Location.INLINE)
    assert url is not None
    return Encoded(wrap_ref(str(url)), Location.OBJECT, serialized)


def worker_size(column_text: str) -> int:
    """The size the worker compares to max_value_storage_bytes: len(json.dumps(stored))."""
    return len(column_text)
