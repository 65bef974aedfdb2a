"""Troubleshooting commands: where, doctor."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from statectl.cli import options as opt
from statectl.cli.main import app, results_only_on_stdout, state
from statectl.cli.render import Output, default_output, dumps, write_document, write_records
from statectl.errors import ExitCode
from statectl.scopes import scope_from_flags


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
) -> None:
    """Show where a key lives: the provider's object URL, whether it exists, what the row holds, and why
    a task may read a surprising value (ref not at the computed URL, orphan object, leftover suffixes)."""
    from statectl.where import where

    scope = scope_from_flags(dag=dag, run=run, task=task, map_index=map_index, asset=asset, asset_uri=asset_uri)
    fmt = output or default_output(sys.stdout)
    store = state(ctx).store()
    try:
        with results_only_on_stdout():
            report = where(store, scope, key)
    finally:
        store.close()
    document = report.as_dict()
    if fmt in (Output.json, Output.jsonl):
        sys.stdout.write(dumps(document) + "\n")
        return
    obj, row = document["object"], document["row"]
    flat = {
        "scope": f"{report.scope.kind} {report.scope.label()}",
        "key": key,
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


def _describe_object(obj: dict) -> str:
    if obj["error"]:
        return f"unknown: {obj['error']}"
    if not obj["exists"]:
        return "no"
    modified = f", modified {obj['last_modified']}" if obj["last_modified"] else ""
    return f"yes, {obj['size']} bytes, {obj['compression'] or 'uncompressed'}{modified}"


@app.command("doctor")
def doctor_cli(ctx: typer.Context, output: opt.OutputOpt = None) -> None:
    """Check the installation: configuration (with sources), versions, metastore, bucket (write/read/delete
    probe), compression, worker backend, connection and mismatches; each finding with a one-line fix.

    Exits 0 when nothing fails (warnings allowed), 11 when a check fails.
    """
    from statectl.doctor import run_doctor

    app_state = state(ctx)
    fmt = output or default_output(sys.stdout)
    with results_only_on_stdout():
        report = run_doctor(app_state.config, concurrency=app_state.concurrency)
    if fmt in (Output.json, Output.jsonl):
        sys.stdout.write(dumps(report.as_dict()) + "\n")
    else:
        if fmt is Output.table:
            write_records(report.settings, ["setting", "value", "source"], fmt, sys.stdout, title="configuration")
            versions = [{"package": k, "version": v} for k, v in report.versions.items() if v]
            write_records(versions, ["package", "version"], fmt, sys.stdout, title="versions")
        records = [f.as_dict() for f in report.findings]
        write_records(records, ["status", "check", "detail", "fix"], fmt, sys.stdout, title="findings")
    if report.failed:
        raise typer.Exit(int(ExitCode.UNHEALTHY))
