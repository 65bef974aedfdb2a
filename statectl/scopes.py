"""Scopes: which task instance or asset a key belongs to.

Validation here is the union of what Airflow's server and the provider's path layout
refuse, so that a scope statectl accepts is one a worker could also have written.
"""

from __future__ import annotations

from dataclasses import dataclass

from statectl.errors import UsageError

# task_state_store.key is String(512); asset_state_store.key likewise.
MAX_KEY_LENGTH = 512


def check_segment(value: str, what: str) -> str:
    """Refuse what the provider's ``_sanitise_segment`` refuses, with a clearer message."""
    if not value or value in (".", ".."):
        raise UsageError(f"{what} {value!r} is not allowed (empty, '.' and '..' cannot be paths)")
    return value


def check_key(key: str) -> str:
    check_segment(key, "key")
    if len(key) > MAX_KEY_LENGTH:
        raise UsageError(f"key is {len(key)} characters long; the limit is {MAX_KEY_LENGTH}")
    return key


@dataclass(frozen=True, order=True)
class TaskScope:
    dag_id: str
    run_id: str
    task_id: str
    map_index: int = -1
    # Airflow 3.4 adds regions; 0 is the default region and adds no path segment.
    region_id: int = 0

    def __post_init__(self) -> None:
        check_segment(self.dag_id, "dag id")
        check_segment(self.run_id, "run id")
        check_segment(self.task_id, "task id")
        if self.map_index < -1:
            raise UsageError(f"map index must be -1 or more, got {self.map_index}")

    @property
    def kind(self) -> str:
        return "task"

    def label(self) -> str:
        suffix = "" if self.map_index == -1 else f"[{self.map_index}]"
        return f"{self.dag_id}/{self.run_id}/{self.task_id}{suffix}"


@dataclass(frozen=True, order=True)
class AssetScope:
    """An asset as a worker addresses it: by name (preferred) or by uri.

    ``asset_id`` is filled in once the metastore has resolved the active asset.
    """

    name: str | None = None
    uri: str | None = None
    asset_id: int | None = None

    def __post_init__(self) -> None:
        if not self.name and not self.uri and self.asset_id is None:
            raise UsageError("an asset needs --asset NAME or --asset-uri URI")
        if self.name is not None:
            check_segment(self.name, "asset name")
        if self.uri is not None:
            check_segment(self.uri, "asset uri")

    @property
    def kind(self) -> str:
        return "asset"

    @property
    def path_identifier(self) -> str:
        """The provider names the asset's folder by name, else uri, else id."""
        return self.name or self.uri or str(self.asset_id)

    def label(self) -> str:
        return self.name or self.uri or f"asset#{self.asset_id}"


Scope = TaskScope | AssetScope


def scope_from_flags(
    *,
    dag: str | None = None,
    run: str | None = None,
    task: str | None = None,
    map_index: int | None = None,
    asset: str | None = None,
    asset_uri: str | None = None,
) -> Scope:
    """Build exactly one scope from the addressing flags, refusing incomplete or mixed sets."""
    task_flags = {"--dag": dag, "--run": run, "--task": task}
    given_task = [flag for flag, value in task_flags.items() if value is not None]
    if map_index is not None:
        given_task.append("--map-index")
    given_asset = [f for f, v in (("--asset", asset), ("--asset-uri", asset_uri)) if v is not None]
    if given_task and given_asset:
        raise UsageError(
            f"give either a task scope or an asset scope, not both ({', '.join(given_task + given_asset)})"
        )
    if given_asset:
        if len(given_asset) > 1:
            raise UsageError("give --asset NAME or --asset-uri URI, not both")
        return AssetScope(name=asset, uri=asset_uri)
    missing = [flag for flag, value in task_flags.items() if value is None]
    if missing:
        if not given_task:
            raise UsageError("no scope: give --dag, --run and --task, or --asset / --asset-uri")
        raise UsageError(f"incomplete task scope: missing {', '.join(missing)}")
    assert dag is not None and run is not None and task is not None
    return TaskScope(dag, run, task, -1 if map_index is None else map_index)
