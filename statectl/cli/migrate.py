"""statectl migrate: to-bucket, to-metastore, relocate."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, TextIO

import typer

from statectl.cli import options as opt
from statectl.cli.app import open_store
from statectl.cli.render import Output, ProgressDisplay, default_output, dumps, err, warn, write_records
from statectl.core.scopes import ScopeFlags

if TYPE_CHECKING:
    from statectl.ops.migrate import MigrationOptions, MigrationReport
    from statectl.stores.store import StateStore

app = typer.Typer()
migrate_app = typer.Typer(
    help="Move state between the metastore and the bucket, or between buckets, without losing a value.",
    no_args_is_help=True,
)
app.add_typer(migrate_app, name="migrate")

BatchSize = Annotated[int, typer.Option("--batch-size", help="Rows per batch (one transaction each).")]
Concurrency = Annotated[int | None, typer.Option("--concurrency", help="Parallel object I/O (default: global).")]


def _run(
    ctx: typer.Context,
    options: MigrationOptions,
    *,
    dry_run: bool,
    yes: bool,
    concurrency: int | None,
    output: Output | None,
) -> int:
    from statectl.ops.migrate import run_migration

    fmt = output or default_output(sys.stdout)
    direction = options.direction.value
    interactive = opt.require_yes(dry_run=dry_run, yes=yes, what="migrate")

    display = ProgressDisplay(interactive)

    def confirm(plan: MigrationReport) -> bool:
        with display.paused():
            _show(plan, Output.table, sys.stderr)
            return opt.ask(f"Migrate {plan.selected} row(s) {direction}?")

    with open_store(ctx, concurrency=concurrency) as store, display as progress:
        report = run_migration(store, options, dry_run=dry_run, confirm=None if yes else confirm, progress=progress)
    if report.selected == 0:
        err("no rows match the filters: nothing to migrate")
    if report.declined:
        err("nothing changed")
        return int(report.exit_code)
    _show(report, fmt, sys.stdout)
    _advise(store, report)
    if not report.ok:
        for label in report.changed_meanwhile[:20]:
            warn(f"{label}: rewritten meanwhile (by a worker?); left as it is, re-run to migrate it")
        for label, error in report.failed[:20]:
            warn(f"{label}: {error}")
        if report.interrupted:
            warn(f"stopped: {report.interrupted}; what was done is consistent, re-run to finish")
    return int(report.exit_code)


def _show(report: MigrationReport, fmt: Output, out: TextIO) -> None:
    document = report.as_dict()
    if fmt in (Output.json, Output.jsonl):
        out.write(dumps(document) + "\n")
    else:
        records = [
            {"action": action, "rows": tally["rows"], "bytes": tally["bytes"]}
            for action, tally in document["actions"].items()
            if tally["rows"]
        ]
        title = f"migrate {document['direction']}" + (" (dry run: nothing changed)" if report.dry_run else "")
        write_records(records, ["action", "rows", "bytes"], fmt, out, title=title)
        if report.dry_run:
            err(f"objects to write: {report.objects_to_write}, objects to delete: {report.objects_to_delete}")
        else:
            err(f"objects written: {report.objects_written}, objects deleted: {report.objects_deleted}")
    # The rows that need a look go to stderr in every format (scripts keep stdout, logs keep these).
    for row, reason in report.skipped[:20]:
        warn(f"skipped {row}: {reason}")
    if len(report.skipped) > 20:
        warn(f"... and {len(report.skipped) - 20} more skipped (see -o json)")
    for url, why in report.objects_left[:20]:
        warn(f"object left in place: {url} ({why})")
    for label in report.over_limit[:20]:
        warn(f"{label} is over [state_store] max_value_storage_bytes: moved; the REST API would refuse it")


def _advise(store: StateStore, report: MigrationReport) -> None:
    """The configuration the workers need next, so that they read what statectl wrote."""
    from statectl.core.config import OBJECT_STORAGE_BACKEND
    from statectl.ops.migrate import Direction

    target = report.target
    if report.dry_run or target is None:
        return
    # Until every row is migrated, workers on the new configuration would misread the rest.
    nxt = "next, on every worker" if report.ok else "once a re-run exits 0, on every worker"
    if target.direction is Direction.TO_BUCKET and store.config.worker_backend != OBJECT_STORAGE_BACKEND:
        err(f"{nxt}: AIRFLOW__WORKERS__STATE_STORE_BACKEND={OBJECT_STORAGE_BACKEND}")
    elif target.direction is Direction.TO_METASTORE and store.config.worker_backend:
        err(f"{nxt}: unset [workers] state_store_backend (AIRFLOW__WORKERS__STATE_STORE_BACKEND)")
    elif target.direction is Direction.RELOCATE:
        err(f"{nxt}: AIRFLOW__COMMON_IO__STATE_STORE_OBJECTSTORAGE_PATH={target.base}")
        if target.compression != store.config.compression:
            err(f"and AIRFLOW__COMMON_IO__STATE_STORE_OBJECTSTORAGE_COMPRESSION={target.compression or ''}")


@migrate_app.command("to-bucket")
def to_bucket_cli(
    ctx: typer.Context,
    dag: opt.Dag = None,
    run: opt.Run = None,
    task: opt.Task = None,
    map_index: opt.MapIndex = None,
    asset: opt.Asset = None,
    asset_uri: opt.AssetUri = None,
    assets: opt.Assets = False,
    tasks: opt.Tasks = False,
    shard: opt.ShardOpt = None,
    dry_run: opt.DryRun = False,
    yes: opt.Yes = False,
    batch_size: BatchSize = 500,
    concurrency: Concurrency = None,
    output: opt.OutputOpt = None,
) -> int:
    """Rewrite rows as a worker with the object storage backend would: objects at or above the threshold."""
    from statectl.core.filters import filter_from_flags
    from statectl.ops.migrate import Direction, MigrationOptions

    flt = filter_from_flags(
        ScopeFlags(dag, run, task, map_index, asset, asset_uri), assets=assets, tasks=tasks, shard=shard
    )
    options = MigrationOptions(Direction.TO_BUCKET, flt, batch_size=batch_size)
    return _run(ctx, options, dry_run=dry_run, yes=yes, concurrency=concurrency, output=output)


@migrate_app.command("to-metastore")
def to_metastore_cli(
    ctx: typer.Context,
    dag: opt.Dag = None,
    run: opt.Run = None,
    task: opt.Task = None,
    map_index: opt.MapIndex = None,
    asset: opt.Asset = None,
    asset_uri: opt.AssetUri = None,
    assets: opt.Assets = False,
    tasks: opt.Tasks = False,
    shard: opt.ShardOpt = None,
    keep_objects: Annotated[
        bool, typer.Option("--keep-objects", help="Keep the objects after the rows hold the values.")
    ] = False,
    dry_run: opt.DryRun = False,
    yes: opt.Yes = False,
    batch_size: BatchSize = 500,
    concurrency: Concurrency = None,
    output: opt.OutputOpt = None,
) -> int:
    """Put every value back in its row as plain JSON, then delete the objects it referenced."""
    from statectl.core.filters import filter_from_flags
    from statectl.ops.migrate import Direction, MigrationOptions

    flt = filter_from_flags(
        ScopeFlags(dag, run, task, map_index, asset, asset_uri), assets=assets, tasks=tasks, shard=shard
    )
    options = MigrationOptions(Direction.TO_METASTORE, flt, keep_objects=keep_objects, batch_size=batch_size)
    return _run(ctx, options, dry_run=dry_run, yes=yes, concurrency=concurrency, output=output)


@migrate_app.command("relocate")
def relocate_cli(
    ctx: typer.Context,
    to: Annotated[str, typer.Option("--to", help="The new base path, e.g. s3://conn@bucket/state.")],
    compression: Annotated[
        str | None, typer.Option("--compression", help="The new objects' compression (default: current).")
    ] = None,
    dag: opt.Dag = None,
    run: opt.Run = None,
    task: opt.Task = None,
    map_index: opt.MapIndex = None,
    asset: opt.Asset = None,
    asset_uri: opt.AssetUri = None,
    assets: opt.Assets = False,
    tasks: opt.Tasks = False,
    shard: opt.ShardOpt = None,
    dry_run: opt.DryRun = False,
    yes: opt.Yes = False,
    batch_size: BatchSize = 500,
    concurrency: Concurrency = None,
    output: opt.OutputOpt = None,
) -> int:
    """Move the objects of the selected rows to a new base path and/or compression."""
    from statectl.core.filters import filter_from_flags
    from statectl.ops.migrate import Direction, MigrationOptions

    if compression is not None and compression.lower() in ("", "none"):
        compression = ""  # uncompressed
    flt = filter_from_flags(
        ScopeFlags(dag, run, task, map_index, asset, asset_uri), assets=assets, tasks=tasks, shard=shard
    )
    options = MigrationOptions(Direction.RELOCATE, flt, to=to, compression=compression, batch_size=batch_size)
    return _run(ctx, options, dry_run=dry_run, yes=yes, concurrency=concurrency, output=output)
