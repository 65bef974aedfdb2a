"""Options shared by several commands (exact names: scripts depend on them)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from statectl.cli.render import Output
from statectl.errors import UsageError

if TYPE_CHECKING:
    from statectl.metastore import RowFilter

Dag = Annotated[str | None, typer.Option("--dag", help="DAG id of the task scope.")]
Run = Annotated[str | None, typer.Option("--run", help="Run id of the task scope.")]
Task = Annotated[str | None, typer.Option("--task", help="Task id of the task scope.")]
MapIndex = Annotated[int | None, typer.Option("--map-index", help="Map index (default -1, not mapped).")]
Asset = Annotated[str | None, typer.Option("--asset", help="Asset scope, by asset name.")]
AssetUri = Annotated[str | None, typer.Option("--asset-uri", help="Asset scope, by asset URI.")]
OutputOpt = Annotated[
    Output | None,
    typer.Option("-o", "--output", help="Output format (default: table on a terminal, plain otherwise)."),
]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Show what would change and change nothing.")]
Assets = Annotated[bool, typer.Option("--assets", help="Only asset state.")]
Tasks = Annotated[bool, typer.Option("--tasks", help="Only task state.")]


def row_filter(
    dag: str | None,
    run: str | None,
    task: str | None,
    map_index: int | None,
    asset: str | None,
    asset_uri: str | None,
    assets: bool,
    tasks: bool,
    expired: bool = False,
) -> RowFilter:
    """The rows the scope filters of ls, migrate and prune select."""
    from statectl.metastore import RowFilter, utcnow

    if assets and tasks:
        raise UsageError("--assets and --tasks exclude each other (give neither for both)")
    task_flags = any(v is not None for v in (dag, run, task, map_index))
    if (asset is not None or asset_uri is not None or assets) and (task_flags or tasks or expired):
        raise UsageError(
            "task filters (--dag/--run/--task/--map-index/--tasks/--expired) and asset filters "
            "(--asset/--asset-uri/--assets) exclude each other"
        )
    return RowFilter(
        dag_id=dag,
        run_id=run,
        task_id=task,
        map_index=map_index,
        asset_name=asset,
        asset_uri=asset_uri,
        tasks=not assets,
        assets=not tasks and not expired,
        expired_before=utcnow() if expired else None,
    )
