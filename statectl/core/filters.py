"""Row filters: which task and asset rows an operation selects, and the clock they are read against."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from statectl.core.scopes import AssetScope, Scope, ScopeFlags, TaskScope
from statectl.core.shards import Shard
from statectl.errors import UsageError


def utcnow() -> datetime:
    return datetime.now(tz=UTC)


@dataclass(frozen=True)
class RowFilter:
    dag_id: str | None = None
    run_id: str | None = None
    task_id: str | None = None
    map_index: int | None = None
    asset_name: str | None = None
    asset_uri: str | None = None
    tasks: bool = True
    assets: bool = True
    expired_before: datetime | None = None  # only task rows with expires_at < this
    shard: Shard | None = None  # only the task state of the shard's dags (asset state: shard 0)

    @property
    def shard_label(self) -> str | None:
        """``I/N`` as reports show it; None when not sharded."""
        return None if self.shard is None else str(self.shard)

    @property
    def wants_tasks(self) -> bool:
        return self.tasks and self.asset_name is None and self.asset_uri is None

    @property
    def wants_assets(self) -> bool:
        has_task_filter = any(v is not None for v in (self.dag_id, self.run_id, self.task_id, self.map_index))
        return (
            self.assets
            and not has_task_filter
            and self.expired_before is None
            and (self.shard is None or self.shard.owns_assets)
        )

    def selects(self, scope: Scope, expires_at: datetime | None = None) -> bool:
        """Whether a row of this scope (and expiry) is one the filter selects: the query's WHERE, in Python."""
        if isinstance(scope, TaskScope):
            if not self.wants_tasks:
                return False
            if self.expired_before is not None and (expires_at is None or expires_at >= self.expired_before):
                return False
            pairs = ((self.dag_id, scope.dag_id), (self.run_id, scope.run_id), (self.task_id, scope.task_id))
            return (
                all(want is None or want == have for want, have in pairs)
                and (self.map_index is None or self.map_index == scope.map_index)
                and (self.shard is None or self.shard.owns_dag(scope.dag_id))
            )
        assert isinstance(scope, AssetScope)
        return (
            self.wants_assets
            and (self.asset_name is None or self.asset_name == scope.name)
            and (self.asset_uri is None or self.asset_uri == scope.uri)
        )


def filter_from_flags(
    flags: ScopeFlags, *, assets: bool = False, tasks: bool = False, expired: bool = False, shard: str | None = None
) -> RowFilter:
    """The rows the scope flags (and --assets, --tasks, --expired, --shard) of ls, migrate, prune and check select."""
    if assets and tasks:
        raise UsageError("--assets and --tasks exclude each other (give neither for both)")
    if (flags.given_asset_flags or assets) and (flags.given_task_flags or tasks or expired):
        raise UsageError(
            "task filters (--dag/--run/--task/--map-index/--tasks/--expired) and asset filters "
            "(--asset/--asset-uri/--assets) exclude each other"
        )
    return RowFilter(
        dag_id=flags.dag,
        run_id=flags.run,
        task_id=flags.task,
        map_index=flags.map_index,
        asset_name=flags.asset,
        asset_uri=flags.asset_uri,
        tasks=not assets,
        assets=not tasks and not expired,
        expired_before=utcnow() if expired else None,
        shard=None if shard is None else Shard.parse(shard),
    )
