"""statectl prune: expired rows and their objects, orphan objects, old objects (cron-safe)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, Any, TextIO

import typer

from statectl.cli import options as opt
from statectl.cli.app import open_store
from statectl.cli.render import Output, ProgressDisplay, default_output, dumps, err, warn, write_records
from statectl.core.scopes import ScopeFlags

if TYPE_CHECKING:
    from statectl.ops.prune import PrunePlan, PruneReport

app = typer.Typer()


@app.command("prune")
def prune_cli(
    ctx: typer.Context,
    dag: opt.Dag = None,
    run: opt.Run = None,
    task: opt.Task = None,
    map_index: opt.MapIndex = None,
    asset: opt.Asset = None,
    asset_uri: opt.AssetUri = None,
    shard: opt.ShardOpt = None,
    no_orphans: Annotated[bool, typer.Option("--no-orphans", help="Do not look for orphan objects.")] = False,
    grace: Annotated[
        str,
        typer.Option(
            "--grace",
            help="Orphans younger than this are kept (default 1h: a worker writes the object first).",
            show_default=False,
        ),
    ] = "1h",
    older_than: Annotated[
        str | None,
        typer.Option("--older-than", help="Also remove objects last modified before this age, and their rows."),
    ] = None,
    max_delete: Annotated[
        int | None, typer.Option("--max-delete", help="Stop before deleting more than N rows + objects.")
    ] = None,
    lock_timeout: Annotated[
        str,
        typer.Option(
            "--lock-timeout", help="Take over a lock not renewed for this long (default 10m).", show_default=False
        ),
    ] = "10m",
    batch_size: Annotated[
        int,
        typer.Option("--batch-size", help="Rows or objects per batch (default and most: 1000).", show_default=False),
    ] = 1000,
    dry_run: opt.DryRun = False,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Run without asking (cron, scripts); a progress display on a terminal.")
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No output on success; only warnings and errors.")
    ] = False,
    output: opt.OutputOpt = None,
) -> int:
    """Remove expired task rows and their objects, then orphan objects older than --grace."""
    from statectl.core.durations import parse_duration
    from statectl.core.filters import filter_from_flags
    from statectl.ops.prune import PruneOptions, run_prune

    flt = filter_from_flags(ScopeFlags(dag, run, task, map_index, asset, asset_uri), shard=shard)
    options = PruneOptions(
        flt=flt,
        orphans=not no_orphans,
        grace=parse_duration(grace, "--grace"),
        older_than=parse_duration(older_than, "--older-than") if older_than else None,
        max_delete=max_delete,
        batch_size=batch_size,
    )
    options.check()
    timeout = parse_duration(lock_timeout, "--lock-timeout")
    fmt = output or default_output(sys.stdout)
    opt.require_yes(dry_run=dry_run, yes=yes, what="prune")

    def confirm(plan: PrunePlan) -> bool:
        _show_plan(plan, Output.table, sys.stderr)
        return opt.ask(f"Delete {plan.deletions} row(s) and object(s)?")

    with open_store(ctx) as store, ProgressDisplay(sys.stderr.isatty() and yes and not quiet) as progress:
        report = run_prune(
            store, options, dry_run=dry_run, confirm=None if yes else confirm, lock_timeout=timeout, progress=progress
        )
    code = int(report.exit_code)
    if not quiet or code != 0:
        _show(report, fmt, sys.stdout, quiet=quiet)
    return code


COLUMNS = ["category", "rows", "objects", "bytes"]


def _rows(categories: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"category": name, **{k: t[k] for k in ("rows", "objects", "bytes")}} for name, t in categories.items()]


def _show_plan(plan: PrunePlan, fmt: Output, out: TextIO) -> None:
    document = plan.as_dict()
    write_records(_rows(document["categories"]), COLUMNS, fmt, out, title="prune plan", header=True)
    for name, tally in document["categories"].items():
        for label in tally["first"]:
            err(f"  {name}: {label}")
        more = max(tally["rows"], tally["objects"]) - len(tally["first"])
        if more > 0 and tally["first"]:
            err(f"  {name}: ... and {more} more")


def _show(report: PruneReport, fmt: Output, out: TextIO, *, quiet: bool) -> None:
    document = report.as_dict()
    if fmt in (Output.json, Output.jsonl):
        out.write(dumps(document) + "\n")
    elif report.dry_run:
        _show_plan(report.plan, fmt, out)
        err("dry run: nothing changed")
    elif report.declined:
        err("nothing changed")
        return
    elif not quiet:
        write_records(_rows(document["deleted"]), COLUMNS, fmt, out, title="prune: deleted", header=True)
    # What needs a look goes to stderr in every format.
    for note in [*document["lock"], *document["plan"]["notes"]]:
        err(note)
    for label in document["changed_meanwhile"][:20]:
        warn(f"{label}: rewritten meanwhile (by a worker?); kept")
    for kept in document["kept"][:20]:
        warn(f"kept {kept['object']}: {kept['reason']}")
    for failed in document["object_errors"][:20]:
        warn(f"could not delete {failed['object']}: {failed['error']}")
    outside = document["plan"]["categories"]["outside_base"]
    for label in outside["first"]:
        warn(f"ref outside the base path, object left alone: {label}")
    if document["orphans_refused"]:
        warn(f"orphans not deleted: {document['orphans_refused']}")
    for category, count in document["beyond_plan"].items():
        warn(f"{category}: {count} more row(s) and object(s) became eligible after the plan; left for the next run")
    if report.stopped:
        warn(report.stopped)
