"""`where`: for one (scope, key), the object the provider would use, what exists, and what the row holds.

It explains the usual reasons a task reads a surprising value: the row's ref is not the URL the
current configuration computes (compression or base path changed since it was written, or a ref
outside the base), an object without a row, a row written by a worker with another backend, and
objects left under other compression suffixes by a configuration change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from statectl.core import codec, layout
from statectl.core.codec import Location, StoredValue
from statectl.core.durations import iso
from statectl.core.layout import ObjectURL
from statectl.core.scopes import AssetScope, Scope, TaskScope, check_key
from statectl.errors import ConfigError, ExitCode, NotFoundError, StatectlError, UnreachableError
from statectl.stores.bucket import ObjectInfo, Result
from statectl.stores.metastore import StateRow
from statectl.stores.store import StateStore

PREVIEW_CHARS = 200


@dataclass(frozen=True)
class ObjectState:
    url: ObjectURL
    exists: bool
    size: int | None = None
    modified: datetime | None = None
    error: str | None = None  # the store could not be asked

    @property
    def compression(self) -> str | None:
        return codec.infer_compression(str(self.url))

    def as_dict(self) -> dict[str, Any]:
        return {
            "url": str(self.url),
            "exists": self.exists,
            "size": self.size,
            "last_modified": iso(self.modified),
            "compression": self.compression,
            "error": self.error,
        }


@dataclass
class WhereReport:
    scope: Scope
    key: str
    asset: dict[str, Any] | None  # id, name, uri of the resolved asset; None for task scopes
    expected: ObjectState | None  # the provider's URL under the current configuration
    row: StateRow | None
    stored: StoredValue | None
    row_object: ObjectState | None  # what the row's ref points at, when that is another URL
    leftovers: list[ObjectState] = field(default_factory=list)  # same key, other compression suffixes
    notes: list[str] = field(default_factory=list)  # plain-language findings, most likely cause first

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.OK

    def as_dict(self) -> dict[str, Any]:
        row = None
        if self.row is not None and self.stored is not None:
            row = {
                "location": self.stored.location.value,
                "stored_bytes": self.stored.stored_bytes,
                "ref": self.stored.ref if self.stored.location is Location.OBJECT else None,
                "text": _preview(self.stored.text),
                "updated_at": iso(self.row.updated_at),
                "expires_at": iso(self.row.expires_at),
            }
        return {
            "scope": {"kind": self.scope.kind, "label": self.scope.label(), **_scope_fields(self.scope)},
            "key": self.key,
            "asset": self.asset,
            "object": self.expected.as_dict() if self.expected else None,
            "row": row,
            "row_object": self.row_object.as_dict() if self.row_object else None,
            "leftovers": [o.as_dict() for o in self.leftovers],
            "notes": self.notes,
        }


def _preview(text: str) -> str:
    return text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS] + f"... ({len(text)} characters)"


def _scope_fields(scope: Scope) -> dict[str, Any]:
    if isinstance(scope, AssetScope):
        return {"asset_name": scope.name, "asset_uri": scope.uri}
    return {"dag_id": scope.dag_id, "run_id": scope.run_id, "task_id": scope.task_id, "map_index": scope.map_index}


def _with_suffix(url: ObjectURL, suffix: str) -> ObjectURL:
    return ObjectURL(url.protocol, url.conn_id, url.path + suffix)


def _other_suffixes(bare: ObjectURL, expected: ObjectURL | None) -> list[ObjectURL]:
    """The key's object under every suffix the provider could have written, but the expected one."""
    from fsspec.utils import compressions

    candidates = [bare, *(_with_suffix(bare, f".{suffix}") for suffix in sorted(compressions))]
    return [url for url in candidates if url != expected]


def _stat(store: StateStore, urls: list[ObjectURL]) -> list[ObjectState]:
    def state(url: ObjectURL, info: Result[ObjectInfo]) -> ObjectState:
        if isinstance(info, StatectlError):
            return ObjectState(url, False, error=info.message)
        return ObjectState(url, info.exists, info.size, info.modified)

    try:
        infos = store.buckets.stat_many(urls)
    except UnreachableError as e:  # e.g. the filesystem could not be built: the row is still shown
        infos = [e] * len(urls)
    return [state(url, info) for url, info in zip(urls, infos, strict=True)]


def _resolve(store: StateStore, scope: Scope, notes: list[str]) -> tuple[Scope, dict[str, Any] | None, bool]:
    """The scope as the metastore knows it; for assets also (id, name, uri). False: no such asset."""
    if not isinstance(scope, AssetScope):
        return scope, None, True
    try:
        resolved = store.metastore.resolve_asset(scope)
    except NotFoundError as e:
        notes.append(f"{e.message}: no row can exist; the URL is the one a worker addressing it so would use")
        return scope, None, False
    assert isinstance(resolved, AssetScope) and resolved.asset_id is not None
    name, uri = store.metastore.asset_identity(resolved.asset_id)
    addressed_by = "name" if scope.name else "uri"
    asset = {"id": resolved.asset_id, "name": name, "uri": uri, "path_segment": addressed_by}
    if addressed_by == "uri" and name:
        notes.append(
            f"addressed by uri: workers holding the asset by name ({name!r}) use the folder of its name instead"
        )
    return resolved, asset, True


@dataclass(frozen=True)
class WhereOptions:
    scope: Scope
    key: str


def run_where(store: StateStore, options: WhereOptions) -> WhereReport:
    """Everything statectl can tell about where (scope, key) lives and what a worker reads.
    Neither a row nor an object: NotFoundError (or UnreachableError when the store did not answer)."""
    scope, key = options.scope, check_key(options.key)
    notes: list[str] = []
    scope, asset, known = _resolve(store, scope, notes)
    row = store.metastore.get_row(scope, key) if known else None
    stored = codec.classify(row.value) if row is not None else None
    config = store.config

    expected_url: ObjectURL | None = None
    bare_url: ObjectURL | None = None
    base = store.base
    if base is None:
        notes.append("no [common.io] state_store_objectstorage_path: workers cannot offload values to objects")
    else:
        bare_url = layout.object_url(base, scope, key, None)
        try:
            expected_url = layout.object_url(base, scope, key, config.compression)
        except ConfigError as e:
            notes.append(f"{e.message}: workers fail to write objects with this configuration")
    if not config.worker_backend:
        notes.append("[workers] state_store_backend is empty: workers store values in the row and read no objects")

    # The row's own object, when it is not the expected one (read only where a worker would read).
    ref_url: ObjectURL | None = None
    if stored is not None and stored.location is Location.OBJECT and stored.ref is not None:
        try:
            ref_url = layout.require_readable(stored.ref, base)
        except StatectlError as e:
            notes.append(f"{e.message} (base path or scheme changed since it was written?)")
    to_stat = [u for u in (expected_url,) if u is not None]
    if ref_url is not None and ref_url != expected_url:
        to_stat.append(ref_url)
    others = _other_suffixes(bare_url, expected_url) if bare_url is not None else []
    others = [u for u in others if u != ref_url]
    states = _stat(store, [*to_stat, *others])
    by_url = dict(zip([*to_stat, *others], states, strict=True))
    expected = by_url.get(expected_url) if expected_url is not None else None
    row_object = by_url.get(ref_url) if ref_url is not None and ref_url != expected_url else None
    leftovers = [by_url[u] for u in others if by_url[u].exists]
    errors = sorted({s.error for s in states if s.error})

    report = WhereReport(scope, key, asset, expected, row, stored, row_object, leftovers, notes)
    report.notes[:0] = _explain(report, ref_url, config.worker_backend)
    report.notes.extend(f"object storage not reachable: {e}" for e in errors)
    if row is None and not (expected and expected.exists) and not leftovers:
        if errors:
            raise UnreachableError(errors[0])
        if isinstance(scope, TaskScope):
            store.metastore.require_task_instance(scope)  # say which part of the scope is unknown
        looked = f" (looked at {expected_url})" if expected_url else ""
        raise NotFoundError(f"no row and no object for key {key!r} in {scope}{looked}")
    return report


def _explain(report: WhereReport, ref_url: ObjectURL | None, worker_backend: str) -> list[str]:
    """The likely reasons a worker reads what it reads, most important first."""
    notes: list[str] = []
    stored, expected = report.stored, report.expected
    expected_url = expected.url if expected else None
    if stored is None:
        if expected is not None and expected.exists:
            notes.append(
                f"no row, but the object {expected.url} exists: an orphan (a worker died between writing it "
                "and its row, or the row was removed without it); a worker reads None; `statectl prune` removes it"
            )
    elif stored.location is Location.OBJECT:
        if not worker_backend:
            notes.append("the row holds an object ref but workers have no backend: they read the ref wrapper dict")
        if ref_url is not None and ref_url == expected_url:
            notes.append("the row points at the object the provider computes for this key")
        elif ref_url is not None:
            notes.append(_ref_mismatch(ref_url, expected_url))
        target = expected if ref_url is not None and ref_url == expected_url else report.row_object
        if target is not None and not target.exists and not target.error:
            notes.append(f"the row's object {target.url} does not exist: a worker reads None")
    else:
        if stored.location is Location.INLINE and stored.ref is not None and codec.json_error(stored.ref) is not None:
            notes.append(
                f"the row's ref {_preview(stored.ref)!r} is neither JSON nor a URL: a worker fails with "
                "JSONDecodeError (written with an empty base path or one without a scheme?)"
            )
        if stored.location is Location.INLINE and not worker_backend:
            notes.append("the row holds an inline ref but workers have no backend: they read the ref wrapper dict")
        if stored.location is Location.PLAIN and worker_backend:
            notes.append("the row holds a plain value (written without a backend): a worker reads it as is, warning")
        if expected is not None and expected.exists:
            notes.append(
                f"the row holds the value itself, yet the object {expected.url} exists: it is stale "
                "(left when the value went inline or the row was rewritten); nothing reads it"
            )
    if report.leftovers:
        listed = ", ".join(str(o.url) for o in report.leftovers)
        notes.append(
            f"objects for this key under other compression suffixes: {listed} "
            "(left by a compression change; read only if a row points to them)"
        )
    return notes


def _ref_mismatch(ref_url: ObjectURL, expected_url: ObjectURL | None) -> str:
    head = f"the row points at {ref_url}, not at {expected_url} (the URL under the current configuration)"
    if expected_url is None:
        return f"the row points at {ref_url}; the current configuration computes no URL"
    ref_codec, expected_codec = codec.infer_compression(str(ref_url)), codec.infer_compression(str(expected_url))
    same_place = (ref_url.protocol, ref_url.conn_id) == (expected_url.protocol, expected_url.conn_id)
    if same_place and _strip_suffix(ref_url) == _strip_suffix(expected_url):
        return (
            f"{head}: written with compression {ref_codec or 'none'}, configured now {expected_codec or 'none'}. "
            "A worker still reads the old object (compression inferred from its suffix); its next write "
            "goes to the new URL and the old object stays behind"
        )
    if not same_place:
        return (
            f"{head}: written through {ref_url.protocol}://{ref_url.conn_id or ''}; a worker reads it through "
            "that connection, which may no longer exist or hold other credentials"
        )
    return f"{head}: written for another path (a base path, scope or key change, or by hand)"


def _strip_suffix(url: ObjectURL) -> str:
    compression = codec.infer_compression(str(url))
    if compression is None:
        return url.path
    return url.path.rsplit(".", 1)[0]
