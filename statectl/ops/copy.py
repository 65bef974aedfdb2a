"""cp and mv: keys copied to the scope made by replacing parts of their own (another run, dag, task, map
index or asset), written as the workers would (:mod:`statectl.ops.ingest`); mv then removes each source
row that still holds what was copied, and its object.

Each --to-X needs the source to name its X (--to-run needs --run, ...), so that every source scope maps
to exactly one target and no target row is ever selected as a source.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from statectl.core.filters import RowFilter
from statectl.core.scopes import AssetScope, Scope, TaskScope, check_key, check_segment
from statectl.errors import NotFoundError, StatectlError, UsageError
from statectl.ops.ingest import Incoming, Ingest, IngestReport, OnConflict, run_ingest
from statectl.ops.read import read_values
from statectl.ops.report import Confirm, Progress
from statectl.ops.write import Expiry
from statectl.stores.bucket import Result
from statectl.stores.metastore import StateRow
from statectl.stores.store import StateStore

DEFAULT_BATCH = 500


@dataclass(frozen=True)
class Retarget:
    """The parts of the source scope that the target replaces (None: kept)."""

    dag: str | None = None
    run: str | None = None
    task: str | None = None
    map_index: int | None = None
    asset: str | None = None
    asset_uri: str | None = None

    @property
    def given(self) -> list[str]:
        named = (
            ("--to-dag", self.dag),
            ("--to-run", self.run),
            ("--to-task", self.task),
            ("--to-map-index", self.map_index),
            ("--to-asset", self.asset),
            ("--to-asset-uri", self.asset_uri),
        )
        return [flag for flag, value in named if value is not None]

    @property
    def for_assets(self) -> bool:
        return self.asset is not None or self.asset_uri is not None

    def task_scope(self, scope: TaskScope) -> TaskScope:
        return replace(
            scope,
            dag_id=self.dag if self.dag is not None else scope.dag_id,
            run_id=self.run if self.run is not None else scope.run_id,
            task_id=self.task if self.task is not None else scope.task_id,
            map_index=self.map_index if self.map_index is not None else scope.map_index,
        )


@dataclass(frozen=True)
class CopyOptions:
    flt: RowFilter  # the source rows: scope flags as ls takes them
    to: Retarget
    keys: tuple[str, ...] | None = None  # None: every key of the selected scopes
    on_conflict: OnConflict = OnConflict.SKIP
    expiry: Expiry = field(default_factory=Expiry)
    move: bool = False
    batch_size: int = DEFAULT_BATCH

    @property
    def verb(self) -> str:
        return "mv" if self.move else "cp"

    def check(self) -> None:
        """Refuse a target that does not fit the source, or is the source."""
        flt, to = self.flt, self.to
        if self.batch_size < 1:
            raise UsageError("--batch-size must be 1 or more")
        for key in self.keys or ():
            check_key(key)
        if not to.given:
            raise UsageError(
                "no target: give --to-dag, --to-run, --to-task, --to-map-index, --to-asset or --to-asset-uri"
            )
        source_is_asset = flt.asset_name is not None or flt.asset_uri is not None
        source_is_task = flt.dag_id is not None
        if to.for_assets:
            if len([f for f in to.given if f.startswith("--to-asset")]) != len(to.given):
                raise UsageError(f"{', '.join(to.given)}: an asset target and a task target exclude each other")
            if to.asset is not None and to.asset_uri is not None:
                raise UsageError("give --to-asset NAME or --to-asset-uri URI, not both")
            if not source_is_asset:
                raise UsageError(f"{to.given[0]} copies asset state: give the source asset (--asset or --asset-uri)")
            if to.asset is not None:
                check_segment(to.asset, "asset name")
            if to.asset_uri is not None:
                check_segment(to.asset_uri, "asset uri")
            if (to.asset is not None and to.asset == flt.asset_name) or (
                to.asset_uri is not None and to.asset_uri == flt.asset_uri
            ):
                raise UsageError("the target asset is the source asset: nothing to copy")
            return
        if not source_is_task:
            raise UsageError(f"{to.given[0]} copies task state: give the source scope (at least --dag)")
        needs = (
            ("--to-dag", to.dag, "--dag", flt.dag_id),
            ("--to-run", to.run, "--run", flt.run_id),
            ("--to-task", to.task, "--task", flt.task_id),
            ("--to-map-index", to.map_index, "--map-index", flt.map_index),
        )
        for flag, target, source_flag, source in needs:
            if target is None:
                continue
            if source is None:
                # Without it, many source scopes would map to one target scope.
                raise UsageError(f"{flag} needs the source's {source_flag}")
            if isinstance(target, str):
                check_segment(target, flag.removeprefix("--to-").replace("-", " "))
        if to.map_index is not None and to.map_index < -1:
            raise UsageError(f"--to-map-index must be -1 or more, got {to.map_index}")
        if all(target is None or target == source for _, target, _, source in needs):
            raise UsageError("the target scope is the source scope: nothing to copy")


class _Copy:
    """The source rows as incoming values at their target scopes (read afresh on each pass)."""

    def __init__(self, store: StateStore, options: CopyOptions, target_asset: AssetScope | None) -> None:
        self.store = store
        self.options = options
        self.target_asset = target_asset
        self.missing_keys: set[str] = set(options.keys or ())
        self.selected = 0

    def target(self, scope: Scope) -> Scope:
        if isinstance(scope, TaskScope):
            return self.options.to.task_scope(scope)
        assert self.target_asset is not None
        return self.target_asset

    def batches(self) -> Iterator[list[Incoming]]:
        keys = set(self.options.keys) if self.options.keys is not None else None
        for rows in self.store.metastore.iter_batches(self.options.flt, self.options.batch_size):
            if keys is not None:
                rows = [r for r in rows if r.key in keys]
            if not rows:
                continue
            self.selected += len(rows)
            self.missing_keys.difference_update(r.key for r in rows)
            values = read_values(self.store, rows)
            yield [self._incoming(row, value) for row, value in zip(rows, values, strict=True)]

    def _incoming(self, row: StateRow, value: Result[Any]) -> Incoming:
        error = value.message if isinstance(value, StatectlError) else None
        return Incoming(
            self.target(row.scope),
            row.key,
            None if error else value,
            row.expires_at,
            row.writer,
            source=row if self.options.move else None,
            error=f"source {row.label}: {error}" if error else None,
        )


def _target_asset(store: StateStore, options: CopyOptions) -> AssetScope | None:
    """The target asset, which must exist and be active; refused when it is the source asset."""
    to = options.to
    if not to.for_assets:
        return None
    target = store.metastore.resolve_asset(AssetScope(name=to.asset, uri=to.asset_uri))
    source = store.metastore.resolve_asset(AssetScope(name=options.flt.asset_name, uri=options.flt.asset_uri))
    if source.asset_id == target.asset_id:
        raise UsageError(f"the target asset is the source asset ({source}): nothing to copy")
    return target


def run_copy(
    store: StateStore,
    options: CopyOptions,
    *,
    dry_run: bool = False,
    confirm: Confirm[IngestReport] | None = None,
    progress: Progress | None = None,
) -> IngestReport:
    """Plan (every source key read, every target looked at), ask, then copy batch by batch; for mv,
    remove each source row once its target holds the value."""
    options.check()
    ingest = Ingest(store, options.verb, options.on_conflict, options.expiry, remove_sources=options.move)
    store.check_reachable(ingest.base)
    copy = _Copy(store, options, _target_asset(store, options))
    flt = options.flt
    if options.to.run is not None:
        target_run = (options.to.dag or flt.dag_id, options.to.run)
        assert target_run[0] is not None
        if not store.metastore.dag_run_ids([(target_run[0], target_run[1])]):
            raise NotFoundError(f"no dag run {target_run[1]!r} of dag {target_run[0]!r} (the target)")

    def check_plan(_plan: IngestReport) -> None:
        if copy.missing_keys:
            listed = ", ".join(repr(k) for k in sorted(copy.missing_keys))
            raise NotFoundError(f"no key {listed} in the source scope; nothing changed")
        if not copy.selected:
            raise NotFoundError("the source scope holds no keys; nothing changed")

    return run_ingest(ingest, copy.batches, dry_run=dry_run, confirm=confirm, progress=progress, check_plan=check_plan)
