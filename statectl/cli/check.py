"""statectl check: dangling refs, orphans, refs outside the base, undecodable values, per-DAG totals."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from statectl.cli import options as opt
from statectl.cli.app import open_store
from statectl.cli.render import Output, ProgressDisplay, default_output, err, render_report, write_records
from statectl.core.scopes import ScopeFlags, task_label

app = typer.Typer()

# The columns that say where a finding is; the first one present in an item names it in the table.
_WHERE = ("path", "ref", "url")


@app.command("check")
def check_cli(
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
    grace: Annotated[
        str,
        typer.Option(
            "--grace",
            help="Unreferenced objects younger than this are reported as 'recent' (a write in flight), "
            "not as orphans (default 1h, as prune).",
            show_default=False,
        ),
    ] = "1h",
    deep: Annotated[
        bool,
        typer.Option("--deep", help="Also read every referenced object and decode it as a worker does."),
    ] = False,
    limit: Annotated[
        int, typer.Option("--limit", help="Items listed per finding (the counts are always complete).")
    ] = 20,
    strict: Annotated[
        bool, typer.Option("--strict", help="Warnings (suffix mismatch, plain rows with a backend) fail too.")
    ] = False,
    output: opt.OutputOpt = None,
) -> int:
    """Scan the metastore and the bucket; exit 12 when problems are found (-o json for monitoring)."""
    from statectl.core.durations import parse_duration
    from statectl.core.filters import filter_from_flags
    from statectl.ops.check import CheckOptions, run_check

    flt = filter_from_flags(
        ScopeFlags(dag, run, task, map_index, asset, asset_uri), assets=assets, tasks=tasks, shard=shard
    )
    options = CheckOptions(flt, grace=parse_duration(grace, "--grace"), deep=deep, limit=limit, strict=strict)
    fmt = output or default_output(sys.stdout)
    with open_store(ctx) as store, ProgressDisplay(sys.stderr.isatty()) as progress:
        report = run_check(store, options, progress=progress)
    return render_report(report, fmt, lambda document: _show(document, fmt))


def _show(document: dict[str, Any], fmt: Output) -> None:
    out = sys.stdout
    summary = [
        {"finding": kind, "severity": f["severity"], "count": f["count"], "what": f["description"]}
        for kind, f in document["findings"].items()
    ]
    title = "statectl check: " + ("ok" if document["ok"] else f"{document['problems']} problem(s)")
    write_records(summary, ["finding", "severity", "count", "what"], fmt, out, title=title, header=True)
    for kind, f in document["findings"].items():
        if not f["items"]:
            continue
        records = [_item_record(item) for item in f["items"]]
        more = f" (first {len(records)} of {f['count']})" if f["count"] > len(records) else ""
        if fmt is Output.table:  # whole lines: a table would cut long run ids and URLs
            out.write(f"\n{kind}{more}:\n")
            for r in records:
                named = " ".join(x for x in (r["scope"], f"key {r['key']!r}" if r["key"] else "") if x)
                out.write(f"  {' | '.join(x for x in (named, r['where'], r['detail']) if x)}\n")
        else:
            write_records(records, ["scope", "key", "where", "detail"], fmt, out, title=f"{kind}{more}", header=True)
    per_dag = [{"dag": name, **totals} for name, totals in document["per_dag"].items()]
    per_dag.append({"dag": "(total)", **document["totals"]})
    columns = ["dag", "rows", "row_bytes", "objects", "object_bytes"]
    write_records(per_dag, columns, fmt, out, title="per DAG", header=True)
    if not document["scan_complete"]:
        err(f"statectl: the scan is incomplete: {document['incomplete_reason']}")
    for note in document["notes"]:
        err(f"note: {note}")


def _item_record(item: dict[str, Any]) -> dict[str, Any]:
    if item.get("kind") == "task":
        scope = task_label(item["dag_id"], item["run_id"], item["task_id"], item["map_index"])
    elif item.get("kind") == "asset":
        scope = f"asset {item['asset']}"
    else:
        scope = ""
    where = next((item[k] for k in _WHERE if item.get(k)), "")
    detail = item.get("reason") or item.get("location") or ""
    if "size" in item:
        detail = f"{item['size']} bytes, modified {item['modified']}"
    return {"scope": scope, "key": item.get("key", ""), "where": where, "detail": detail}
