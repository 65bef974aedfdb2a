"""What the ``value`` column holds, and how a worker turns a value into it and back.

A worker with the object storage backend stores ``{"__airflow_state_ref__": ref}`` where
``ref`` is the value's ``json.dumps`` text (below the threshold) or the object's URL. A
worker without a backend stores ``json.dumps(value)``. The API server re-serializes what it
receives with ``json.dumps``, so the column text is always ``json.dumps`` output.
"""

from __future__ import annotations

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
        return len(self.text.encode())

    @property
    def object_url(self) -> str | None:
        return self.ref if self.location is Location.OBJECT else None

    @property
    def compression(self) -> str | None:
        """The codec a reader infers from the object's suffix, as fsspec's 'infer' does."""
        if self.location is not Location.OBJECT or self.ref is None:
            return None
        return infer_compression(self.ref)


def infer_compression(url: str) -> str | None:
    """fsspec's own inference (os.path.splitext, lower-cased), which the provider's read uses:
    a name of dots only ("....gz") has no extension, and "KEY.GZ" counts as gzip."""
    from fsspec.utils import infer_compression as fsspec_infer

    inferred: str | None = fsspec_infer(url.rsplit("/", 1)[-1])
    return inferred


WRAPPER_HEAD = '{"' + REF_KEY + '": "'
_URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def classify(text: str) -> StoredValue:
    """Classify column text as a worker with a backend would read it."""
    if not text.startswith("{") or REF_KEY not in text:  # fast path: no wrapper possible
        return StoredValue(text, Location.PLAIN)
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
            return StoredValue(text, Location.PLAIN)
        ref = document.get(REF_KEY) if isinstance(document, dict) else None
    if not isinstance(ref, str) or not ref:
        return StoredValue(text, Location.PLAIN)
    # A JSON text never starts with "scheme://", so an inline ref cannot look like a URL.
    if _URL_SCHEME.match(ref):
        return StoredValue(text, Location.OBJECT, ref)
    return StoredValue(text, Location.INLINE, ref)


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
