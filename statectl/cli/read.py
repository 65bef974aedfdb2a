"""Commands that read: get, ls."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from datetime import datetime
from typing import Annotated, Any

import typer

from statectl.cli import options as opt
from statectl.cli.main import app, results_only_on_stdout, state
from statectl.cli.render import Output, default_output, write_document, write_records, write_value
from statectl.errors import UsageError
from statectl.scopes import scope_from_flags


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


@app.command("get")
def get_cli(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="The key to read.")],
    dag: opt.Dag = None,
    run: opt.Run = None,
    task: opt.Task = None,
    map_index: opt.MapIndex = None,
    asset: opt.Asset = None,
    asset_uri: opt.AssetUri = None,
    raw: Annotated[bool, typer.Option("--raw", help="Show the text stored in the DB row, undecoded.")] = False,
    from_bucket: Annotated[
        bool, typer.Option("--from-bucket", help="Read the object at the provider's path, without the DB.")
    ] = False,
    output: opt.OutputOpt = None,
) -> None:
    """Print a value as a worker reads it: row -> ref -> inline JSON or object -> value.

    With -o json the output is exactly the value's JSON document.
    """
    if raw and from_bucket:
        raise UsageError("--raw and --from-bucket cannot be combined")
    scope = scope_from_flags(dag=dag, run=run, task=task, map_index=map_index, asset=asset, asset_uri=asset_uri)
    fmt = output or default_output(sys.stdout)
    store = state(ctx).store()
    try:
        with results_only_on_stdout():
            result = store.get_from_bucket(scope, key) if from_bucket else store.get(scope, key, raw=raw)
    finally:
        store.close()
    if raw:
        assert result.stored is not None
        if fmt is Output.table:
            write_document(
                {"key": key, "location": result.stored.location.value, "stored": result.stored.text},
                fmt,
                sys.stdout,
            )
        else:
            sys.stdout.write(result.stored.text + "\n")
        return
    if fmt is Output.table:
        write_document(
            {
                "scope": f"{result.scope.kind} {result.scope.label()}",
                "key": key,
                "location": result.stored.location.value if result.stored else "object (bucket)",
                "object": str(result.url) if result.url else None,
                "updated_at": _iso(result.row.updated_at) if result.row else None,
                "expires_at": _iso(result.row.expires_at) if result.row else None,
            },
            fmt,
            sys.stdout,
        )
    write_value(result.value, fmt, sys.stdout)


LS_COLUMNS = [
    "kind",
    "dag_id",
    "run_id",
    "task_id",
    "map_index",
    "asset",
    "key",
    "bytes",
    "location",
    "compression",
    "updated_at",
    "expires_at",
    "object",
]


@app.command("ls")
def ls_cli(
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
    key: Annotated[str | None, typer.Option("--key", help="Only keys matching this glob, e.g. 'job_*'.")] = None,
    output: opt.OutputOpt = None,
) -> None:
    """List state rows with where each value lives, streaming (flat memory at any size)."""
    flt = opt.row_filter(dag, run, task, map_index, asset, asset_uri, assets, tasks, expired)
    fmt = output or default_output(sys.stdout)
    store = state(ctx).store()

    def records() -> Iterator[dict[str, Any]]:
        for entry in store.ls(flt, key):
            row, stored = entry.row, entry.stored
            is_task = row.kind == "task"
            yield {
                "kind": row.kind,
                "dag_id": row.scope.dag_id if is_task else None,
                "run_id": row.scope.run_id if is_task else None,
                "task_id": row.scope.task_id if is_task else None,
                "map_index": row.scope.map_index if is_task else None,
                "asset": None if is_task else row.scope.label(),
                "key": row.key,
                "bytes": stored.stored_bytes,
                "location": stored.location.value,
                "compression": stored.compression,
                "updated_at": _iso(row.updated_at),
                "expires_at": _iso(row.expires_at),
                "object": stored.object_url,
            }

    columns = LS_COLUMNS
    if fmt is Output.table:
        columns = ["kind", "scope", "key", "bytes", "location", "compression", "updated_at", "expires_at"]
    out = sys.stdout  # rows stream to the real stdout while library output goes to stderr
    try:
        with results_only_on_stdout():
            stream = records() if fmt is not Output.table else _table_rows(records())
            write_records(stream, columns, fmt, out)
    finally:
        store.close()


def _table_rows(records: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for r in records:
        if r["kind"] == "task":
            suffix = "" if r["map_index"] == -1 else f"[{r['map_index']}]"
            r["scope"] = f"{r['dag_id']}/{r['run_id']}/{r['task_id']}{suffix}"
        else:
            r["scope"] = r["asset"]
        for k in ("updated_at", "expires_at"):
            if r[k]:
                r[k] = r[k][:19].replace("T", " ")
        yield r
