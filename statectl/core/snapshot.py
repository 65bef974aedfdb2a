"""The snapshot format of ``statectl export`` and ``statectl import``: JSON Lines, one header then one
line per key, each with the decoded value and a checksum of it. Pure: no I/O beyond the text given.

A line holds the value as JSON, so a snapshot does not depend on where the value lived (plain, inline
or an object, compressed or not): an import writes each value as the target's workers would.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from statectl.core.scopes import AssetScope, Scope, TaskScope
from statectl.errors import DataError, UsageError

FORMAT = "statectl-snapshot"
VERSION = 1
GZIP_MAGIC = b"\x1f\x8b"


def canonical_json(value: Any) -> str:
    """The one text of a value that its checksum covers: sorted keys, no spaces, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def checksum(value: Any) -> str:
    return "sha256:" + hashlib.sha256(canonical_json(value).encode()).hexdigest()


@dataclass(frozen=True)
class AssetWriter:
    """Who last wrote an asset value (asset_state_store.last_updated_by_*)."""

    kind: str | None
    dag_id: str | None = None
    run_id: str | None = None
    task_id: str | None = None
    map_index: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "dag_id": self.dag_id,
            "run_id": self.run_id,
            "task_id": self.task_id,
            "map_index": self.map_index,
        }


@dataclass(frozen=True)
class Record:
    """One key of a snapshot. ``error`` instead of a value: the export could not read it."""

    scope: Scope
    key: str
    value: Any = None
    expires_at: datetime | None = None
    updated_at: datetime | None = None
    writer: AssetWriter | None = None
    stored: str | None = None  # plain, inline or object: where the value lived in the source
    object: str | None = None  # the source object's URL
    error: str | None = None

    @property
    def label(self) -> str:
        return f"{self.scope} key {self.key!r}"

    def to_line(self) -> str:
        scope = self.scope
        line: dict[str, Any] = {"kind": scope.kind}
        if isinstance(scope, TaskScope):
            line.update(dag_id=scope.dag_id, run_id=scope.run_id, task_id=scope.task_id, map_index=scope.map_index)
        else:
            line.update(asset_name=scope.name, asset_uri=scope.uri)
        line["key"] = self.key
        if self.error is None:
            line["value"] = self.value
            line["sha256"] = checksum(self.value)
        else:
            line["error"] = self.error
        line["expires_at"] = _ts(self.expires_at)
        line["updated_at"] = _ts(self.updated_at)
        if self.writer is not None:
            line["last_updated_by"] = self.writer.as_dict()
        line["stored"] = self.stored
        line["object"] = self.object
        return json.dumps(line, ensure_ascii=False, allow_nan=False)


def header_line(
    *,
    exported_at: datetime,
    versions: dict[str, str | None],
    source: dict[str, Any],
    selection: dict[str, Any],
) -> str:
    """The first line: what made the snapshot and from where (never a secret: paths, codec, threshold)."""
    return json.dumps(
        {
            "format": FORMAT,
            "version": VERSION,
            **versions,
            "exported_at": exported_at.isoformat(),
            "source": source,
            "selection": selection,
        }
    )


def parse_header(text: str) -> dict[str, Any]:
    """The header line, refusing what is not a statectl snapshot of a version this statectl reads."""
    try:
        header = json.loads(text)
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise DataError(f"line 1: not a {FORMAT} (no header line; was it written by `statectl export`?)")
    version = header.get("version")
    if version != VERSION:
        raise DataError(f"line 1: snapshot format version {version!r} is not one this statectl reads ({VERSION})")
    return header


def parse_line(text: str, number: int) -> Record:
    """A key line, with its checksum verified; a bad line is a DataError naming its number."""
    where = f"line {number}"
    try:
        line = json.loads(text, parse_constant=_refuse_constant)
    except ValueError as e:
        raise DataError(f"{where}: not a complete JSON line (truncated or corrupt): {e}") from None
    if not isinstance(line, dict):
        raise DataError(f"{where}: not a snapshot record")
    try:
        scope = _scope(line)
        key = _text(line, "key")
        writer = _writer(line.get("last_updated_by"))
        record = Record(
            scope,
            key,
            expires_at=_parse_ts(line.get("expires_at")),
            updated_at=_parse_ts(line.get("updated_at")),
            writer=writer,
            stored=_optional_text(line, "stored"),
            object=_optional_text(line, "object"),
            error=_optional_text(line, "error"),
        )
    except (UsageError, ValueError, TypeError) as e:
        message = e.message if isinstance(e, UsageError) else str(e)
        raise DataError(f"{where}: {message}") from None
    if record.error is not None:
        return record
    if "value" not in line or line["value"] is None:
        raise DataError(f"{where}: no value (and no error saying why)")
    value = line["value"]
    if line.get("sha256") != checksum(value):
        raise DataError(f"{where}: checksum mismatch for {record.label}: the value is not what was exported")
    return Record(
        record.scope,
        record.key,
        value,
        record.expires_at,
        record.updated_at,
        record.writer,
        record.stored,
        record.object,
    )


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _ts(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _parse_ts(value: Any) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"timestamp {value!r} is not text")
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError(f"timestamp {value!r} has no time zone")
    return parsed


def _text(line: dict[str, Any], name: str) -> str:
    value = line.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} is missing or not text")
    return value


def _optional_text(line: dict[str, Any], name: str) -> str | None:
    value = line.get(name)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{name} is not text")
    return value


def _scope(line: dict[str, Any]) -> Scope:
    kind = line.get("kind")
    if kind == "task":
        map_index = line.get("map_index")
        if not isinstance(map_index, int) or isinstance(map_index, bool):
            raise ValueError("map_index is missing or not an integer")
        return TaskScope(_text(line, "dag_id"), _text(line, "run_id"), _text(line, "task_id"), map_index)
    if kind == "asset":
        name, uri = _optional_text(line, "asset_name"), _optional_text(line, "asset_uri")
        if not name and not uri:
            raise ValueError("an asset record needs asset_name or asset_uri")
        return AssetScope(name=name or None, uri=uri or None)
    raise ValueError(f"kind {kind!r} is neither 'task' nor 'asset'")


def _writer(value: Any) -> AssetWriter | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("kind"), str | None):
        raise ValueError("last_updated_by is not a writer record")
    map_index = value.get("map_index")
    if map_index is not None and not isinstance(map_index, int):
        raise ValueError("last_updated_by.map_index is not an integer")
    return AssetWriter(value["kind"], value.get("dag_id"), value.get("run_id"), value.get("task_id"), map_index)
