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


def task_label(dag_id: str, run_id: str, task_id: str, map_index: int) -> str:
    """dag/run/task, with [map_index] for a mapped task: how a task scope is shown everywhere."""
    suffix = "" if map_index == -1 else f"[{map_index}]"
    return f"{dag_id}/{run_id}/{task_id}{suffix}"


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
        return task_label(self.dag_id, self.run_id, self.task_id, self.map_index)

    def __str__(self) -> str:
        return f"{self.kind} {self.label()}"


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

    def __str__(self) -> str:
        return f"{self.kind} {self.label()}"


Scope = TaskScope | AssetScope


@dataclass(eq=False)  # neither compared nor hashed; every command's start defines it: the cheapest dataclass
class ScopeFlags:
    """The addressing flags as given (None: not given): --dag --run --task --map-index, or --asset / --asset-uri.

    Commands on one scope make it with :meth:`scope`; commands on many rows filter by the same flags
    (``statectl.core.filters.filter_from_flags``)."""

    dag: str | None = None
    run: str | None = None
    task: str | None = None
    map_index: int | None = None
    asset: str | None = None
    asset_uri: str | None = None

    @property
    def given_task_flags(self) -> list[str]:
        named = (("--dag", self.dag), ("--run", self.run), ("--task", self.task), ("--map-index", self.map_index))
        return [flag for flag, value in named if value is not None]

    @property
    def given_asset_flags(self) -> list[str]:
        return [flag for flag, value in (("--asset", self.asset), ("--asset-uri", self.asset_uri)) if value is not None]

    def scope(self) -> Scope:
        """Exactly one scope, refusing incomplete or mixed sets of flags."""
        given_task, given_asset = self.given_task_flags, self.given_asset_flags
        if given_task and given_asset:
            raise UsageError(
                f"give either a task scope or an asset scope, not both ({', '.join(given_task + given_asset)})"
            )
        if given_asset:
            if len(given_asset) > 1:
                raise UsageError("give --asset NAME or --asset-uri URI, not both")
            return AssetScope(name=self.asset, uri=self.asset_uri)
        if self.dag is None or self.run is None or self.task is None:
            if not given_task:
                raise UsageError("no scope: give --dag, --run and --task, or --asset / --asset-uri")
            missing = [f for f, v in (("--dag", self.dag), ("--run", self.run), ("--task", self.task)) if v is None]
            raise UsageError(f"incomplete task scope: missing {', '.join(missing)}")
        return TaskScope(self.dag, self.run, self.task, -1 if self.map_index is None else self.map_index)
