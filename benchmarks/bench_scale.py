"""Millions of rows and objects: check, prune, migrate --dry-run and ls at 100k and 1M (not a timed test).

A throwaway PostgreSQL cluster built by `airflow db migrate`, and a file:// bucket configured as the provider's
base path ([common.io] state_store_objectstorage_path, worker backend StateStoreObjectStorageBackend, gzip,
threshold 100 B). One real `dag.test()` run of examples/dags/statectl_demo.py writes through the provider (task,
mapped and asset state); its dag run is the template of the generated ones. Then, at each size N, in bulk:

- dag runs: 100 dags x as many hourly runs as N needs, cloned from the real run with SQL;
- N task rows by COPY, 14 task instances a run (two tasks mapped over 4) x 10 keys, with the column text
  statectl's codec makes (codec.encode: what a worker writes) for values of 64 B .. 8 KB (log-uniform):
  ~89% object refs at the provider's path (core/layout.py), ~9% inline refs, 2% plain values; 10% expired a
  day ago, half the rest expiring in 60 days, the others never;
- N objects written straight as files by worker processes, with the bytes statectl's object codec makes: the
  object rows' values, and as many orphans (no row: other keys, and runs that are gone), 4 in 5 of them older
  than prune's grace (1h), the rest recent.

A sample goes through the installed provider: each object and inline ref deserializes to the value, and the
provider's own serialize (to a scratch base path) makes the same path and column text.

Each command runs as a whole process (wall time, peak RSS from wait4) with the workers' configuration:
`statectl check -o json`, `statectl prune --dry-run -o json`, `statectl migrate to-metastore --dry-run -o json`,
`statectl ls -o jsonl` (stdout to /dev/null), the ls floor (one process, a bare DB-API cursor over the same rows
writing the same JSON Lines with json.dumps; checked to write the very bytes ls writes), then `statectl prune
--yes -o json`, last since it changes the state the others read. ls and its floor also run on SQLite (its own
`airflow db migrate` and demo run, the same generated rows; no objects: ls reads none).

Targets: time at the largest size at most 11x the smallest's, peak RSS within 20%; ls within 1.5x its floor.
The table also shows each command's CPU time (user + system, /usr/bin/time): on a shared machine the wall time
of a minute-long run moves with the others' load, its CPU time much less. --before DIR also times the ls of
another statectl tree (e.g. `git archive HEAD statectl | tar -x -C DIR`) beside this one.

Usage: .venv/bin/python benchmarks/bench_scale.py [--rows 100000,1000000] [--repeat 1] [--workers 2]
       [--skip-sqlite] [--before DIR] [--keep] [--workdir DIR] [--report FILE]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import math
import multiprocessing
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import STATECTL, load, log  # noqa: E402
from statectl.core import codec, layout  # noqa: E402
from statectl.core.scopes import TaskScope  # noqa: E402
from statectl.stores.bucket import decode_object, encode_object  # noqa: E402
from statectl.stores.metastore import SQLITE_TIMESTAMP  # noqa: E402
from tests.infra import (  # noqa: E402
    PYTHON,
    AirflowEnv,
    PostgresServer,
    airflow_base_env,
    airflow_db_migrate,
    find_pg_bin_dir,
    new_home,
    pg_env,
    run_dag,
    run_python,
    start_postgres,
)

DEMO_DAG = ROOT / "examples" / "dags" / "statectl_demo.py"
COMPRESSION, THRESHOLD = "gzip", 100
DAGS = 100
TASK_INSTANCES = [(t, -1) for t in ("extract", "transform", "validate", "load", "publish", "notify")] + [
    (t, m) for t in ("partition", "shard") for m in range(4)
]
KEYS = ("checkpoint", "offset", "watermark", "cursor", "job_id", "schema", "stats", "attempts", "last_file", "batch")
ROWS_PER_RUN = len(TASK_INSTANCES) * len(KEYS)
DAG_PREFIX = "scale_"
MIN_BYTES, MAX_BYTES = 64, 8192
CHUNK = 10_000  # rows per worker task and COPY statement
OLD = timedelta(days=2)  # an old orphan's age: past prune's grace of 1h
TARGET_TIME_RATIO, TARGET_RSS_RATIO, TARGET_LS_FLOOR = 11.0, 1.2, 1.5

# The ls floor: one process, a bare DB-API cursor (psycopg2's server-side one) over the rows ls selects, in its
# order, writing the same JSON Lines with json.dumps. Classifies each value as a user would (json.loads of a ref
# wrapper), the compression from the suffix, timestamps through datetime; task rows, then asset rows.
LS_FLOOR = """
import json, os, re, sys
from datetime import datetime, timezone

REF = "__airflow_state_ref__"
SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
CODECS = {"gz": "gzip", "bz2": "bz2", "xz": "xz", "lzma": "lzma", "zip": "zip"}
target = sys.argv[1]
if target.startswith("host="):
    import psycopg2
    conn = psycopg2.connect(target)
    cur, assets = conn.cursor(name="floor_tasks"), conn.cursor(name="floor_assets")
    cur.itersize = assets.itersize = 5000
else:
    import sqlite3
    conn = sqlite3.connect(target)
    cur, assets = conn.cursor(), conn.cursor()

def ts(v):
    if v is None:
        return None
    if isinstance(v, str):
        v = datetime.fromisoformat(v)
    return (v if v.tzinfo else v.replace(tzinfo=timezone.utc)).isoformat()

def where(value):
    ref = None
    if value.startswith("{") and REF in value:
        try:
            doc = json.loads(value)
        except ValueError:
            doc = None
        ref = doc.get(REF) if isinstance(doc, dict) else None
    if not isinstance(ref, str) or not ref:
        return "plain", None, None
    if SCHEME.match(ref):
        return "object", CODECS.get(os.path.splitext(ref.rsplit("/", 1)[-1])[1].strip(".").lower()), ref
    return "inline", None, None

def line(kind, dag_id, run_id, task_id, map_index, asset, key, value, updated_at, expires_at):
    location, codec, url = where(value)
    return json.dumps({"kind": kind, "dag_id": dag_id, "run_id": run_id, "task_id": task_id, "map_index": map_index,
                       "asset": asset, "key": key, "bytes": len(value.encode()), "location": location,
                       "compression": codec, "updated_at": ts(updated_at), "expires_at": ts(expires_at),
                       "object": url}, ensure_ascii=False) + "\\n"

out = sys.stdout
cur.execute('SELECT dag_id, run_id, task_id, map_index, "key", value, updated_at, expires_at FROM task_state_store '
            'ORDER BY dag_id, run_id, task_id, map_index, "key"')
while rows := cur.fetchmany(5000):
    out.write("".join([line("task", d, r, t, m, None, k, v, u, e) for d, r, t, m, k, v, u, e in rows]))
assets.execute('SELECT a.id, a.name, a.uri, s."key", s.value, s.updated_at FROM asset_state_store s '
               'JOIN asset a ON a.id = s.asset_id ORDER BY a.name, s."key"')
for asset_id, name, uri, key, value, updated_at in assets.fetchall():
    out.write(line("asset", None, None, None, None, name or uri or f"asset#{asset_id}", key, value, updated_at, None))
"""

# The provider reads a sample back (deserialize) and writes it again under a scratch base (serialize): the same
# value, and the same path and column text as statectl's layout and codec made.
PROVIDER_CHECK = """
import json, os, sys
from airflow.providers.common.io.state_store.backend import StateStoreObjectStorageBackend
from airflow.sdk.state import TaskScope

samples, base, scratch = json.loads(open(sys.argv[1]).read()), sys.argv[2], sys.argv[3]
backend = StateStoreObjectStorageBackend()
for s in samples:
    ref = json.loads(s["column"])["__airflow_state_ref__"]
    assert backend.deserialize_task_state_store_from_ref(ref) == s["value"], ("read back", s)
os.environ["AIRFLOW__COMMON_IO__STATE_STORE_OBJECTSTORAGE_PATH"] = scratch
for s in samples:
    scope = TaskScope(dag_id=s["dag_id"], run_id=s["run_id"], task_id=s["task_id"], map_index=s["map_index"])
    ref = backend.serialize_task_state_store_to_ref(value=s["value"], key=s["key"], scope=scope)
    again = json.dumps({"__airflow_state_ref__": ref}).replace(scratch, base)
    assert again == s["column"], ("written again", again, s)
print(len(samples))
"""


# --------------------------------------------------------------------------- the generated state


@dataclass(frozen=True)
class Shape:
    """What every worker process needs to make row i and orphan j (a pure function of the index)."""

    base: str  # the bucket base path
    now: datetime
    runs: tuple[tuple[int, str, str], ...]  # run index -> (dag_run.id, dag_id, run_id)
    sqlite: bool  # timestamps as SQLAlchemy writes them on SQLite, else ISO 8601 for COPY
    write_objects: bool


def run_of(index: int) -> tuple[str, str]:
    """(dag_id, run_id) of the index-th generated run: dags round-robin, hourly runs."""
    logical = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(hours=index // DAGS)
    return f"{DAG_PREFIX}{index % DAGS:03d}", f"scheduled__{logical.isoformat()}"


def runs_needed(rows: int) -> int:
    return -(-rows // ROWS_PER_RUN)


_POOL = " ".join(f"{w}-{(i * 7919) % 100_000}" for i, w in enumerate(["alpha", "offset", "partition", "cursor"] * 800))


def value_of(seq: int) -> dict[str, Any]:
    """A value of log-uniform size (MIN_BYTES .. MAX_BYTES as JSON) that compresses like real state."""
    fraction = ((seq * 2654435761 + 12345) & 0xFFFFFFFF) / 2**32
    size = int(math.exp(math.log(MIN_BYTES) + fraction * (math.log(MAX_BYTES) - math.log(MIN_BYTES))))
    room = max(size - len(json.dumps({"seq": seq, "blob": ""})), 0)
    start = (seq * 7919) % (len(_POOL) - room)
    return {"seq": seq, "blob": _POOL[start : start + room]}


def _ts(shape: Shape, value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).strftime(SQLITE_TIMESTAMP) if shape.sqlite else value.isoformat()


def _write(path: str, data: bytes, made: set[str]) -> None:
    folder = path.rsplit("/", 1)[0]
    if folder not in made:
        os.makedirs(folder, exist_ok=True)
        made.add(folder)
    with open(path, "wb") as f:
        f.write(data)


def make_rows(shape: Shape, start: int, stop: int) -> tuple[list[tuple[Any, ...]], int]:
    """Rows start..stop-1 as insert tuples, each object written when asked; and how many refer to an object."""
    base = layout.parse_base_path(shape.base)
    rows, objects, made = [], 0, set[str]()
    for i in range(start, stop):
        dag_run_id, dag_id, run_id = shape.runs[i // ROWS_PER_RUN]
        task_id, map_index = TASK_INSTANCES[i % ROWS_PER_RUN // len(KEYS)]
        key = KEYS[i % len(KEYS)]
        url = layout.object_url(base, TaskScope(dag_id, run_id, task_id, map_index), key, COMPRESSION)
        encoded = codec.encode(value_of(i), offload=i % 50 != 7, threshold=THRESHOLD, url=url)
        if encoded.object_text is not None:
            objects += 1
            if shape.write_objects:
                _write(url.path, encode_object(url, encoded.object_text, COMPRESSION, local=True, verify=False), made)
        updated = shape.now - timedelta(minutes=(i * 37) % 43_200, microseconds=i % 1_000_000)
        expires = None  # 4 in 10 never expire, 1 in 10 expired a day before now at the latest, the rest live
        if i % 10 == 3:
            expires = updated - timedelta(days=1)
        elif i % 10 < 6:
            expires = updated + timedelta(days=60)
        row = (dag_run_id, task_id, map_index, key, dag_id, run_id, encoded.column_text)
        rows.append((*row, _ts(shape, updated), _ts(shape, expires)))
    return rows, objects


def make_orphans(shape: Shape, start: int, stop: int, seq_offset: int) -> None:
    """Orphans start..stop-1: objects no row refers to, 1 in 4 under a run that is gone, 4 in 5 old."""
    base = layout.parse_base_path(shape.base)
    made: set[str] = set()
    old = (shape.now - OLD).timestamp()
    for j in range(start, stop):
        _, dag_id, run_id = shape.runs[(j * 7) % len(shape.runs)]
        if j % 4 == 0:
            run_id = f"manual__gone_{j // 4 % 1000}"
        task_id, map_index = TASK_INSTANCES[j % len(TASK_INSTANCES)]
        url = layout.object_url(base, TaskScope(dag_id, run_id, task_id, map_index), f"stale_{j}", COMPRESSION)
        _write(url.path, encode_object(url, codec.serialize(value_of(seq_offset + j)), COMPRESSION, local=True), made)
        if j % 5:
            os.utime(url.path, (old, old))


_SHAPE: Shape | None = None  # the worker processes' copy


def _init_worker(shape: Shape) -> None:
    global _SHAPE
    _SHAPE = shape


def _rows_task(bounds: tuple[int, int]) -> tuple[bytes | list[tuple[Any, ...]], int]:
    """A worker's chunk: COPY text (CSV) for PostgreSQL, tuples for SQLite; and the object count."""
    assert _SHAPE is not None
    rows, objects = make_rows(_SHAPE, *bounds)
    if _SHAPE.sqlite:
        return rows, objects
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(rows)  # None -> empty unquoted: NULL in COPY's CSV
    return text.getvalue().encode(), objects


def _orphans_task(bounds: tuple[int, int, int]) -> None:
    assert _SHAPE is not None
    make_orphans(_SHAPE, *bounds)


def chunks(total: int, size: int = CHUNK) -> list[tuple[int, int]]:
    return [(start, min(start + size, total)) for start in range(0, total, size)]


# --------------------------------------------------------------------------- the deployments


_INSERT_COLUMNS = 'dag_run_id, task_id, map_index, "key", dag_id, run_id, value, updated_at, expires_at'


class Deployment:
    """An Airflow metastore (PostgreSQL or SQLite) with its bucket, the demo run, and generated rows."""

    def __init__(self, airflow: AirflowEnv, dsn: str) -> None:
        self.airflow = airflow
        self.dsn = dsn  # what LS_FLOOR connects to: a libpq DSN or the SQLite file
        self.sqlite = airflow.db_path is not None
        self.base = airflow.bucket_url
        self.env = airflow.with_backend(self.base, threshold=THRESHOLD, compression=COMPRESSION)
        # PYTHONDONTWRITEBYTECODE may be set on this machine: every process would recompile Airflow and
        # statectl. A private bytecode cache gives the commands the start-up of a normal install.
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)
        self.env["PYTHONPYCACHEPREFIX"] = str(airflow.home.parent / "pycache")
        self.runs: list[tuple[int, str, str]] = []
        self.before: str | None = None  # --before: a statectl tree whose ls runs too (PYTHONPATH)

    def connect(self) -> Any:
        if self.sqlite:
            return sqlite3.connect(self.dsn)
        import psycopg2

        return psycopg2.connect(self.dsn)

    def sql(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        conn = self.connect()
        try:
            cur = conn.cursor()
            if self.sqlite:
                cur.execute(statement, tuple(params))
            elif params:  # psycopg2's pyformat: a literal % doubled
                cur.execute(statement.replace("%", "%%").replace("?", "%s"), tuple(params))
            else:  # no parameters: no %-formatting either
                cur.execute(statement)
            rows = cur.fetchall() if cur.description is not None else []
            conn.commit()
            return rows
        finally:
            conn.close()

    def build(self) -> None:
        """airflow db migrate, and the demo DAG run through the provider (its run is the template)."""
        airflow_db_migrate(self.airflow.env)
        run_dag(self.env, DEMO_DAG.read_text(), self.airflow.home.parent)

    def make_runs(self, count: int) -> None:
        """Dag runs 0..count-1 (see run_of), each a copy of the demo's run under another dag and run id."""
        columns = [c for c in self._dag_run_columns() if c != "id"]
        template = self.sql("SELECT MIN(id) FROM dag_run")[0][0]
        fresh = {"dag_id", "run_id", "logical_date", "run_after"}
        select = ", ".join("?" if c in fresh else f'"{c}"' for c in columns)
        ordered = [c for c in columns if c in fresh]
        names = ", ".join(f'"{c}"' for c in columns)
        statement = f"INSERT INTO dag_run ({names}) SELECT {select} FROM dag_run WHERE id = ?"
        conn = self.connect()
        cur = conn.cursor()
        for index in range(len(self.runs), count):
            dag_id, run_id = run_of(index)
            logical = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(hours=index // DAGS)
            when: Any = logical.strftime(SQLITE_TIMESTAMP) if self.sqlite else logical
            values = {"dag_id": dag_id, "run_id": run_id, "logical_date": when, "run_after": when}
            params = (*(values[c] for c in ordered), template)
            cur.execute(statement if self.sqlite else statement.replace("?", "%s"), params)
        conn.commit()
        conn.close()
        known = {(d, r): i for i, d, r in self.sql("SELECT id, dag_id, run_id FROM dag_run WHERE dag_id LIKE 'scale%'")}
        self.runs = [(known[run_of(i)], *run_of(i)) for i in range(count)]

    def _dag_run_columns(self) -> list[str]:
        if self.sqlite:
            return [r[1] for r in self.sql("PRAGMA table_info(dag_run)")]
        return [
            r[0]
            for r in self.sql(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'dag_run' "
                "ORDER BY ordinal_position"
            )
        ]

    def seed(self, rows: int, workers: int, *, write_objects: bool) -> dict[str, Any]:
        """The generated rows (replacing earlier ones) and, when asked, their objects and as many orphans."""
        started = time.perf_counter()
        self.make_runs(runs_needed(rows))
        self.sql(f"DELETE FROM task_state_store WHERE dag_id LIKE '{DAG_PREFIX}%'")
        root = Path(self.airflow.bucket_dir)
        for old in root.glob(f"{DAG_PREFIX}*"):
            shutil.rmtree(old)
        shape = Shape(self.base, datetime.now(tz=UTC), tuple(self.runs), self.sqlite, write_objects)
        objects = 0
        conn = self.connect()
        cur = conn.cursor()
        with multiprocessing.get_context("fork").Pool(workers, _init_worker, (shape,)) as pool:
            for chunk, count in pool.imap(_rows_task, chunks(rows)):
                objects += count
                if isinstance(chunk, list):
                    cur.executemany(
                        f"INSERT INTO task_state_store ({_INSERT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", chunk
                    )
                else:
                    cur.copy_expert(
                        f"COPY task_state_store ({_INSERT_COLUMNS}) FROM STDIN WITH (FORMAT csv)", io.BytesIO(chunk)
                    )
            conn.commit()
            orphans = rows - objects if write_objects else 0
            list(pool.imap_unordered(_orphans_task, [(a, b, rows) for a, b in chunks(orphans)]))
        if not self.sqlite:
            cur.execute("ANALYZE task_state_store")
            conn.commit()
        conn.close()
        return {
            "rows": rows,
            "dag_runs": len(self.runs),
            "object_rows": objects,
            "orphans": orphans,
            "orphans_past_grace": sum(1 for j in range(orphans) if j % 5),
            "expired_rows": len(range(3, rows, 10)),
            "seconds": round(time.perf_counter() - started, 1),
        }

    def provider_check(self, workdir: Path) -> int:
        """The provider reads a sample of generated object and inline refs back, and writes them the same."""
        head = codec.wrap_ref(self.base)[:-2]  # '{"__airflow_state_ref__": "file:///...'
        sample = [
            row
            for like, limit in ((f"{head}%", 30), (f"{codec.WRAPPER_HEAD}{{%", 10))  # objects, inline refs
            for row in self.sql(
                f'SELECT dag_id, run_id, task_id, map_index, "key", value FROM task_state_store '
                f"WHERE dag_id LIKE '{DAG_PREFIX}%' AND value LIKE ? ORDER BY id % 97, id LIMIT {limit}",
                (like,),
            )
        ]
        documents = []
        for dag_id, run_id, task_id, map_index, key, column in sample:
            ref = json.loads(column)["__airflow_state_ref__"]
            url = layout.ObjectURL.parse(ref) if "://" in ref else None
            value = json.loads(ref if url is None else decode_object(url, Path(url.path).read_bytes()))
            documents.append(
                {
                    "dag_id": dag_id,
                    "run_id": run_id,
                    "task_id": task_id,
                    "map_index": map_index,
                    "key": key,
                    "column": column,
                    "value": value,
                }
            )
        kinds = {"object" if "://" in json.loads(d["column"])["__airflow_state_ref__"] else "inline" for d in documents}
        if kinds != {"object", "inline"}:
            raise RuntimeError(f"the provider sample lacks a kind of ref: {kinds}")
        sample_file = workdir / "provider-sample.json"
        sample_file.write_text(json.dumps(documents))
        scratch = (workdir / "provider-scratch").resolve().as_uri()
        proc = run_python(self.env, PROVIDER_CHECK, args=[str(sample_file), self.base, scratch], timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"the provider does not read the generated state as written:\n{proc.stderr[-4000:]}")
        return int(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- the runs


@dataclass
class Run:
    seconds: float
    cpu_s: float  # user + system: what the machine's other load changes least
    rss_mib: float
    code: int
    summary: dict[str, Any] = field(default_factory=dict)


def timed(cmd: list[str], env: dict[str, str], workdir: Path, *, keep_stdout: bool) -> Run:
    """One whole process: wall time from spawn to exit, its peak RSS, exit code, its JSON stdout.

    The RSS is /usr/bin/time's %M: a child of this (large) process would report this process's RSS as its own
    peak, the memory it was forked with."""
    out_path, err_path = workdir / "stdout", workdir / "stderr"
    with open(out_path if keep_stdout else os.devnull, "wb") as out, open(err_path, "wb") as err:
        start = time.perf_counter()
        code = subprocess.run(["/usr/bin/time", "-f", "%M %U %S", *cmd], env=env, stdout=out, stderr=err).returncode
        seconds = time.perf_counter() - start
    stderr = err_path.read_text()
    if code not in (0, 12):  # 12: check found problems (the orphans it should find)
        raise RuntimeError(f"{' '.join(cmd[:4])} failed ({code}):\n{stderr[-4000:]}")
    summary: dict[str, Any] = {}
    if keep_stdout:
        try:
            summary = json.loads(out_path.read_text())
        except ValueError:
            summary = {"stdout": out_path.read_text()[-2000:]}
    peak_kib, user, system = stderr.strip().splitlines()[-1].split()
    return Run(round(seconds, 3), round(float(user) + float(system), 2), round(int(peak_kib) / 1024, 1), code, summary)


def stdout_digest(cmd: list[str], env: dict[str, str]) -> tuple[str, int]:
    """sha256 and size of what a command writes (not timed)."""
    digest, size = hashlib.sha256(), 0
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    while block := proc.stdout.read(1 << 20):
        digest.update(block)
        size += len(block)
    if proc.wait() != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed ({proc.returncode})")
    return digest.hexdigest(), size


COMMANDS: dict[str, list[str]] = {
    "check": ["check", "-o", "json"],
    "prune --dry-run": ["prune", "--dry-run", "-o", "json"],
    "migrate to-metastore --dry-run": ["migrate", "to-metastore", "--dry-run", "-o", "json"],
    "ls -o jsonl": ["ls", "-o", "jsonl"],
    "ls floor": [],
    "prune --yes": ["prune", "--yes", "-o", "json"],
}
READ_ONLY = [name for name in COMMANDS if name != "prune --yes"]


BEFORE = "ls -o jsonl, --before tree"


def command_line(name: str, deployment: Deployment) -> tuple[list[str], dict[str, str]]:
    """The command and its environment: the workers' configuration (ls --before: another statectl tree)."""
    if name == "ls floor":
        return [PYTHON, "-c", LS_FLOOR, deployment.dsn], deployment.env
    if name == BEFORE:
        assert deployment.before is not None
        # -P: not the working directory first on sys.path (it may hold another statectl/), PYTHONPATH is
        return [PYTHON, "-P", "-m", "statectl", *COMMANDS["ls -o jsonl"]], {
            **deployment.env,
            "PYTHONPATH": deployment.before,
        }
    return [STATECTL, *COMMANDS[name]], deployment.env


def measure(deployment: Deployment, names: list[str], repeat: int, workdir: Path) -> dict[str, dict[str, Any]]:
    """Each command `repeat` times in turn (noise hits all alike); the median time and the largest RSS. A command
    that fails is reported (its error) and the others still run: a long run is not lost to one."""
    runs: dict[str, list[Run]] = {name: [] for name in names}
    errors: dict[str, str] = {}
    for _ in range(repeat):
        for name in names:
            if name in errors:
                continue
            try:
                run = timed(*command_line(name, deployment), workdir, keep_stdout=not name.startswith("ls"))
            except RuntimeError as e:
                errors[name] = str(e)[-2000:]
                log(f"  {name}: {e}")
                continue
            runs[name].append(run)
            log(f"  {name}: {run.seconds} s ({run.cpu_s} s CPU), {run.rss_mib} MiB, exit {run.code}")
    return {
        name: {"error": errors[name]}
        if name in errors
        else {
            "seconds": statistics.median(r.seconds for r in rs),
            "runs_s": [r.seconds for r in rs],
            "cpu_s": statistics.median(r.cpu_s for r in rs),
            "rss_mib": max(r.rss_mib for r in rs),
            "exit": rs[-1].code,
            "summary": brief(rs[-1].summary),
        }
        for name, rs in runs.items()
    }


def brief(summary: dict[str, Any]) -> dict[str, Any]:
    """The counts of a report, without its item lists."""
    if "findings" in summary:
        return {"totals": summary.get("totals"), "findings": {k: f["count"] for k, f in summary["findings"].items()}}
    keep = ("plan", "deleted", "actions", "totals", "exit_code", "ok")
    return {k: _counts(v) for k, v in summary.items() if k in keep}


def _counts(value: Any) -> Any:
    """A report part without its lists (the first items of each category)."""
    if isinstance(value, dict):
        return {k: _counts(v) for k, v in value.items() if not isinstance(v, list)}
    return value


def ls_identity(deployment: Deployment) -> dict[str, Any]:
    ls = stdout_digest(*command_line("ls -o jsonl", deployment))
    floor = stdout_digest(*command_line("ls floor", deployment))
    return {"same_bytes": ls == floor, "bytes": ls[1]}


# --------------------------------------------------------------------------- the report


def table(results: dict[int, dict[str, dict[str, Any]]], sizes: list[int]) -> str:
    small, big = sizes[0], sizes[-1]

    def label(n: int) -> str:
        return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k"

    s, b = label(small), label(big)
    head = (
        f"| command | time {s} | time {b} | ratio (<= {TARGET_TIME_RATIO:g}) | RSS {s} | RSS {b} "
        f"| ratio (<= {TARGET_RSS_RATIO:g}) | | CPU {s} | CPU {b} | CPU ratio |"
    )
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
    for name in results[small]:
        x, y = results[small][name], results[big][name]
        if "error" in x or "error" in y:
            lines.append(
                f"| {name} | {'failed' if 'error' in x else ''} | {'failed' if 'error' in y else ''} |||||FAIL||||"
            )
            continue
        time_ratio, rss_ratio = y["seconds"] / x["seconds"], y["rss_mib"] / x["rss_mib"]
        ok = time_ratio <= TARGET_TIME_RATIO and rss_ratio <= TARGET_RSS_RATIO
        lines.append(
            f"| {name} | {x['seconds']:.2f} s | {y['seconds']:.2f} s | {time_ratio:.1f}x | {x['rss_mib']:.0f} MiB "
            f"| {y['rss_mib']:.0f} MiB | {rss_ratio:.2f} | {'pass' if ok else 'FAIL'} "
            f"| {x['cpu_s']:.2f} s | {y['cpu_s']:.2f} s | {y['cpu_s'] / x['cpu_s']:.1f}x |"
        )
    return "\n".join(lines)


def floor_lines(results: dict[int, dict[str, dict[str, Any]]], store: str) -> list[str]:
    lines = []
    for size, by_name in results.items():
        ls, floor = by_name["ls -o jsonl"], by_name["ls floor"]
        if "error" in ls or "error" in floor:
            lines.append(f"{store} {size:>9} rows: failed")
            continue
        ratio = ls["seconds"] / floor["seconds"]
        verdict = "pass" if ratio <= TARGET_LS_FLOOR else "FAIL"
        before = by_name.get(BEFORE, {})
        was = (
            f"; before: {before['seconds']:.2f} s = {before['seconds'] / floor['seconds']:.2f}x"
            if "seconds" in before
            else ""
        )
        lines.append(
            f"{store} {size:>9} rows: ls {ls['seconds']:.2f} s / floor {floor['seconds']:.2f} s = {ratio:.2f}x "
            f"(<= {TARGET_LS_FLOOR}: {verdict}){was}"
        )
    return lines


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="100000,1000000", help="sizes, comma-separated (rows = objects)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each read-only command per size (median)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="processes generating the state")
    parser.add_argument("--skip-sqlite", action="store_true", help="no ls / floor runs on SQLite")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (PostgreSQL is stopped)")
    parser.add_argument("--workdir", type=Path, help="where the state goes (default: a new temporary directory)")
    parser.add_argument("--report", type=Path, help="also write the full report as JSON here")
    parser.add_argument("--before", type=Path, help="a statectl tree (a dir holding statectl/) whose ls runs too")
    args = parser.parse_args()
    sizes = sorted(int(n) for n in args.rows.split(","))
    # A killed run still stops its PostgreSQL cluster and removes its files (the finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    work = Path(tempfile.mkdtemp(prefix="statectl-bench-scale-", dir=args.workdir))
    report: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "load_before": load()}, "sizes": sizes}
    pg: PostgresServer | None = None
    try:
        bin_dir = find_pg_bin_dir()
        if bin_dir is None:
            sys.exit("no PostgreSQL server binaries (apt-get install -y postgresql)")
        pg = start_postgres(bin_dir)
        stores = {"postgresql": Deployment(*_postgres(pg, work / "pg"))}
        if not args.skip_sqlite:
            stores["sqlite"] = Deployment(*_sqlite(work / "sqlite"))
        ls_before = [BEFORE] if args.before else []
        for name, deployment in stores.items():
            deployment.before = str(args.before.resolve()) if args.before else None
            started = time.perf_counter()
            deployment.build()
            log(f"{name}: airflow db migrate + demo run in {time.perf_counter() - started:.0f} s")
        pg_results: dict[int, dict[str, dict[str, Any]]] = {}
        sqlite_results: dict[int, dict[str, dict[str, Any]]] = {}
        for size in sizes:
            postgres = stores["postgresql"]
            log(f"{size} rows: generating (PostgreSQL COPY + objects)")
            report.setdefault("data", {})[size] = data = postgres.seed(size, args.workers, write_objects=True)
            log(f"  {data}")
            data["provider_sample_ok"] = postgres.provider_check(work)
            data["ls_output"] = ls_identity(postgres)
            data["load"] = load()
            log(f"  provider read {data['provider_sample_ok']} values back; ls = floor: {data['ls_output']}")
            pg_results[size] = measure(postgres, ls_before + READ_ONLY, args.repeat, work)
            pg_results[size].update(measure(postgres, ["prune --yes"], 1, work))
            if "sqlite" in stores:
                sqlite = stores["sqlite"]
                log(f"{size} rows: SQLite")
                report.setdefault("sqlite_data", {})[size] = sqlite.seed(size, args.workers, write_objects=False)
                report["sqlite_data"][size]["ls_output"] = ls_identity(sqlite)
                sqlite_results[size] = measure(sqlite, [*ls_before, "ls -o jsonl", "ls floor"], args.repeat, work)
    finally:
        if pg is not None:
            pg.stop()
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    report["machine"]["load_after"] = load()
    report["postgresql"] = pg_results
    report["sqlite"] = sqlite_results
    if args.report:
        args.report.write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps({"machine": report["machine"], "data": report["data"]}, indent=2, default=str))
    print(f"\nPostgreSQL + file:// ({len(sizes)} sizes, median of {args.repeat}):\n")
    print(table(pg_results, sizes))
    print()
    for line in floor_lines(pg_results, "PostgreSQL") + floor_lines(sqlite_results, "SQLite    "):
        print(line)


def _postgres(pg: PostgresServer, work: Path) -> tuple[AirflowEnv, str]:
    work.mkdir(parents=True)
    airflow = pg_env(pg, "template1", work)
    assert airflow.db_name is not None
    return airflow, pg.dsn(airflow.db_name)


def _sqlite(work: Path) -> tuple[AirflowEnv, str]:
    work.mkdir(parents=True)
    home, bucket = new_home(work)
    db = home / "airflow.db"
    conn = f"sqlite:///{db}"
    return AirflowEnv(home, db, conn, bucket, airflow_base_env(home, conn)), str(db)


if __name__ == "__main__":
    main()
