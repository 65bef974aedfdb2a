"""Commands that change state: put, rm, clear."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from statectl.cli import options as opt
from statectl.cli.main import app, results_only_on_stdout, state
from statectl.cli.render import Output, default_output, err, warn, write_document, write_records
from statectl.errors import ExitCode, NotFoundError, UsageError
from statectl.scopes import scope_from_flags


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
    from statectl.codec import parse_value
    from statectl.durations import parse_duration
    from statectl.store import Expiry

    scope = scope_from_flags(dag=dag, run=run, task=task, map_index=map_index, asset=asset, asset_uri=asset_uri)
    if ttl is not None and never_expire:
        raise UsageError("--ttl and --never-expire exclude each other")
    if scope.kind == "asset" and (ttl is not None or never_expire):
        raise UsageError("asset state has no expiry; --ttl and --never-expire are for task state")
    parsed = parse_value(_read_value_text(value, file))
    expiry = Expiry(ttl=parse_duration(ttl, "--ttl") if ttl else None, never=never_expire)
    fmt = output or default_output(sys.stdout)
    store = state(ctx).store()
    try:
        with results_only_on_stdout():
            result = store.put(scope, key, parsed, expiry=expiry, force=force)
    finally:
        store.close()
    for message in result.warnings:
        warn(message)
    write_document(
        {
            "scope": f"{result.scope.kind} {result.scope.label()}",
            "key": result.key,
            "location": result.location.value,
            "object": str(result.url) if result.url else None,
            "bytes": result.column_bytes,
            "expires_at": result.expires_at.isoformat() if result.expires_at else None,
        },
        fmt if fmt is not Output.plain else Output.plain,
        sys.stdout,
    )


def _removal_cli(ctx: typer.Context, plan_fn: Any, dry_run: bool, fmt: Output) -> int:
    store = state(ctx).store()
    try:
        with results_only_on_stdout():
            plan = plan_fn(store)
            report = store.execute_removal(plan, dry_run=dry_run)
    finally:
        store.close()
    for row, reason in plan.outside:
        warn(f"key {row.key!r}: object left in place: {reason}")
    for row in report.rows_changed:
        warn(f"key {row.key!r} was rewritten meanwhile (by a worker?); left as it is")
    for url, error in report.object_errors:
        warn(f"row removed but object {url} could not be deleted: {error} (statectl prune will retry)")
    verb = "would remove" if dry_run else "removed"
    rows = plan.rows if dry_run else report.rows_deleted
    objects = list(plan.objects.values()) if dry_run else report.objects_deleted
    records = [
        {"action": verb, "what": "row", "key": r.key, "scope": f"{r.scope.kind} {r.scope.label()}"} for r in rows
    ] + [{"action": verb, "what": "object", "key": "", "scope": str(u)} for u in objects]
    if fmt is Output.json:
        from statectl.cli.render import dumps

        sys.stdout.write(
            dumps(
                {
                    "dry_run": dry_run,
                    "rows": [{"scope": f"{r.scope.kind} {r.scope.label()}", "key": r.key} for r in rows],
                    "objects": [str(u) for u in objects],
                    "changed_meanwhile": [r.key for r in report.rows_changed],
                    "left_outside_base": [{"key": r.key, "reason": why} for r, why in plan.outside],
                    "object_errors": [{"object": str(u), "error": e} for u, e in report.object_errors],
                }
            )
            + "\n"
        )
    else:
        write_records(records, ["action", "what", "scope", "key"], fmt, sys.stdout)
    err(f"{verb} {len(rows)} row(s) and {len(objects)} object(s)")
    failed = report.rows_changed or report.object_errors
    return int(ExitCode.PARTIAL) if failed else 0


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
    scope = scope_from_flags(dag=dag, run=run, task=task, map_index=map_index, asset=asset, asset_uri=asset_uri)
    fmt = output or default_output(sys.stdout)

    def plan_fn(store: Any) -> Any:
        plan = store.plan_rm(scope, keys)
        if plan.missing_keys and not missing_ok:
            missing = ", ".join(repr(k) for k in plan.missing_keys)
            raise NotFoundError(
                f"no key {missing} in {scope.kind} {scope.label()}; nothing was removed "
                "(--missing-ok removes the others)"
            )
        return plan

    return _removal_cli(ctx, plan_fn, dry_run, fmt)


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
    scope = scope_from_flags(dag=dag, run=run, task=task, map_index=map_index, asset=asset, asset_uri=asset_uri)
    if all_map_indices and (scope.kind != "task" or map_index is not None):
        raise UsageError("--all-map-indices takes a task scope without --map-index")
    fmt = output or default_output(sys.stdout)
    return _removal_cli(ctx, lambda store: store.plan_clear(scope, all_map_indices=all_map_indices), dry_run, fmt)
