"""statectl check: dangling refs, orphans, refs outside the base, undecodable values, per-DAG totals."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from statectl.cli import options as opt
from statectl.cli.main import app, results_only_on_stdout, state
from statectl.cli.render import Output, PhaseProgress, default_output, dumps, err, write_records
from statectl.errors import ExitCode

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
    from statectl.check import Check
    from statectl.durations import parse_duration

    flt = opt.row_filter(dag, run, task, map_index, asset, asset_uri, assets, tasks)
    grace_delta = parse_duration(grace, "--grace")
    fmt = output or default_output(sys.stdout)
    store = state(ctx).store()
    interactive = sys.stderr.isatty()
    try:
        with results_only_on_stdout(), PhaseProgress(interactive) as progress:
            report = Check(store, flt, grace=grace_delta, deep=deep, limit=limit, progress=progress).run()
    finally:
        store.close()
    document = report.as_dict(strict)
    if fmt in (Output.json, Output.jsonl):
        sys.stdout.write(dumps(document) + "\n")
    else:
        _show(document, fmt)
    return 0 if report.ok(strict) else int(ExitCode.PROBLEMS_FOUND)


def _show(document: dict[str, Any], fmt: Output) -> None:
    out = sys.stdout
    summary = [
        {"finding": kind, "severity": f["severity"], "count": f["count"], "what": f["description"]}
        for kind, f in document["findings"].items()
    ]
    title = "statectl check: " + ("ok" if document["ok"] else f"{document['problems']} problem(s)")
    write_records(summary, ["finding", "severity", "count", "what"], fmt, out, title=title)
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
            write_records(records, ["scope", "key", "where", "detail"], fmt, out, title=f"{kind}{more}")
    per_dag = [{"dag": name, **totals} for name, totals in document["per_dag"].items()]
    per_dag.append({"dag": "(total)", **document["totals"]})
    write_records(per_dag, ["dag", "rows", "row_bytes", "objects", "object_bytes"], fmt, out, title="per DAG")
    if not document["scan_complete"]:
        err(f"statectl: the scan is incomplete: {document['incomplete_reason']}")
    for note in document["notes"]:
        err(f"note: {note}")


def _item_record(item: dict[str, Any]) -> dict[str, Any]:
    if item.get("kind") == "task":
        suffix = "" if item["map_index"] == -1 else f"[{item['map_index']}]"
        scope = f"{item['dag_id']}/{item['run_id']}/{item['task_id']}{suffix}"
    elif item.get("kind") == "asset":
        scope = f"asset {item['asset']}"
    else:
        scope = ""
    where = next((item[k] for k in _WHERE if item.get(k)), "")
    detail = item.get("reason") or item.get("location") or ""
    if "size" in item:
        detail = f"{item['size']} bytes, modified {item['modified']}"
    return {"scope": scope, "key": item.get("key", ""), "where": where, "detail": detail}
