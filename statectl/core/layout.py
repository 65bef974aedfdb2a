"""The provider's object layout, as URL strings equal to ``str(ObjectStoragePath)``.

Task value:  <base>/<q(dag_id)>/<q(run_id)>[/region=<id>]/<q(task_id)>/<map_index>/<q(key)><suffix>
Asset value: <base>/assets/<q(name or uri or id)>/<q(key)><suffix>

``q`` is ``urllib.parse.quote(segment, safe="")``. This module is pure string work so that
simple commands need neither Airflow nor fsspec to compute a path.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from urllib.parse import quote, unquote

from statectl.core.scopes import AssetScope, Scope, TaskScope, check_segment
from statectl.errors import ConfigError, DataError

ASSETS_FOLDER = "assets"
LOCAL_PROTOCOLS = frozenset({"file", "local"})
# statectl's own short-lived objects (prune's lock, store probes) sit directly in the base path under
# this prefix: provider objects are never there (task paths are 5 segments deep, asset paths start with
# "assets/"), and '~' cannot occur in a dag id.
RESERVED_PREFIX = ".statectl~"


def quote_segment(value: str, what: str = "segment") -> str:
    return quote(check_segment(value, what), safe="")


@dataclass(frozen=True)
class ObjectURL:
    """A URL split the way ObjectStoragePath splits it: ``protocol://[conn_id@]path``."""

    protocol: str
    conn_id: str | None
    path: str  # the filesystem path: "bucket/key" for object stores, "/abs/path" for files

    @classmethod
    def parse(cls, url: str) -> ObjectURL:
        protocol, sep, rest = url.partition("://")
        if not sep or not protocol or "/" in protocol:
            raise ValueError(f"not a URL with a scheme: {url!r}")
        netloc, slash, tail = rest.partition("/")
        userinfo, at, host = netloc.rpartition("@")
        conn_id = (userinfo or None) if at else None
        if not at:
            host = netloc
        if protocol.lower() in LOCAL_PROTOCOLS:
            # file:///abs/path: the netloc is empty and the path is absolute.
            path = f"{host}/{tail}" if host else f"/{tail}"
        else:
            path = f"{host}{slash}{tail}"
        return cls(protocol.lower(), conn_id, path.rstrip("/") or "/")

    def __str__(self) -> str:
        if self.conn_id:
            return f"{self.protocol}://{self.conn_id}@{self.path}"
        return f"{self.protocol}://{self.path}"

    def child(self, *segments: str) -> ObjectURL:
        return ObjectURL(self.protocol, self.conn_id, "/".join((self.path, *segments)))

    @cached_property
    def parts(self) -> tuple[str, ...]:
        # Cached: prune and the scan compare every object's parts with the base's, per row.
        return tuple(p for p in self.path.split("/") if p)

    @property
    def is_local(self) -> bool:
        return self.protocol in LOCAL_PROTOCOLS


def parse_base_path(base: str) -> ObjectURL:
    """The configured base path; the provider needs a scheme or its refs will not decode."""
    if "://" not in base:
        raise ConfigError(
            f"[common.io] state_store_objectstorage_path {base!r} has no URL scheme; workers would "
            "store refs they cannot read back. Use e.g. file:///data/state or s3://conn@bucket/state"
        )
    try:
        return ObjectURL.parse(base)
    except ValueError as e:
        raise ConfigError(f"[common.io] state_store_objectstorage_path: {e}") from None


def compression_suffix(compression: str | None) -> str:
    """The suffix the provider appends: the fsspec extension registered for the codec."""
    if not compression:
        return ""
    from fsspec.utils import compressions  # fsspec registers only codecs whose library imports

    for suffix, name in compressions.items():
        if name == compression:
            return f".{suffix}"
    if compression == "snappy":
        reason = "fsspec registers snappy with no file extension, so the provider cannot use it"
    elif compression in ("zstd", "lz4"):
        library = "zstandard" if compression == "zstd" else "lz4"
        reason = f"it needs the {library!r} library (on statectl's host and every worker)"
    else:
        reason = f"fsspec knows {', '.join(sorted(set(compressions.values())))}"
    raise ConfigError(f"compression {compression!r} is not usable: {reason}")


def task_prefix(base: ObjectURL, scope: TaskScope) -> ObjectURL:
    segments = [quote_segment(scope.dag_id, "dag id"), quote_segment(scope.run_id, "run id")]
    if scope.region_id:
        segments.append(f"region={scope.region_id}")
    segments.append(quote_segment(scope.task_id, "task id"))
    return base.child(*segments)


def asset_prefix(base: ObjectURL, scope: AssetScope) -> ObjectURL:
    return base.child(ASSETS_FOLDER, quote_segment(scope.path_identifier, "asset"))


def object_url(base: ObjectURL, scope: Scope, key: str, compression: str | None) -> ObjectURL:
    name = quote_segment(key, "key") + compression_suffix(compression)
    if isinstance(scope, TaskScope):
        return task_prefix(base, scope).child(str(scope.map_index), name)
    return asset_prefix(base, scope).child(name)


def is_asset_path(segments: list[str]) -> bool:
    """``segments``: an object's path below the base, split at '/'."""
    return len(segments) == 3 and segments[0] == ASSETS_FOLDER


def task_segments(segments: list[str]) -> tuple[str, str, str, str] | None:
    """(dag, run, task, map_index), quoted, of a task object's path below the base, split at '/':
    5 segments, 6 with Airflow 3.4's region."""
    if len(segments) == 6 and segments[2].startswith("region="):
        segments = segments[:2] + segments[3:]
    if len(segments) != 5:
        return None
    return segments[0], segments[1], segments[2], segments[3]


TaskAddress = tuple[str, str, str, int]  # (dag_id, run_id, task_id, map_index): the lookup index's columns


def task_address(url: ObjectURL, base: ObjectURL) -> TaskAddress | None:
    """The task instance whose path the object lies at (unquoted), or None: not a task object's path
    strictly under the base. A worker writes only at its own task instance's path."""
    if not is_under_base(url, base):
        return None
    parts = task_segments(list(url.parts[len(base.parts) :]))
    if parts is None or not _is_map_index(parts[3]):
        return None
    dag, run, task, map_index = parts
    return unquote(dag), unquote(run), unquote(task), int(map_index)


def objects_folder(base: ObjectURL, address: TaskAddress) -> str:
    """The URL text every object of this task instance starts with (no region), '/' included."""
    dag_id, run_id, task_id, map_index = address
    return f"{task_prefix(base, TaskScope(dag_id, run_id, task_id, map_index)).child(str(map_index))}/"


def _is_map_index(segment: str) -> bool:
    return segment.isascii() and segment.lstrip("-").isdigit() and str(int(segment)) == segment


def reserved_url(base: ObjectURL, name: str) -> ObjectURL:
    """An object of statectl's own, directly in the base path (see RESERVED_PREFIX)."""
    return base.child(RESERVED_PREFIX + name)


def looks_like_provider_ref(ref: str, base: ObjectURL) -> bool:
    """Mirror the provider's ``_is_storage_ref``: a scheme, and lexically under the base.

    Like ``ObjectStoragePath.is_relative_to`` it ignores protocol and conn_id and does not
    resolve ``..``; :func:`require_under_base` is the strict check used before any I/O.
    """
    try:
        url = ObjectURL.parse(ref)
    except ValueError:
        return False
    return url.parts[: len(base.parts)] == base.parts


def is_under_base(url: ObjectURL, base: ObjectURL) -> bool:
    """Strictly below the base: same store, same connection, no '.' or '..' escapes."""
    if url.conn_id != base.conn_id:
        return False
    same_protocol = url.protocol == base.protocol or (url.is_local and base.is_local)
    parts, root = url.parts, base.parts
    rest = parts[len(root) :]
    return same_protocol and parts[: len(root)] == root and len(rest) > 0 and "." not in rest and ".." not in rest


def _parse_ref(ref: str, base: ObjectURL | None) -> ObjectURL:
    if base is None:
        raise DataError(
            f"the row references {ref} but no [common.io] state_store_objectstorage_path is configured (use --path)"
        )
    try:
        return ObjectURL.parse(ref)
    except ValueError:
        raise DataError(f"the row references {ref!r}, which is not an object URL") from None


def require_under_base(ref: str, base: ObjectURL | None) -> ObjectURL:
    """The object of a ref statectl may delete or rewrite: strictly under the base path."""
    url = _parse_ref(ref, base)
    assert base is not None
    if not is_under_base(url, base):
        raise DataError(f"the row references {ref}, outside the configured base path {base}")
    return url


def require_readable(ref: str, base: ObjectURL | None) -> ObjectURL:
    """The object of a ref a worker would read: what the provider counts as a ref, no '..' escape.

    Like the provider, a ref written under another conn_id or scheme of the same path is read
    through its own connection (an operator who renamed the connection still reads old values).
    """
    url = _parse_ref(ref, base)
    assert base is not None
    if not looks_like_provider_ref(ref, base):
        raise DataError(
            f"the row references {ref}, outside the configured base path {base}; a worker would fail to decode it"
        )
    if any(p in (".", "..") for p in url.parts[len(base.parts) :]):
        raise DataError(f"the row references {ref}, which escapes the base path {base} with '..'")
    return url
