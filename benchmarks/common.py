"""What the benchmarks on an object store share: the latencies one run measures at, whole-process runs with the
requests each sent, the naive loop's deterministic sample and its linear extrapolation, the floor, and the table.

Latencies (``--latencies 0,20``, store ``s3-latency``, benchmarks/latency_bed.py): one server and one bucket for the
whole run; before each measurement the bed's delays are set (``op_ms`` per GET / PUT / HEAD / DELETE, ``list_ms``,
3 x ``op_ms`` unless ``--list-latencies``, per listing page and bulk delete) and set back to 0 after it, so that the
harness's own set-up between measurements costs no latency. At 0 ms it is plain moto through the middleware.

The floor of an operation, printed under each table, is the larger of

    latency = (single-object requests x op_ms + bulk deletes x list_ms) / concurrency + listing rounds x list_ms
    CPU     = process start (Python, Airflow's import and the connection's filesystem: what resolving a conn_id
              takes) + the operation's unavoidable CPU work (codec, JSON, listing XML), measured on one core in
              this run

with the FEWEST requests the operation needs (e.g. 1 PUT per object to move values to the bucket; ceil(n / 1000)
bulk deletes), not those a tool happened to send. A listing's pages are sequential (each page's token comes from
the page before), but a tool may list folders at once: a folder is listed either flat (ceil(n / 1000) pages for its
n objects) or by its entries (ceil(entries / 1000) pages with a delimiter) and then each subfolder, at once. So

    listing rounds = max(path(base), ceil(ceil(N / 1000) / concurrency))
    path(folder)   = min(ceil(n / 1000), ceil(entries / 1000) + max over its subfolders of path(subfolder))

the slowest chain of sequential pages with the best split (at any depth), and no fewer rounds than the N objects'
pages spread over ``concurrency``: a lower bound for any tool, whatever it splits. At 0 ms the latency term is 0:
the floor is CPU only, and moto's own time per request (a fraction of a ms of CPU) is left out of it, so statectl /
floor then includes the emulator's cost.

The naive loop (``--naive-sample N``): every k-th row of the rows it would process, N in all, in the same order
(deterministic), and its time extrapolated linearly, labelled as such: the process's fixed part (start, imports,
the first query) as measured, plus the loop's measured time x rows / N. Its request counts are those of the sample,
shown per row with the extrapolated total (requests the script sends whatever its rows, e.g. a listing, measured by
a run on no rows, are not scaled).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import math
import os
import resource
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.stores import STORES, RequestCounter, Store, by_kind  # noqa: E402

STATECTL = str(Path(sys.executable).parent / "statectl")
PYTHON = str(Path(sys.executable).parent / "python")
LIST_PAGE = 1000  # keys per listing page, and per bulk delete, on S3
NAIVE_SAMPLE_ENV = "STATECTL_BENCH_NAIVE_SAMPLE"
T = TypeVar("T")

__all__ = [
    "FLOOR_FORMULA",
    "NAIVE_SAMPLING",
    "Latency",
    "Work",
    "add_latency_options",
    "at_latency",
    "floor",
    "latencies",
    "listing_rounds",
    "load",
    "log",
    "run_naive",
    "run_process",
    "sample_of",
    "table",
]

FLOOR_FORMULA = (
    "floor = max(latency, CPU); latency = (single-object requests x op_ms + bulk deletes x list_ms) / concurrency "
    "+ listing rounds x list_ms, with the fewest requests the operation needs; listing rounds = max(path(base), "
    "ceil(ceil(N/1000) / concurrency)), path(folder) = min(ceil(n/1000), ceil(entries/1000) + max path(subfolder)): "
    "pages are sequential within a listing, folders may be listed at once at any depth; CPU = process start + the "
    "unavoidable work, on one core, measured in this run"
)


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- latencies


@dataclass(frozen=True)
class Latency:
    """The bed's delays for one measurement; op_ms None: a store without the bed, as it is."""

    op_ms: float | None
    list_ms: float = 0.0

    @property
    def label(self) -> str:
        if self.op_ms is None:
            return "as is"
        return f"{self.op_ms:g} ms" if self.list_ms == 3 * self.op_ms else f"{self.op_ms:g}/{self.list_ms:g} ms"

    @property
    def op_s(self) -> float:
        return (self.op_ms or 0.0) / 1000

    @property
    def list_s(self) -> float:
        return self.list_ms / 1000


def add_latency_options(parser: argparse.ArgumentParser, *, naive: bool = True, stores: Sequence[str] = STORES) -> None:
    """--store (default s3-latency), --latencies, --list-latencies, --concurrency, --naive-sample, --out."""
    parser.add_argument("--store", choices=stores, default="s3-latency", help="the object store (default: the bed)")
    parser.add_argument(
        "--latencies",
        help="ms per GET/PUT/HEAD/DELETE on s3-latency, comma-separated: every measurement at each, on the same "
        "server and the same state (default 0,20)",
    )
    parser.add_argument(
        "--list-latencies", help="ms per listing page / bulk delete, one per --latencies (default: 3x each)"
    )
    parser.add_argument("--concurrency", type=int, default=16, help="statectl's --concurrency, and the floor's")
    if naive:
        parser.add_argument(
            "--naive-sample",
            type=int,
            default=0,
            metavar="N",
            help="run each naive loop on N of its rows (every k-th) and extrapolate linearly (labelled); 0: all",
        )
    parser.add_argument("--out", type=Path, help="the JSON result (default: a file in the temp directory)")


def latencies(args: argparse.Namespace) -> list[Latency]:
    if args.store != "s3-latency":
        if args.latencies or args.list_latencies:
            sys.exit(f"--latencies needs --store s3-latency (the bed), not {args.store}")
        return [Latency(None)]
    default = f"0,{os.environ.get('STATECTL_BENCH_S3_OP_MS') or 20}"  # the bed's own variable, if set
    ops = [float(x) for x in (args.latencies or default).split(",")]
    lists = [float(x) for x in args.list_latencies.split(",")] if args.list_latencies else [3 * op for op in ops]
    if len(lists) != len(ops):
        sys.exit("--list-latencies takes one value per --latencies")
    return [Latency(op, ls) for op, ls in zip(ops, lists, strict=True)]


@contextlib.contextmanager
def at_latency(store: Store, latency: Latency) -> Iterator[None]:
    """The bed at these delays for the block, and undelayed after it (the harness's set-up between runs)."""
    set_latency = getattr(store, "set_latency", None)
    if latency.op_ms is None or set_latency is None:
        yield
        return
    set_latency(latency.op_ms, latency.list_ms)
    try:
        yield
    finally:
        set_latency(0.0, 0.0)


def undelayed(store: Store) -> None:
    """The bed without delays until a measurement asks for them."""
    set_latency = getattr(store, "set_latency", None)
    if set_latency is not None:
        set_latency(0.0, 0.0)


# --------------------------------------------------------------------------- runs


def run_process(
    cmd: Sequence[str], env: dict[str, str], counter: RequestCounter, *, ok: Sequence[int] = (0,)
) -> dict[str, Any]:
    """One whole process: wall seconds, its CPU seconds (user + system) and peak RSS (of the child, via
    /usr/bin/time), its stdout, and the requests the store served meanwhile by kind."""
    before = counter.snapshot()
    start = time.perf_counter()
    timing = ["/usr/bin/time", "-f", "%U %S %M"]
    proc = subprocess.run([*timing, *cmd], env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode not in ok:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    user, system, peak_kib = proc.stderr.strip().splitlines()[-1].split()
    return {
        "seconds": round(seconds, 2),
        "cpu_s": round(float(user) + float(system), 2),
        "peak_rss_mib": round(int(peak_kib) / 1024, 1),
        "exit_code": proc.returncode,
        "stdout": proc.stdout,
        "requests": by_kind(counter.since(before)),
    }


# Python source for the naive loops: ``rows = sample(rows)`` before the loop, ``done(count, started)`` after it.
NAIVE_SAMPLING = f"""
import os as _os, time as _time

def sample(rows):
    \"\"\"Every k-th row, N in all ({NAIVE_SAMPLE_ENV}=N; unset or 0: every row; -1: none).\"\"\"
    rows = list(rows)
    n = int(_os.environ.get({NAIVE_SAMPLE_ENV!r}) or 0)
    if n < 0:
        return []
    if n == 0 or n >= len(rows):
        return rows
    return rows[:: len(rows) // n][:n]

def done(count, started):
    print(count, _time.perf_counter() - started)
"""


def sample_of(items: Sequence[T], n: int) -> list[T]:
    """The rows NAIVE_SAMPLING's sample() takes from the same rows in the same order."""
    if n <= 0 or n >= len(items):
        return list(items)
    return list(items[:: len(items) // n][:n])


def run_naive(
    code: str,
    args: Sequence[str],
    env: dict[str, str],
    counter: RequestCounter,
    *,
    sample: int = 0,
    total: int | None = None,
    fixed: dict[str, int] | None = None,
) -> dict[str, Any]:
    """A naive loop (``python -c code *args``; its last line: rows done and the loop's seconds) on ``sample`` rows
    (0: all; -1: none); ``total``: the rows of the whole operation, to extrapolate to when it did fewer; ``fixed``:
    the requests the script sends whatever its rows (a run with ``sample`` -1), which are not extrapolated."""
    run_env = {**env, NAIVE_SAMPLE_ENV: str(sample)}
    before = counter.snapshot()
    start = time.perf_counter()
    proc = subprocess.run([PYTHON, "-c", code, *args], env=run_env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"naive loop failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    last = proc.stdout.strip().splitlines()[-1].split()
    rows, loop_s = int(last[0]), float(last[1]) if len(last) > 1 else seconds
    requests = by_kind(counter.since(before))
    out: dict[str, Any] = {"seconds": round(seconds, 2), "rows": rows, "loop_s": round(loop_s, 2), "requests": requests}
    if total is not None and 0 < rows < total:
        scale = total / rows
        out.update(
            extrapolated=True,
            measured_s=out["seconds"],
            seconds=round(seconds - loop_s + loop_s * scale, 1),
            total_rows=total,
            requests_extrapolated={
                kind: round((fixed or {}).get(kind, 0) + (n - (fixed or {}).get(kind, 0)) * scale)
                for kind, n in requests.items()
            },
        )
    return out


# --------------------------------------------------------------------------- the floor


@dataclass
class Work:
    """The least an operation must do, whoever does it: requests and CPU that no tool can skip."""

    needs: str  # in words, for the report
    ops: int = 0  # single-object requests (GET, PUT, HEAD, DELETE)
    bulk: int = 0  # bulk deletes (up to 1000 keys each)
    listed: Sequence[str] = ()  # the paths, relative to the base path, of the objects it must list; () for none
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds per unavoidable step


def listing_rounds(listed: Sequence[str], concurrency: int) -> int:
    """The least number of sequential listing requests that list these paths (see the module's text)."""
    if not listed:
        return 0
    tree: dict[str, Any] = {}
    for relative in listed:
        node = tree
        *folders, name = relative.split("/")
        for folder in folders:
            node = node.setdefault(folder + "/", {})
        node[name] = None

    def walk(node: dict[str, Any]) -> tuple[int, int]:
        """(objects below, rounds of the best split) of a folder."""
        objects, slowest = 0, 0
        for child in node.values():
            if child is None:
                objects += 1
            else:
                below, rounds = walk(child)
                objects, slowest = objects + below, max(slowest, rounds)
        flat = max(math.ceil(objects / LIST_PAGE), 1)
        if not slowest:
            return objects, flat
        return objects, min(flat, max(math.ceil(len(node) / LIST_PAGE), 1) + slowest)

    objects, chain = walk(tree)
    return max(chain, math.ceil(math.ceil(objects / LIST_PAGE) / concurrency))


def floor(work: Work, latency: Latency, concurrency: int) -> dict[str, Any]:
    requests_s = (work.ops * latency.op_s + work.bulk * latency.list_s) / concurrency
    rounds = listing_rounds(work.listed, concurrency)
    latency_s = requests_s + rounds * latency.list_s
    cpu_s = sum(work.cpu.values())
    return {
        "floor_s": round(max(latency_s, cpu_s), 2),
        "bound_by": "latency" if latency_s >= cpu_s else "CPU",
        "latency_s": round(latency_s, 2),
        "listing_rounds": rounds,
        "cpu_s": round(cpu_s, 2),
        "cpu": {k: round(v, 3) for k, v in work.cpu.items()},
        "needs": work.needs,
    }


def child_cpu(cmd: Sequence[str], env: dict[str, str], runs: int = 2) -> float:
    """CPU seconds (user + system) of a process, the least of ``runs`` (the first may fill the page cache)."""
    best = math.inf
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(cmd, env=env, check=True, capture_output=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        best = min(best, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return best


def process_start_cpu(env: dict[str, str], store: Store) -> float:
    """What any tool that resolves the conn_id as Airflow does pays first: Python, Airflow's import, the filesystem
    built from the connection (no request)."""
    code = f"from airflow.sdk.io.store import attach; attach({store.scheme!r}, {store.conn_id!r}).fs"
    return child_cpu([PYTHON, "-c", code], env)


def thread_cpu(work: Callable[[], object]) -> float:
    """CPU seconds of ``work`` on this thread (the bed's threads are idle meanwhile and not counted anyway)."""
    start = time.thread_time()
    work()
    return time.thread_time() - start


def gzip_cpu(texts: Iterable[bytes], level: int = 9) -> float:
    """gzip at the provider's level (fsspec's GzipFile: 9) of each value."""
    items = list(texts)
    return thread_cpu(lambda: [gzip.compress(t, level, mtime=0) for t in items])


def gunzip_cpu(blobs: Iterable[bytes]) -> float:
    items = list(blobs)
    return thread_cpu(lambda: [zlib.decompress(b, 31) for b in items])


def json_cpu(texts: Iterable[str]) -> float:
    items = list(texts)
    return thread_cpu(lambda: [json.loads(t) for t in items])


def listing_parse_cpu(keys: Sequence[str], sizes: int = 1000) -> float:
    """Parsing the listing pages of these keys (ElementTree, key and size only): what reading a listing costs a
    client at the least."""
    import xml.etree.ElementTree as ET
    from xml.sax.saxutils import escape

    pages = []
    for start in range(0, len(keys), LIST_PAGE):
        body = "".join(
            f"<Contents><Key>{escape(k)}</Key><LastModified>2026-01-01T00:00:00.000Z</LastModified>"
            f'<ETag>"0123456789abcdef0123456789abcdef"</ETag><Size>{sizes}</Size>'
            "<StorageClass>STANDARD</StorageClass></Contents>"
            for k in keys[start : start + LIST_PAGE]
        )
        pages.append(f'<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">{body}</ListBucketResult>')
    ns = "{http://s3.amazonaws.com/doc/2006-03-01/}"

    def parse() -> None:
        for page in pages:
            for item in ET.fromstring(page).iter(f"{ns}Contents"):
                item.findtext(f"{ns}Key"), item.findtext(f"{ns}Size")

    return thread_cpu(parse)


# --------------------------------------------------------------------------- the table


def _requests(counts: dict[str, int]) -> str:
    return ", ".join(f"{kind} {n:,}" for kind, n in sorted(counts.items(), key=lambda item: -item[1])) or "none"


def _naive_requests(naive: dict[str, Any]) -> str:
    if not naive.get("extrapolated"):
        return _requests(naive["requests"])
    rows, estimate = naive["rows"], naive["requests_extrapolated"]
    per_row = ", ".join(
        f"{kind} ~{estimate[kind]:,} ({n / rows:.2f}/row)"
        for kind, n in sorted(naive["requests"].items(), key=lambda item: -estimate[item[0]])
    )
    return f"{per_row or 'none'} [sample of {rows:,} rows]"


def table(results: Sequence[dict[str, Any]], *, naive_label: str = "naive loop") -> list[str]:
    """One line per (operation, latency): statectl, the naive loop, their ratio, the floor and statectl / floor;
    then the requests of each and what the floor is made of. A result: {"operation", "latency", "statectl": run,
    "naive": run or None, "floor": floor(...), "targets": {"naive_over_statectl": x, "statectl_over_floor": y}}."""
    lines = [
        f"| operation | latency | statectl | {naive_label} | naive / statectl | floor | statectl / floor | targets |",
        "|---|---|---|---|---|---|---|---|",
    ]
    notes: list[str] = []
    for r in results:
        s, n, f = r["statectl"], r.get("naive"), r["floor"]
        n_text, ratio = "-", "-"
        if n is not None:
            n_text = f"{n['seconds']:,} s" + (
                f" (extrapolated from {n['rows']:,} rows)" if n.get("extrapolated") else ""
            )
            ratio = f"**{n['seconds'] / s['seconds']:.1f}x**"
        over = s["seconds"] / f["floor_s"] if f["floor_s"] else math.inf
        targets = r.get("targets", {})
        verdicts = []
        if n is not None and "naive_over_statectl" in targets:
            want = targets["naive_over_statectl"]
            verdicts.append(f"{'ok' if n['seconds'] / s['seconds'] >= want else 'MISSED'} >= {want:g}x")
        if "statectl_over_floor" in targets:
            want = targets["statectl_over_floor"]
            verdicts.append(f"{'ok' if over <= want else 'MISSED'} <= {want:g}x floor")
        lines.append(
            f"| {r['operation']} | {r['latency']} | {s['seconds']:,} s | {n_text} | {ratio} "
            f"| {f['floor_s']:,} s ({f['bound_by']}) | {over:.2f}x | {'; '.join(verdicts) or '-'} |"
        )
        notes.append(f"{r['operation']} at {r['latency']}:")
        cpu_used = f" (its CPU: {s['cpu_s']:g} s)" if "cpu_s" in s else ""
        notes.append(f"  statectl requests: {_requests(s['requests'])}{cpu_used}")
        if n is not None:
            notes.append(f"  naive requests:    {_naive_requests(n)}")
        cpu = " + ".join(f"{k} {v:g} s" for k, v in f["cpu"].items())
        notes.append(
            f"  floor: needs {f['needs']}; latency {f['latency_s']:g} s (listing rounds: {f['listing_rounds']}), "
            f"CPU {f['cpu_s']:g} s ({cpu or 'none'})"
        )
    return [*lines, "", *notes, "", FLOOR_FORMULA]


def write_json(report: dict[str, Any], out: Path | None, name: str) -> Path:
    """The load after the run into the report, and the report as JSON to ``out`` (default: the temp directory)."""
    import tempfile

    report["machine"]["load_after"] = load()
    path = out or Path(tempfile.gettempdir()) / f"statectl-{name}.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    log(f"JSON result: {path}")
    return path


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "load_before": load()}


def heading(report: dict[str, Any]) -> str:
    """The table's first line: the store and the load before the run."""
    return f"{report['config']['store']}; load before: {report['machine']['load_before']}"


def new_report() -> dict[str, Any]:
    """A report's head (the machine, the command), with a SIGTERM handler so that a killed run still stops its
    PostgreSQL cluster and its object store and removes its files (the benchmarks' finally blocks)."""
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    return {"machine": machine(), "command": " ".join([Path(sys.executable).name, *sys.argv])}
