"""Commands that move state between deployments and scopes: export, import, cp, mv."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TextIO

import typer

from statectl.cli import options as opt
from statectl.cli.app import open_store
from statectl.cli.render import Output, ProgressDisplay, default_output, dumps, err, warn, write_records
from statectl.core.scopes import ScopeFlags
from statectl.errors import UsageError

if TYPE_CHECKING:
    from statectl.ops.ingest import IngestReport, OnConflict
    from statectl.ops.report import Confirm, Progress
    from statectl.ops.write import Expiry
    from statectl.stores.store import StateStore

app = typer.Typer()

KeyGlob = Annotated[str | None, typer.Option("--key", help="Only keys matching this glob, e.g. 'job_*'.")]
Concurrency = Annotated[int | None, typer.Option("--concurrency", help="Parallel object I/O (default: global).")]
BatchSize = Annotated[
    int, typer.Option("--batch-size", help="Keys per batch (one transaction each; default 500).", show_default=False)
]
OnConflictOpt = Annotated[
    str,
    typer.Option(
        "--on-conflict",
        help="A key already at the target with another value: skip (keep it, the default), overwrite, "
        "or fail (stop before any change).",
        show_default=False,
    ),
]
Ttl = Annotated[str | None, typer.Option("--ttl", help="Task values: expire this long after the write, e.g. 7d.")]
NeverExpire = Annotated[bool, typer.Option("--never-expire", help="Task values: never expire.")]
KeepExpiry = Annotated[bool, typer.Option("--keep-expiry", help="Task values keep their own expires_at (the default).")]


def _on_conflict(text: str) -> OnConflict:
    from statectl.ops.ingest import OnConflict

    try:
        return OnConflict(text)
    except ValueError:
        raise UsageError(f"--on-conflict {text!r}: choose skip, overwrite or fail") from None


def _expiry(ttl: str | None, never_expire: bool, keep_expiry: bool) -> Expiry:
    from statectl.core.durations import parse_duration
    from statectl.ops.write import Expiry

    given = [
        flag
        for flag, on in (("--ttl", ttl is not None), ("--never-expire", never_expire), ("--keep-expiry", keep_expiry))
        if on
    ]
    if len(given) > 1:
        raise UsageError(f"{' and '.join(given)} exclude each other")
    return Expiry(ttl=parse_duration(ttl, "--ttl") if ttl else None, never=never_expire)


# -- export --------------------------------------------------------------------------------


@app.command("export")
def export_cli(
    ctx: typer.Context,
    dag: opt.Dag = None,
    run: opt.Run = None,
    task: opt.Task = None,
    map_index: opt.MapIndex = None,
    asset: opt.Asset = None,
    asset_uri: opt.AssetUri = None,
    assets: opt.Assets = False,
    tasks: opt.Tasks = False,
    expired: Annotated[bool, typer.Option("--expired", help="Only task rows whose expires_at has passed.")] = False,
    key: KeyGlob = None,
    file: Annotated[
        str,
        typer.Option("--file", "-f", help="Write the snapshot here (gzip when it ends in .gz); - is stdout."),
    ] = "-",
    batch_size: BatchSize = 500,
    concurrency: Concurrency = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count what would be exported; read no object, write no file.")
    ] = False,
    output: opt.OutputOpt = None,
) -> int:
    """Write the selected state as a snapshot: a JSON Lines header, then one line per key with its decoded
    value, expiry, where it lived and a sha256. Unreadable values are lines that say so (exit 8)."""
    from statectl.core.filters import filter_from_flags
    from statectl.ops.snapshot import ExportOptions, plan_export, run_export, snapshot_writer

    flt = filter_from_flags(
        ScopeFlags(dag, run, task, map_index, asset, asset_uri), assets=assets, tasks=tasks, expired=expired
    )
    options = ExportOptions(flt, key_glob=key, batch_size=batch_size)
    options.check()
    to_stdout = file == "-"
    if dry_run:
        with open_store(ctx, concurrency=concurrency) as store:
            plan = plan_export(store, options, file)
        document = plan.as_dict()
        if (output or default_output(sys.stdout)) in (Output.json, Output.jsonl):
            sys.stdout.write(dumps(document) + "\n")
        else:
            err(
                f"would export {plan.keys} key(s) ({plan.task_keys} task, {plan.asset_keys} asset; "
                f"{plan.objects_read} object(s) to read); dry run: nothing written"
            )
        return int(plan.exit_code)
    if to_stdout and sys.stdout.isatty():
        raise UsageError("refusing to write a snapshot to a terminal: give --file PATH, or redirect stdout")
    path = None if to_stdout else Path(file)
    fmt = output or default_output(sys.stderr if to_stdout else sys.stdout)
    stdout = sys.stdout  # the snapshot streams to the real stdout while library output goes to stderr
    with (
        open_store(ctx, concurrency=concurrency) as store,
        ProgressDisplay(sys.stderr.isatty()) as progress,
        snapshot_writer(path, stdout) as out,
    ):
        report = run_export(store, options, out, destination=file, progress=progress)
    document = report.as_dict()
    summary = sys.stderr if to_stdout else sys.stdout  # stdout holds the snapshot itself
    if fmt in (Output.json, Output.jsonl):
        summary.write(dumps(document) + "\n")
    else:
        where = "stdout" if to_stdout else file
        err(
            f"exported {report.keys} key(s) ({report.task_keys} task, {report.asset_keys} asset; "
            f"{report.objects_read} object(s) read) to {where}"
        )
    for label, error in report.errors[:20]:
        warn(f"{label}: not exported: {error}")
    if report.error_count > 20:
        warn(f"... and {report.error_count - 20} more unreadable (see -o json)")
    return int(report.exit_code)


# -- the writing commands ----------------------------------------------------------------------


def _run_writing(
    ctx: typer.Context,
    run: Callable[[StateStore, Confirm[IngestReport] | None, Progress | None], IngestReport],
    *,
    what: str,
    dry_run: bool,
    yes: bool,
    concurrency: int | None,
    output: Output | None,
) -> int:
    fmt = output or default_output(sys.stdout)
    interactive = opt.require_yes(dry_run=dry_run, yes=yes, what=what)
    display = ProgressDisplay(interactive)

    def confirm(plan: IngestReport) -> bool:
        with display.paused():
            _show(plan, Output.table, sys.stderr)
            return opt.ask(f"{what.capitalize()} {plan.total} key(s)?")

    with open_store(ctx, concurrency=concurrency) as store, display as progress:
        report = run(store, None if yes else confirm, progress)
    if report.declined:
        err("nothing changed")
        return int(report.exit_code)
    _show(report, fmt, sys.stdout)
    return int(report.exit_code)


def _show(report: IngestReport, fmt: Output, out: TextIO) -> None:
    document = report.as_dict()
    if fmt in (Output.json, Output.jsonl):
        out.write(dumps(document) + "\n")
    else:
        records = [
            {"outcome": name, "keys": tally["count"]} for name, tally in document["outcomes"].items() if tally["count"]
        ]
        title = f"{report.verb}" + (" (dry run: nothing changed)" if report.dry_run else "")
        write_records(records, ["outcome", "keys"], fmt, out, title=title, header=True)
        if not report.dry_run:
            moved = f", source rows removed: {report.sources_removed}" if report.verb == "mv" else ""
            err(f"objects written: {report.objects_written}, objects deleted: {report.objects_deleted}{moved}")
        elif report.total == 0:
            err("nothing selected")
    # What needs a look goes to stderr in every format.
    for outcome, label, why in report.problems[:20]:
        warn(f"{outcome}: {label}: {why}")
    problems = sum(document["outcomes"][o]["count"] for o in ("no-target", "unreadable", "failed", "changed"))
    if problems > 20:
        warn(f"... and {problems - 20} more (see -o json)")
    kept = document["outcomes"]["kept"]
    if kept["count"]:
        more = f" and {kept['count'] - len(kept['first'])} more" if kept["count"] > len(kept["first"]) else ""
        err(f"kept at the target (--on-conflict skip): {', '.join(kept['first'][:3])}{more}")
    for label, why in report.sources_kept[:20]:
        warn(f"source kept: {label}: {why}")
    for url, error in report.object_errors[:20]:
        warn(f"object {url} not deleted: {error} (statectl prune will retry)")
    for label in report.over_limit[:20]:
        warn(
            f"{label} is over [state_store] max_value_storage_bytes: written as a worker would "
            "(the REST API would refuse it)"
        )
    if report.interrupted:
        warn(f"stopped: {report.interrupted}; what was done is consistent, re-run to finish")


@contextmanager
def _snapshot_path(source: str) -> Iterator[Path]:
    """The snapshot as a file import can read twice: PATH, or stdin spooled to a temporary file."""
    if source != "-":
        yield Path(source)
        return
    with tempfile.TemporaryDirectory(prefix="statectl-import-") as folder:
        spooled = Path(folder) / "snapshot"
        with spooled.open("wb") as out:
            shutil.copyfileobj(sys.stdin.buffer, out, 1 << 20)
        yield spooled


@app.command("import")
def import_cli(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="The snapshot file (gzip or not); - reads stdin.", metavar="PATH|-")],
    dag: opt.Dag = None,
    run: opt.Run = None,
    task: opt.Task = None,
    map_index: opt.MapIndex = None,
    asset: opt.Asset = None,
    asset_uri: opt.AssetUri = None,
    assets: opt.Assets = False,
    tasks: opt.Tasks = False,
    key: KeyGlob = None,
    on_conflict: OnConflictOpt = "skip",
    ttl: Ttl = None,
    never_expire: NeverExpire = False,
    keep_expiry: KeepExpiry = False,
    batch_size: BatchSize = 500,
    concurrency: Concurrency = None,
    dry_run: opt.DryRun = False,
    yes: opt.Yes = False,
    output: opt.OutputOpt = None,
) -> int:
    """Write a snapshot's values as this deployment's workers would (its threshold, compression and base
    path), each object before its row. Every line is checked before anything changes. Task rows need their
    dag run and asset rows their asset here: others are reported and skipped (exit 8)."""
    from statectl.core.filters import filter_from_flags
    from statectl.ops.snapshot import ImportOptions, run_import

    flt = filter_from_flags(ScopeFlags(dag, run, task, map_index, asset, asset_uri), assets=assets, tasks=tasks)
    conflict, expiry = _on_conflict(on_conflict), _expiry(ttl, never_expire, keep_expiry)
    if source == "-" and not yes and not dry_run:
        raise UsageError("a snapshot on stdin needs --yes (or --dry-run): the question would read stdin")
    with _snapshot_path(source) as path:
        options = ImportOptions(path, flt, key, conflict, expiry, batch_size)

        def run_it(store: StateStore, confirm: Confirm[IngestReport] | None, progress: Progress | None) -> IngestReport:
            return run_import(store, options, dry_run=dry_run, confirm=confirm, progress=progress)

        return _run_writing(
            ctx, run_it, what="import", dry_run=dry_run, yes=yes, concurrency=concurrency, output=output
        )


def _copy_cli(ctx: typer.Context, move: bool, keys: list[str] | None, flags: dict[str, Any]) -> int:
    from statectl.core.filters import filter_from_flags
    from statectl.ops.copy import CopyOptions, Retarget, run_copy

    scope = ScopeFlags(
        flags["dag"], flags["run"], flags["task"], flags["map_index"], flags["asset"], flags["asset_uri"]
    )
    flt = filter_from_flags(scope)
    to = Retarget(
        flags["to_dag"],
        flags["to_run"],
        flags["to_task"],
        flags["to_map_index"],
        flags["to_asset"],
        flags["to_asset_uri"],
    )
    is_asset = flags["asset"] is not None or flags["asset_uri"] is not None
    if is_asset and (flags["ttl"] is not None or flags["never_expire"]):
        raise UsageError("asset state has no expiry; --ttl and --never-expire are for task state")
    options = CopyOptions(
        flt,
        to,
        keys=tuple(keys) if keys else None,
        on_conflict=_on_conflict(flags["on_conflict"]),
        expiry=_expiry(flags["ttl"], flags["never_expire"], flags["keep_expiry"]),
        move=move,
        batch_size=flags["batch_size"],
    )
    options.check()

    def run_it(store: StateStore, confirm: Confirm[IngestReport] | None, progress: Progress | None) -> IngestReport:
        return run_copy(store, options, dry_run=flags["dry_run"], confirm=confirm, progress=progress)

    return _run_writing(
        ctx,
        run_it,
        what="move" if move else "copy",
        dry_run=flags["dry_run"],
        yes=flags["yes"],
        concurrency=flags["concurrency"],
        output=flags["output"],
    )


ToDag = Annotated[
    str | None, typer.Option("--to-dag", help="Target: this dag_id (a renamed DAG); runs keep their run_id.")
]
ToRun = Annotated[str | None, typer.Option("--to-run", help="Target: this run of the dag (resume from a run's state).")]
ToTask = Annotated[str | None, typer.Option("--to-task", help="Target: this task_id.")]
ToMapIndex = Annotated[int | None, typer.Option("--to-map-index", help="Target: this map index.")]
ToAsset = Annotated[str | None, typer.Option("--to-asset", help="Target: the asset with this name (a renamed asset).")]
ToAssetUri = Annotated[str | None, typer.Option("--to-asset-uri", help="Target: the asset with this URI.")]
Keys = Annotated[list[str] | None, typer.Argument(help="The keys to copy (default: every key of the scope).")]


def _copy_command(move: bool, doc: str) -> Callable[..., int]:
    """cp and mv take the same flags; mv removes the sources once copied."""

    def command(
        ctx: typer.Context,
        keys: Keys = None,
        dag: opt.Dag = None,
        run: opt.Run = None,
        task: opt.Task = None,
        map_index: opt.MapIndex = None,
        asset: opt.Asset = None,
        asset_uri: opt.AssetUri = None,
        to_dag: ToDag = None,
        to_run: ToRun = None,
        to_task: ToTask = None,
        to_map_index: ToMapIndex = None,
        to_asset: ToAsset = None,
        to_asset_uri: ToAssetUri = None,
        on_conflict: OnConflictOpt = "skip",
        ttl: Ttl = None,
        never_expire: NeverExpire = False,
        keep_expiry: KeepExpiry = False,
        batch_size: BatchSize = 500,
        concurrency: Concurrency = None,
        dry_run: opt.DryRun = False,
        yes: opt.Yes = False,
        output: opt.OutputOpt = None,
    ) -> int:
        return _copy_cli(ctx, move, keys, locals())

    command.__doc__ = doc
    return command


app.command("cp")(
    _copy_command(
        False,
        """Copy keys to the scope made by replacing parts of theirs (--to-run for "resume from the last run",
    --to-dag for a renamed DAG, --to-asset for a renamed asset), written as the workers would.""",
    )
)
app.command("mv")(
    _copy_command(
        True,
        """cp, then each source row removed if it still holds what was copied (a value a worker rewrote
    meanwhile is kept and reported), then its object.""",
    )
)
