"""Troubleshooting commands: where, doctor."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from statectl.cli import options as opt
from statectl.cli.app import open_store, results_only_on_stdout, state
from statectl.cli.render import Output, default_output, render_report, write_document, write_records
from statectl.core.scopes import ScopeFlags

if TYPE_CHECKING:
    from statectl.ops.where import WhereReport

app = typer.Typer()


@app.command("where")
def where_cli(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="The key to locate.")],
    dag: opt.Dag = None,
    run: opt.Run = None,
    task: opt.Task = None,
    map_index: opt.MapIndex = None,
    asset: opt.Asset = None,
    asset_uri: opt.AssetUri = None,
    output: opt.OutputOpt = None,
) -> int:
    """Show where a key lives: the provider's object URL, whether it exists, what the row holds, and why
    a task may read a surprising value (ref not at the computed URL, orphan object, leftover suffixes)."""
    from statectl.ops.where import WhereOptions, run_where

    scope = ScopeFlags(dag, run, task, map_index, asset, asset_uri).scope()
    fmt = output or default_output(sys.stdout)
    with open_store(ctx) as store:
        report = run_where(store, WhereOptions(scope, key))
    return render_report(report, fmt, lambda document: _show_where(report, document, fmt))


def _show_where(report: WhereReport, document: dict[str, Any], fmt: Output) -> None:
    obj, row = document["object"], document["row"]
    flat = {
        "scope": str(report.scope),
        "key": report.key,
        "asset": f"id {report.asset['id']}, name {report.asset['name']}, uri {report.asset['uri']}"
        if report.asset
        else None,
        "object": obj["url"] if obj else None,
        "object exists": _describe_object(obj) if obj else None,
        "row": f"{row['location']}, {row['stored_bytes']} bytes" if row else "none",
        "row ref": row["ref"] if row else None,
        "row text": row["text"] if row and row["location"] != "object" else None,
        "updated_at": row["updated_at"] if row else None,
        "expires_at": row["expires_at"] if row else None,
        "row's object": _describe_object(document["row_object"]) if document["row_object"] else None,
        "leftovers": ", ".join(f"{o['url']} ({o['size']} bytes)" for o in document["leftovers"]) or None,
    }
    write_document({k: v for k, v in flat.items() if v is not None}, fmt, sys.stdout)
    for note in report.notes:
        sys.stdout.write(f"- {note}\n")


def _describe_object(obj: dict[str, Any]) -> str:
    if obj["error"]:
        return f"unknown: {obj['error']}"
    if not obj["exists"]:
        return "no"
    modified = f", modified {obj['last_modified']}" if obj["last_modified"] else ""
    return f"yes, {obj['size']} bytes, {obj['compression'] or 'uncompressed'}{modified}"


@app.command("doctor")
def doctor_cli(ctx: typer.Context, output: opt.OutputOpt = None) -> int:
    """Check the installation: configuration (with sources), versions, metastore, bucket (write/read/delete
    probe), compression, worker backend, connection and mismatches; each finding with a one-line fix.

    Exits 0 when nothing fails (warnings allowed), 11 when a check fails.
    """
    from statectl.ops.doctor import run_doctor

    app_state = state(ctx)
    fmt = output or default_output(sys.stdout)
    with results_only_on_stdout():
        report = run_doctor(app_state.config, concurrency=app_state.concurrency)
    return render_report(report, fmt, lambda document: _show_doctor(document, fmt))


def _show_doctor(document: dict[str, Any], fmt: Output) -> None:
    if fmt is Output.table:
        write_records(document["settings"], ["setting", "value", "source"], fmt, sys.stdout, title="configuration")
        versions = [{"package": k, "version": v} for k, v in document["versions"].items() if v]
        write_records(versions, ["package", "version"], fmt, sys.stdout, title="versions")
    write_records(document["findings"], ["status", "check", "detail", "fix"], fmt, sys.stdout, title="findings")
