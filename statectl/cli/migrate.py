"""statectl migrate: to-bucket, to-metastore, relocate."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from statectl.cli import options as opt
from statectl.cli.main import app, results_only_on_stdout, state
from statectl.cli.render import Output, default_output, dumps, err, warn, write_records
from statectl.errors import ExitCode, UsageError

migrate_app = typer.Typer(
    help="Move state between the metastore and the bucket, or between buckets, without losing a value.",
    no_args_is_help=True,
)
app.add_typer(migrate_app, name="migrate")

Yes = Annotated[bool, typer.Option("--yes", "-y", help="Run without asking (cron, scripts).")]
BatchSize = Annotated[int, typer.Option("--batch-size", help="Rows per batch (one transaction each).")]
Concurrency = Annotated[int | None, typer.Option("--concurrency", help="Parallel object I/O (default: global).")]


def _run(
    ctx: typer.Context,
    direction: str,
    flt: Any,
    *,
    dry_run: bool,
    yes: bool,
    batch_size: int,
    concurrency: int | None,
    output: Output | None,
    to: str | None = None,
    compression: str | None = None,
    keep_objects: bool = False,
) -> int:
    from statectl.migrate import Direction, Migration, build_target

    fmt = output or default_output(sys.stdout)
    interactive = sys.stdin.isatty() and sys.stderr.isatty()
    if not dry_run and not yes and not interactive:
        raise UsageError("refusing to migrate without --yes when not on a terminal (or use --dry-run)")
    app_state = state(ctx)
    if concurrency is not None:
        if not 1 <= concurrency <= 256:
            raise UsageError("--concurrency must be between 1 and 256")
        app_state.concurrency = concurrency
    store = app_state.store()
    out = sys.stdout
    try:
        with results_only_on_stdout():
            if compression is not None and compression.lower() in ("", "none"):
                compression = ""
            target = build_target(
                store, Direction(direction), to=to, compression=compression, keep_objects=keep_objects
            )
            migration = Migration(store, target, flt, batch_size=batch_size)
            store.check_reachable(target.base, target.source_base)
            total = migration.count()
            if total == 0:
                err("no rows match the filters: nothing to migrate")
            if dry_run or not yes:
                plan = _with_progress(lambda p: migration.plan(p), total, "planning", interactive)
                _show(plan, fmt if dry_run else Output.table, out if dry_run else sys.stderr)
                if dry_run:
                    return 0
                if not typer.confirm(f"Migrate {total} row(s) {direction}?", default=False, err=True):
                    err("nothing changed")
                    return int(ExitCode.USAGE)
            report = _with_progress(lambda p: migration.execute(p), total, direction, interactive)
    finally:
        store.close()
    _show(report, fmt, out)
    _advise(store, target, report)
    if not report.ok:
        for label in report.changed_meanwhile[:20]:
            warn(f"{label}: rewritten meanwhile (by a worker?); left as it is, re-run to migrate it")
        for label, error in report.failed[:20]:
            warn(f"{label}: {error}")
        if report.interrupted:
            warn(f"stopped: {report.interrupted}; what was done is consistent, re-run to finish")
        return int(ExitCode.PARTIAL)
    return 0


def _with_progress(work: Any, total: int, label: str, interactive: bool) -> Any:
    """A rich progress bar on stderr for people; nothing for scripts."""
    if not interactive or total == 0:
        return work(None)
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, TransferSpeedColumn(), console=_stderr_console(), transient=True) as progress:
        task_id = progress.add_task(label, total=total)
        return work(lambda rows, _bytes: progress.advance(task_id, rows))


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(file=sys.stderr)


def _show(report: Any, fmt: Output, out: Any) -> None:
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


def _advise(store: Any, target: Any, report: Any) -> None:
    """The configuration the workers need next, so that they read what statectl wrote."""
    from statectl.config import OBJECT_STORAGE_BACKEND
    from statectl.migrate import Direction

    if report.dry_run:
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
    dry_run: opt.DryRun = False,
    yes: Yes = False,
    batch_size: BatchSize = 500,
    concurrency: Concurrency = None,
    output: opt.OutputOpt = None,
) -> int:
    """Rewrite rows as a worker with the object storage backend would: objects at or above the threshold."""
    flt = opt.row_filter(dag, run, task, map_index, asset, asset_uri, assets, tasks)
    return _run(
        ctx, "to-bucket", flt, dry_run=dry_run, yes=yes, batch_size=batch_size, concurrency=concurrency, output=output
    )


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
    keep_objects: Annotated[
        bool, typer.Option("--keep-objects", help="Keep the objects after the rows hold the values.")
    ] = False,
    dry_run: opt.DryRun = False,
    yes: Yes = False,
    batch_size: BatchSize = 500,
    concurrency: Concurrency = None,
    output: opt.OutputOpt = None,
) -> int:
    """Put every value back in its row as plain JSON, then delete the objects it referenced."""
    flt = opt.row_filter(dag, run, task, map_index, asset, asset_uri, assets, tasks)
    return _run(
        ctx,
        "to-metastore",
        flt,
        dry_run=dry_run,
        yes=yes,
        batch_size=batch_size,
        concurrency=concurrency,
        output=output,
        keep_objects=keep_objects,
    )


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
    dry_run: opt.DryRun = False,
    yes: Yes = False,
    batch_size: BatchSize = 500,
    concurrency: Concurrency = None,
    output: opt.OutputOpt = None,
) -> int:
    """Move the objects of the selected rows to a new base path and/or compression."""
    flt = opt.row_filter(dag, run, task, map_index, asset, asset_uri, assets, tasks)
    return _run(
        ctx,
        "relocate",
        flt,
        dry_run=dry_run,
        yes=yes,
        batch_size=batch_size,
        concurrency=concurrency,
        output=output,
        to=to,
        compression=compression,
    )
