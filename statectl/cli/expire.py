"""statectl expire: set when task values expire, without rewriting them."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, Any, TextIO

import typer

from statectl.cli import options as opt
from statectl.cli.app import open_store
from statectl.cli.render import Output, ProgressDisplay, default_output, err, render_report, warn, write_records
from statectl.core.scopes import ScopeFlags

if TYPE_CHECKING:
    from statectl.ops.expire import ExpirePlan, ExpireReport

app = typer.Typer()

PLAN_COLUMNS = ["expires_at", "to_change", "already"]
RESULT_COLUMNS = ["expires_at", "updated", "already", "changed_meanwhile", "written_after_plan"]
SHOWN = 20  # rows named on stderr per list; -o json names them all


@app.command("expire")
def expire_cli(
    ctx: typer.Context,
    keys: Annotated[
        list[str] | None, typer.Argument(help="Keys of one task instance (with --dag, --run and --task).")
    ] = None,
    dag: opt.Dag = None,
    run: opt.Run = None,
    task: opt.Task = None,
    map_index: opt.MapIndex = None,
    asset: opt.Asset = None,
    asset_uri: opt.AssetUri = None,
    every: Annotated[
        bool, typer.Option("--all", help="Every task row the filters --dag/--run/--task/--map-index select.")
    ] = False,
    ttl: Annotated[str | None, typer.Option("--ttl", help="Expire this long from now, e.g. 6h, 7d, 1d12h.")] = None,
    at: Annotated[
        str | None,
        typer.Option(
            "--at",
            help="Expire at this ISO 8601 time, e.g. 2026-12-01T00:00:00Z or 2026-12-01T02:00:00+02:00; "
            "a time without an offset is UTC.",
        ),
    ] = None,
    never_expire: Annotated[bool, typer.Option("--never-expire", help="Never expire.")] = False,
    now: Annotated[
        bool, typer.Option("--now", help="Expire now: the next `statectl prune` removes the rows and their objects.")
    ] = False,
    dry_run: opt.DryRun = False,
    yes: opt.Yes = False,
    output: opt.OutputOpt = None,
) -> int:
    """Set when task values expire (expires_at), without rewriting them.

    Give KEYS with --dag, --run and --task (and --map-index), or --all with any of those as filters, and
    exactly one of --ttl, --at, --never-expire, --now. Each row is updated only if its value is unchanged
    since it was read; rows rewritten meanwhile are left as they are and reported (exit 8). Asset state
    has no expiry.
    """
    from statectl.ops.expire import ExpireOptions, ExpiryChoice, run_expire

    flags = ScopeFlags(dag, run, task, map_index, asset, asset_uri)
    expiry = ExpiryChoice.from_flags(ttl=ttl, at=at, never=never_expire, now=now)
    options = ExpireOptions.from_flags(flags, keys or [], every=every, expiry=expiry)
    options.check()
    fmt = output or default_output(sys.stdout)
    interactive = opt.require_yes(dry_run=dry_run, yes=yes, what="expire")
    display = ProgressDisplay(interactive)

    def confirm(plan: ExpirePlan) -> bool:
        with display.paused():
            _show_plan(plan, Output.table, sys.stderr)
            return opt.ask(f"Set expires_at of {plan.to_change} row(s) to {_when(plan.expires_at)}?")

    with open_store(ctx) as store, display as progress:
        report = run_expire(store, options, dry_run=dry_run, confirm=None if yes else confirm, progress=progress)
    code = render_report(report, fmt, lambda document: _show(report, document, fmt, sys.stdout))
    _notes(report)
    return code


def _when(expires_at: Any) -> str:
    return "never" if expires_at is None else str(expires_at)


def _show_plan(plan: ExpirePlan, fmt: Output, out: TextIO) -> None:
    document = plan.as_dict()
    record = {**document, "expires_at": _when(document["expires_at"])}
    write_records([record], PLAN_COLUMNS, fmt, out, title="expire plan", header=True)
    for label in plan.first:
        err(f"  {label}")
    if plan.to_change > len(plan.first) and plan.first:
        err(f"  ... and {plan.to_change - len(plan.first)} more")


def _show(report: ExpireReport, document: dict[str, Any], fmt: Output, out: TextIO) -> None:
    if report.dry_run:
        _show_plan(report.plan, fmt, out)
    elif not report.declined:
        counts = {k: len(v) if isinstance(v, list) else v for k, v in document.items()}
        record = {**counts, "expires_at": _when(document["expires_at"])}
        write_records([record], RESULT_COLUMNS, fmt, out, title="expire", header=True)


def _notes(report: ExpireReport) -> None:
    """What needs a look, on stderr in every format."""
    plan = report.plan
    if plan.rows == 0:
        err("no task rows match: nothing to expire")
    elif report.dry_run:
        err("dry run: nothing changed")
    elif report.declined:
        err("nothing changed")
    elif report.updated and plan.expires_at is not None and plan.expires_at <= plan.at:
        err(f"{report.updated} row(s) expired: the next `statectl prune` removes them and their objects")
    for label in report.changed_meanwhile[:SHOWN]:
        warn(f"{label}: rewritten or removed meanwhile (by a worker?); left as it is")
    for label in report.written_after_plan[:SHOWN]:
        warn(f"{label}: written after the plan was made (by a worker?); left as it is")
    hidden = max(len(report.changed_meanwhile) - SHOWN, 0) + max(len(report.written_after_plan) - SHOWN, 0)
    if hidden:
        warn(f"... and {hidden} more left as they are (see -o json)")
    if report.stopped and not report.declined:
        warn(f"stopped: {report.stopped}; what was done is consistent, re-run to finish")
