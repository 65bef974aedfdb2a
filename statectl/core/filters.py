"""Row filters: which task and asset rows an operation selects, and the clock they are read against."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from statectl.core.scopes import ScopeFlags
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

    @property
    def wants_tasks(self) -> bool:
        return self.tasks and self.asset_name is None and self.asset_uri is None

    @property
    def wants_assets(self) -> bool:
        has_task_filter = any(v is not None for v in (self.dag_id, self.run_id, self.task_id, self.map_index))
        return self.assets and not has_task_filter and self.expired_before is None


def filter_from_flags(
    flags: ScopeFlags, *, assets: bool = False, tasks: bool = False, expired: bool = False
) -> RowFilter:
    """The rows the scope flags (and --assets, --tasks, --expired) of ls, migrate, prune and check select."""
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
    )
