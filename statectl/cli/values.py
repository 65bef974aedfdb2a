"""Commands on values: get, put, ls, rm, clear."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from statectl.cli import options as opt
from statectl.cli.app import open_store
from statectl.cli.render import (
    Output,
    default_output,
    err,
    render_report,
    warn,
    write_document,
    write_records,
    write_rows,
    write_value,
)
from statectl.core.scopes import ScopeFlags, task_label
from statectl.errors import UsageError

if TYPE_CHECKING:
    from statectl.ops.write import RemovalOptions

app = typer.Typer()


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
    from statectl.core.durations import iso
    from statectl.ops.read import get_from_bucket, get_value

    if raw and from_bucket:
        raise UsageError("--raw and --from-bucket cannot be combined")
    scope = ScopeFlags(dag, run, task, map_index, asset, asset_uri).scope()
    fmt = output or default_output(sys.stdout)
    with open_store(ctx) as store:
        result = get_from_bucket(store, scope, key) if from_bucket else get_value(store, scope, key, raw=raw)
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
                "scope": str(result.scope),
                "key": key,
                "location": result.stored.location.value if result.stored else "object (bucket)",
                "object": str(result.url) if result.url else None,
                "updated_at": iso(result.row.updated_at) if result.row else None,
                "expires_at": iso(result.row.expires_at) if result.row else None,
            },
            fmt,
            sys.stdout,
        )
    write_value(result.value, fmt, sys.stdout)


def _read_value_text(value: str | None, file: Path | None) -> str:
    if (value is None) == (file is None):
        raise UsageError("give VALUE (JSON text, or - for stdin) or --file PATH, exactly one")
    if file is not None:
        try:
            return file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"cannot read --file {file}: {getattr(e, 'strerror', None) or e}") from None
    if value == "-":
        return sys.stdin.read()
    assert value is not None
    return value


@app.command("put")
def put_cli(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="The key to write.")],
    value: Annotated[str | None, typer.Argument(help="The value as JSON text; - reads stdin.")] = None,
    dag: opt.Dag = None,
    run: opt.Run = None,
    task: opt.Task = None,
    map_index: opt.MapIndex = None,
    asset: opt.Asset = None,
    asset_uri: opt.AssetUri = None,
    file: Annotated[Path | None, typer.Option("--file", help="Read the JSON value from this file.")] = None,
    ttl: Annotated[str | None, typer.Option("--ttl", help="Task values: expire after e.g. 6h, 7d.")] = None,
    never_expire: Annotated[bool, typer.Option("--never-expire", help="Task values: never expire.")] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Write a value over max_value_storage_bytes (workers only warn).")
    ] = False,
    output: opt.OutputOpt = None,
) -> None:
    """Write a value exactly as a worker with the configured backend would: object first, then the row."""
    from statectl.core.codec import parse_value
    from statectl.core.durations import parse_duration
    from statectl.ops.write import Expiry, put_value

    scope = ScopeFlags(dag, run, task, map_index, asset, asset_uri).scope()
    if ttl is not None and never_expire:
        raise UsageError("--ttl and --never-expire exclude each other")
    if scope.kind == "asset" and (ttl is not None or never_expire):
        raise UsageError("asset state has no expiry; --ttl and --never-expire are for task state")
    parsed = parse_value(_read_value_text(value, file))
    expiry = Expiry(ttl=parse_duration(ttl, "--ttl") if ttl else None, never=never_expire)
    fmt = output or default_output(sys.stdout)
    with open_store(ctx) as store:
        result = put_value(store, scope, key, parsed, expiry=expiry, force=force)
    for message in result.warnings:
        warn(message)
    write_document(result.as_dict(), fmt, sys.stdout)


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
    from statectl.core.filters import filter_from_flags
    from statectl.ops.read import LISTING_COLUMNS, LISTING_SCOPE_COLUMNS, list_records

    flt = filter_from_flags(
        ScopeFlags(dag, run, task, map_index, asset, asset_uri), assets=assets, tasks=tasks, expired=expired
    )
    fmt = output or default_output(sys.stdout)
    out = sys.stdout  # rows stream to the real stdout while library output goes to stderr
    with open_store(ctx) as store:
        batches = list_records(store, flt, key)
        if fmt is Output.table:
            columns = ["kind", "scope", "key", "bytes", "location", "compression", "updated_at", "expires_at"]
            records = (dict(zip(LISTING_COLUMNS, row, strict=True)) for batch in batches for row in batch)
            write_records(_table_rows(records), columns, fmt, out)
        else:
            write_rows(batches, LISTING_COLUMNS, fmt, out, shared_prefix=LISTING_SCOPE_COLUMNS)


def _table_rows(records: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for r in records:
        if r["kind"] == "task":
            r["scope"] = task_label(r["dag_id"], r["run_id"], r["task_id"], r["map_index"])
        else:
            r["scope"] = r["asset"]
        for k in ("updated_at", "expires_at"):
            if r[k]:
                r[k] = r[k][:19].replace("T", " ")
        yield r


def _removal_cli(ctx: typer.Context, options: RemovalOptions, dry_run: bool, fmt: Output) -> int:
    from statectl.ops.write import run_removal

    with open_store(ctx) as store:
        report = run_removal(store, options, dry_run=dry_run)
    for row, reason in report.plan.outside:
        warn(f"key {row.key!r}: object left in place: {reason}")
    for row in report.rows_changed:
        warn(f"key {row.key!r} was rewritten meanwhile (by a worker?); left as it is")
    for url, error in report.object_errors:
        warn(f"row removed but object {url} could not be deleted: {error} (statectl prune will retry)")
    verb = "would remove" if dry_run else "removed"

    def show(_document: dict[str, Any]) -> None:
        records = [{"action": verb, "what": "row", "key": r.key, "scope": str(r.scope)} for r in report.rows] + [
            {"action": verb, "what": "object", "key": "", "scope": str(u)} for u in report.objects
        ]
        write_records(records, ["action", "what", "scope", "key"], fmt, sys.stdout)

    code = render_report(report, fmt, show, document_formats=(Output.json,))  # jsonl: a line per row and object
    err(f"{verb} {len(report.rows)} row(s) and {len(report.objects)} object(s)")
    return code


@app.command("rm")
def rm_cli(
    ctx: typer.Context,
    keys: Annotated[list[str], typer.Argument(help="The keys to remove.")],
    dag: opt.Dag = None,
    run: opt.Run = None,
    task: opt.Task = None,
    map_index: opt.MapIndex = None,
    asset: opt.Asset = None,
    asset_uri: opt.AssetUri = None,
    missing_ok: Annotated[bool, typer.Option("--missing-ok", help="Do not fail on keys that do not exist.")] = False,
    dry_run: opt.DryRun = False,
    output: opt.OutputOpt = None,
) -> int:
    """Remove keys: each row first, then its object (only objects under the base path)."""
    from statectl.ops.write import RemovalOptions

    scope = ScopeFlags(dag, run, task, map_index, asset, asset_uri).scope()
    options = RemovalOptions(scope, keys=tuple(keys), missing_ok=missing_ok)
    return _removal_cli(ctx, options, dry_run, output or default_output(sys.stdout))


@app.command("clear")
def clear_cli(
    ctx: typer.Context,
    dag: opt.Dag = None,
    run: opt.Run = None,
    task: opt.Task = None,
    map_index: opt.MapIndex = None,
    asset: opt.Asset = None,
    asset_uri: opt.AssetUri = None,
    all_map_indices: Annotated[
        bool, typer.Option("--all-map-indices", help="Task scope: every map index of the task.")
    ] = False,
    dry_run: opt.DryRun = False,
    output: opt.OutputOpt = None,
) -> int:
    """Remove every key of a scope: rows first, then their objects."""
    from statectl.ops.write import RemovalOptions

    scope = ScopeFlags(dag, run, task, map_index, asset, asset_uri).scope()
    if all_map_indices and (scope.kind != "task" or map_index is not None):
        raise UsageError("--all-map-indices takes a task scope without --map-index")
    options = RemovalOptions(scope, all_map_indices=all_map_indices)
    return _removal_cli(ctx, options, dry_run, output or default_output(sys.stdout))
