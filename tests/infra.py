"""Real components for statectl's tests: Airflow metadata DBs, PostgreSQL, S3 and GCS servers.

Nothing here is mocked. On a FRESH Debian (bookworm) machine, `.ci/run` needs:

    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql
    uv sync --frozen --extra test

`postgresql` brings the server binaries (/usr/lib/postgresql/<ver>/bin/{initdb,pg_ctl,postgres})
and creates the `postgres` system user. The fixtures do NOT use the cluster the package may
start on port 5432: they run their own throwaway cluster on a free loopback port. Because
initdb/pg_ctl refuse to run as root, under root they are run as `postgres` via `runuser`
(util-linux, always present on Debian). moto (S3) and gcp-storage-emulator (GCS) are Python
packages from the `test` extra; they run in-process threads on 127.0.0.1. No network access
is needed at test time.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.request
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The venv's bin dir: tests run under the venv python, which also provides `airflow`.
VENV_BIN = Path(sys.executable).parent
PYTHON = str(VENV_BIN / "python")
AIRFLOW = str(VENV_BIN / "airflow")

OBJECT_STORAGE_BACKEND = "airflow.providers.common.io.state_store.backend.StateStoreObjectStorageBackend"
S3_CONN_ID = "statectl_s3"
AWS_KEY = "testing"
AWS_REGION = "us-east-1"
# Distinctive so tests can assert it never shows up in statectl's output.
PG_PASSWORD = "pg-S3cret-7f3a9c"
PG_USER = "statectl"
PG_TEMPLATE_DB = "airflow_template"


# --------------------------------------------------------------------------- environment


def clean_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Copy of the environment without any Airflow settings (AIRFLOW__*, AIRFLOW_CONN_*,
    AIRFLOW_HOME, AIRFLOW_CONFIG, ...) so the developer's own Airflow can't leak in."""
    src = os.environ if base is None else base
    return {k: v for k, v in src.items() if not k.upper().startswith(("AIRFLOW", "_AIRFLOW"))}


def airflow_base_env(home: Path, sql_alchemy_conn: str) -> dict[str, str]:
    env = clean_env()
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=sql_alchemy_conn,
    )
    if sql_alchemy_conn.startswith("postgresql"):
        # Airflow derives an async URL (postgresql+asyncpg) at import time and asyncpg is not
        # installed; psycopg 3 (test extra) has an async driver, so point Airflow at it.
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC"] = "postgresql+psycopg:" + sql_alchemy_conn.split(":", 1)[1]
    return env


def free_port() -> int:
    # Small race between close and the server binding it; acceptable for a test bed.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def airflow_db_migrate(env: Mapping[str, str], timeout: float = 300) -> None:
    proc = subprocess.run(
        [AIRFLOW, "db", "migrate"],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"airflow db migrate failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )


# --------------------------------------------------------------------------- Airflow env


@dataclass
class AirflowEnv:
    """One isolated Airflow installation: its home, metadata DB and a file:// bucket dir."""

    home: Path
    db_path: Path | None  # the SQLite file; None for PostgreSQL
    sql_alchemy_conn: str
    bucket_dir: Path
    env: dict[str, str]
    db_name: str | None = None  # PostgreSQL database name; None for SQLite

    @property
    def bucket_url(self) -> str:
        """file:// URL of bucket_dir, usable as the object storage base path."""
        return self.bucket_dir.resolve().as_uri()

    def with_backend(self, path: str, threshold: int = 0, compression: str | None = None) -> dict[str, str]:
        """env plus the worker-side object storage backend settings."""
        env = dict(self.env)
        env.update(
            AIRFLOW__WORKERS__STATE_STORE_BACKEND=OBJECT_STORAGE_BACKEND,
            AIRFLOW__COMMON_IO__STATE_STORE_OBJECTSTORAGE_PATH=path,
            AIRFLOW__COMMON_IO__STATE_STORE_OBJECTSTORAGE_THRESHOLD=str(threshold),
            # Empty string = no compression (the provider's default).
            AIRFLOW__COMMON_IO__STATE_STORE_OBJECTSTORAGE_COMPRESSION=compression or "",
        )
        return env

    def query(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        """Run one SQL statement (`:name` placeholders) and return its rows (if any).
        Uses SQLAlchemy so the same SQL works for SQLite and PostgreSQL."""
        import sqlalchemy as sa
        from sqlalchemy.pool import NullPool

        engine = sa.create_engine(self.sql_alchemy_conn, poolclass=NullPool)
        try:
            with engine.begin() as conn:
                result = conn.execute(sa.text(sql), params)
                return [tuple(r) for r in result] if result.returns_rows else []
        finally:
            engine.dispose()


# --------------------------------------------------------------------------- PostgreSQL


def find_pg_bin_dir() -> Path | None:
    """Directory with initdb/pg_ctl: Debian's /usr/lib/postgresql/<newest>/bin, else PATH."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
        key=lambda p: int(re.search(r"/(\d+)/bin/", p).group(1)),  # type: ignore[union-attr]
    )
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).resolve().parent
    return None


def _as_user_prefix() -> tuple[list[str], str | None]:
    """Command prefix to drop root (initdb/postgres refuse to run as root) and the user name."""
    if os.geteuid() != 0:
        return [], None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            break
    else:
        raise RuntimeError("running as root but neither 'postgres' nor 'nobody' user exists")
    if shutil.which("runuser"):
        return ["runuser", "-u", name, "--"], name
    if shutil.which("setpriv"):
        return ["setpriv", f"--reuid={name}", f"--regid={name}", "--init-groups", "--"], name
    raise RuntimeError("running as root but neither runuser nor setpriv is available")


@dataclass
class PostgresServer:
    """A throwaway PostgreSQL cluster on 127.0.0.1 with password auth over TCP."""

    host: str
    port: int
    user: str
    password: str
    bin_dir: Path
    base_dir: Path
    run_as: list[str] = field(default_factory=list)

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    def url(self, dbname: str, driver: str = "postgresql+psycopg2") -> str:
        """SQLAlchemy URL (what Airflow's sql_alchemy_conn takes)."""
        return f"{driver}://{self.user}:{self.password}@{self.host}:{self.port}/{dbname}"

    def dsn(self, dbname: str = "postgres") -> str:
        """libpq DSN for psycopg / psycopg2."""
        return f"host={self.host} port={self.port} user={self.user} password={self.password} dbname={dbname}"

    def admin_execute(self, *statements: str) -> None:
        """Run statements in autocommit mode (CREATE/DROP DATABASE can't be in a tx)."""
        import psycopg

        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            for stmt in statements:
                conn.execute(stmt)  # type: ignore[arg-type]

    def create_database(self, name: str, template: str | None = None) -> None:
        tmpl = f' TEMPLATE "{template}"' if template else ""
        self.admin_execute(f'CREATE DATABASE "{name}"{tmpl}')

    def drop_database(self, name: str) -> None:
        # FORCE: a test may leave a connection open (PostgreSQL >= 13).
        self.admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def pg_ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.run_as, str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), *args],
            cwd=self.base_dir,  # the dropped-privilege user may not be able to read our cwd
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def stop(self) -> None:
        self.pg_ctl("stop", "-m", "fast", "-w")
        shutil.rmtree(self.base_dir, ignore_errors=True)


def start_postgres(bin_dir: Path) -> PostgresServer:
    run_as, user = _as_user_prefix()
    # Not under pytest's tmp dir: that is 0700 root-owned, so `postgres` could not reach it.
    base = Path(tempfile.mkdtemp(prefix="statectl-pg-"))
    pwfile = base / "pwfile"
    pwfile.write_text(PG_PASSWORD + "\n")
    if user is not None:
        pw = pwd.getpwnam(user)
        for p in (base, pwfile):
            os.chown(p, pw.pw_uid, pw.pw_gid)
    server = PostgresServer(
        host="127.0.0.1",
        port=free_port(),
        user=PG_USER,
        password=PG_PASSWORD,
        bin_dir=bin_dir,
        base_dir=base,
        run_as=run_as,
    )
    init = subprocess.run(
        [
            *run_as,
            str(bin_dir / "initdb"),
            "-D",
            str(server.data_dir),
            "-U",
            PG_USER,
            f"--pwfile={pwfile}",
            "--auth-host=scram-sha-256",
            "--auth-local=trust",
            # --no-locale: no dependency on generated locales on a minimal machine.
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        ],
        cwd=base,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if init.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        raise RuntimeError(f"initdb failed:\n{init.stdout}\n{init.stderr}")
    opts = (
        f"-c listen_addresses={server.host} -p {server.port} -k {base} "
        # Durability is irrelevant for a throwaway test cluster; speed is not.
        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    )
    start = server.pg_ctl("start", "-w", "-t", "60", "-l", str(base / "server.log"), "-o", opts)
    if start.returncode != 0:
        log = (base / "server.log").read_text() if (base / "server.log").exists() else ""
        shutil.rmtree(base, ignore_errors=True)
        raise RuntimeError(f"pg_ctl start failed:\n{start.stdout}\n{start.stderr}\n{log}")
    return server


# --------------------------------------------------------------------------- S3 (moto)


@dataclass
class S3Bucket:
    bucket: str
    endpoint_url: str
    conn_id: str
    conn_env: dict[str, str]

    def url(self, path: str = "") -> str:
        """Airflow ObjectStoragePath URL, with the conn_id the provider resolves."""
        return f"s3://{self.conn_id}@{self.bucket}/{path.lstrip('/')}"

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=AWS_KEY,
            aws_secret_access_key=AWS_KEY,
            region_name=AWS_REGION,
        )

    def keys(self) -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def s3_conn_env(endpoint_url: str, conn_id: str = S3_CONN_ID) -> dict[str, str]:
    conn = {
        "conn_type": "aws",
        "login": AWS_KEY,
        "password": AWS_KEY,
        "extra": {"endpoint_url": endpoint_url, "region_name": AWS_REGION},
    }
    return {f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(conn)}


def create_s3_bucket(endpoint_url: str) -> S3Bucket:
    name = f"statectl-{uuid.uuid4().hex[:12]}"
    bucket = S3Bucket(name, endpoint_url, S3_CONN_ID, s3_conn_env(endpoint_url))
    bucket.client().create_bucket(Bucket=name)
    return bucket


# --------------------------------------------------------------------------- GCS emulator


@dataclass
class GcsBucket:
    bucket: str
    endpoint_url: str
    env: dict[str, str]

    def url(self, path: str = "") -> str:
        return f"gs://{self.bucket}/{path.lstrip('/')}"

    def fs(self) -> Any:
        """A fresh (uncached) gcsfs filesystem talking to the emulator."""
        # gcsfs >= 2026 probes bucket types over gRPC first, which stalls for minutes on the
        # emulator; the switch is read once, when gcsfs is first imported (see conftest).
        os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
        import gcsfs

        return gcsfs.GCSFileSystem(
            endpoint_url=self.endpoint_url, token="anon", project="test", skip_instance_cache=True
        )


def gcs_env(endpoint_url: str) -> dict[str, str]:
    return {"STORAGE_EMULATOR_HOST": endpoint_url, "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}


def start_gcs_emulator() -> tuple[Any, str]:
    """Start gcp-storage-emulator (in-memory) in a thread; return (server, endpoint_url)."""
    from gcp_storage_emulator.server import create_server

    port = free_port()
    server = create_server("127.0.0.1", port, in_memory=True)
    server.start()
    widen_gcs_emulator_backlog(server)
    return server, f"http://127.0.0.1:{port}"


def create_gcs_bucket(endpoint_url: str) -> GcsBucket:
    name = f"statectl-{uuid.uuid4().hex[:12]}"
    req = urllib.request.Request(
        f"{endpoint_url}/storage/v1/b?project=test",
        data=json.dumps({"name": name}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        resp.read()
    return GcsBucket(name, endpoint_url, gcs_env(endpoint_url))


# --------------------------------------------------------------------------- DAG runs

_FINISHED = re.compile(r"DagRun Finished: dag_id=(?P<dag>[^,]+),.*?\bstate=(?P<state>\w+)")
_dag_counter = 0


def run_dag(
    env: Mapping[str, str],
    dag_source: str,
    tmp_path: Path,
    *,
    timeout: float = 300,
    expect_success: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a DAG file (ending in `dag.test()` under `__main__`) in a subprocess.

    dag.test() only runs DAGs it finds in a DAG bundle, so the file goes into its own fresh
    folder that becomes `[core] dags_folder` for this run. Non-ASCII state keys fail inside
    dag.test() (a2wsgi UnicodeDecodeError), so use ASCII keys.
    """
    global _dag_counter
    _dag_counter += 1
    folder = tmp_path / f"dags-{_dag_counter}-{uuid.uuid4().hex[:6]}"
    folder.mkdir(parents=True)
    dag_file = folder / "dag_under_test.py"
    dag_file.write_text(dag_source)
    run_env = dict(env)
    run_env["AIRFLOW__CORE__DAGS_FOLDER"] = str(folder)
    proc = subprocess.run(
        [PYTHON, str(dag_file)],
        env=run_env,
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if expect_success:
        assert_dag_success(proc)
    return proc


def dag_run_states(proc: subprocess.CompletedProcess[str]) -> list[tuple[str, str]]:
    """(dag_id, state) of every DagRun that dag.test() reported as finished."""
    return [(m["dag"], m["state"]) for m in _FINISHED.finditer(proc.stdout + proc.stderr)]


def assert_dag_success(proc: subprocess.CompletedProcess[str]) -> None:
    # dag.test() exits 0 even when the run fails, so check the reported state too.
    out = f"--- stdout ---\n{proc.stdout[-6000:]}\n--- stderr ---\n{proc.stderr[-6000:]}"
    assert proc.returncode == 0, f"DAG process exited {proc.returncode}\n{out}"
    states = dag_run_states(proc)
    assert states, f"no 'DagRun Finished' line in output\n{out}"
    assert all(s == "success" for _, s in states), f"DAG run states {states}\n{out}"


def run_python(
    env: Mapping[str, str], code: str, *, timeout: float = 120, args: Sequence[str] = ()
) -> subprocess.CompletedProcess[str]:
    """Run a Python snippet in the venv with the given environment (for smoke checks)."""
    return subprocess.run(
        [PYTHON, "-c", code, *args],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def new_home(tmp_path: Path) -> tuple[Path, Path]:
    """An empty AIRFLOW_HOME and an empty file:// bucket directory under tmp_path."""
    home, bucket = tmp_path / "airflow_home", tmp_path / "bucket"
    home.mkdir()
    bucket.mkdir()
    return home, bucket


def sqlite_env(db_source: Path, tmp_path: Path) -> AirflowEnv:
    """A copy of a migrated SQLite DB in an airflow.cfg-less AIRFLOW_HOME.

    Only the DB is copied: a template's airflow.cfg hard-codes the template's own DB path.
    """
    home, bucket = new_home(tmp_path)
    db = home / "airflow.db"
    shutil.copyfile(db_source, db)
    conn = f"sqlite:///{db}"
    return AirflowEnv(home=home, db_path=db, sql_alchemy_conn=conn, bucket_dir=bucket, env=airflow_base_env(home, conn))


def pg_env(server: PostgresServer, template: str, tmp_path: Path) -> AirflowEnv:
    """A fresh PostgreSQL database cloned from a template database (well under a second)."""
    name = f"airflow_{uuid.uuid4().hex[:12]}"
    server.create_database(name, template=template)
    home, bucket = new_home(tmp_path)
    conn = server.url(name)
    return AirflowEnv(
        home=home,
        db_path=None,
        sql_alchemy_conn=conn,
        bucket_dir=bucket,
        env=airflow_base_env(home, conn),
        db_name=name,
    )


def json_literal(value: Any) -> str:
    """Python source that evaluates to ``value`` inside a generated DAG file (via json.loads)."""
    return f"json.loads({json.dumps(json.dumps(value))})"


def asset_reader_dag(dag_id: str, asset_name: str, asset_uri: str, expected: dict[str, Any], marker: str) -> str:
    """A DAG whose task reads these asset values through the provider, as any worker does, asserts them
    and prints ``<marker> <count>`` (asset state is not per run, so a new run sees it)."""
    return f"""
import json
from datetime import datetime

from airflow.sdk import Asset, dag, task

ASSET = Asset(name={asset_name!r}, uri={asset_uri!r})
EXPECTED = {json_literal(expected)}


@dag(dag_id={dag_id!r}, schedule=None, start_date=datetime(2024, 1, 1), catchup=False)
def reader_dag():
    @task(inlets=[ASSET])
    def read_assets(**context):
        accessor = context["asset_state_store"][ASSET]
        for key, want in EXPECTED.items():
            got = accessor.get(key)
            assert got == want and json.dumps(got) == json.dumps(want), (key, got, want)
        print({marker!r}, len(EXPECTED))

    read_assets()


d = reader_dag()

if __name__ == "__main__":
    d.test()
"""


# --------------------------------------------------------------------------- worker-written seeds


def state_writer_dag(
    dag_id: str,
    asset_name: str,
    asset_uri: str,
    task_values: dict[str, Any],
    mapped_values: dict[int, Any],
    asset_values: dict[str, Any],
) -> str:
    """A DAG whose `writer` task sets task and asset values and whose mapped task sets key "m" per index."""
    return f"""
import json
from datetime import datetime

from airflow.sdk import Asset, dag, task

ASSET = Asset(name={asset_name!r}, uri={asset_uri!r})
TASK_VALUES = {json_literal(task_values)}
MAPPED_VALUES = {json_literal(mapped_values)}
ASSET_VALUES = {json_literal(asset_values)}


@dag(dag_id={dag_id!r}, schedule=None, start_date=datetime(2024, 1, 1), catchup=False)
def writer_dag():
    @task(outlets=[ASSET])
    def writer(**context):
        for key, value in TASK_VALUES.items():
            context["task_state_store"].set(key, value)
        for key, value in ASSET_VALUES.items():
            context["asset_state_store"][ASSET].set(key, value)

    @task
    def mapped(i, **context):
        context["task_state_store"].set("m", MAPPED_VALUES[str(i)])

    writer() >> mapped.expand(i={sorted(mapped_values)!r})


d = writer_dag()

if __name__ == "__main__":
    d.test()
"""


@dataclass(frozen=True)
class WorkerBucketSeed:
    """A SQLite metastore and file:// bucket written by one real DAG run through the provider."""

    db: Path
    bucket: Path  # the base path the worker wrote under (refs hold its absolute path)
    pristine: Path  # a copy of the bucket right after the run


def seed_worker_bucket(
    template_db: Path, root: Path, dag_source: str, threshold: int, compression: str | None
) -> WorkerBucketSeed:
    home, bucket = root / "home", root / "bucket"
    home.mkdir()
    bucket.mkdir()
    db = home / "airflow.db"
    shutil.copyfile(template_db, db)
    env = AirflowEnv(home, db, f"sqlite:///{db}", bucket, airflow_base_env(home, f"sqlite:///{db}"))
    run_dag(env.with_backend(env.bucket_url, threshold, compression), dag_source, root)
    pristine = root / "pristine"
    shutil.copytree(bucket, pristine)
    return WorkerBucketSeed(db, bucket, pristine)


def worker_bucket_copy(seed: WorkerBucketSeed, tmp_path: Path) -> AirflowEnv:
    """A fresh copy of the seeded DB, and the worker's bucket directory restored in place as written
    (the refs hold its absolute path, so tests using one seed run serially)."""
    home = tmp_path / "airflow_home"
    home.mkdir()
    db = home / "airflow.db"
    shutil.copyfile(seed.db, db)
    shutil.rmtree(seed.bucket)
    shutil.copytree(seed.pristine, seed.bucket)
    conn = f"sqlite:///{db}"
    return AirflowEnv(home, db, conn, seed.bucket, airflow_base_env(home, conn))


# --------------------------------------------------------------------------- GCS through an Airflow connection

GCS_CONN_ID = "statectl_gcs"
GCS_UPDATED_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"  # how gcp-storage-emulator stamps an object's `updated`


def gcs_conn_env(endpoint_url: str, conn_id: str = GCS_CONN_ID, project: str = "test") -> dict[str, str]:
    """AIRFLOW_CONN_<ID> for a google_cloud_platform connection to the emulator, as a worker would have it:
    anonymous credentials and the endpoint in the extras (apache-airflow-providers-google's fs/gcs.py
    `get_fs` reads `gcs.endpoint`), so gs://<conn_id>@bucket/... reaches it without STORAGE_EMULATOR_HOST."""
    conn = {
        "conn_type": "google_cloud_platform",
        "extra": {"is_anonymous": True, "gcs.endpoint": endpoint_url, "project": project},
    }
    return {f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(conn), "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}


def gcs_conn_url(bucket: GcsBucket, path: str = "", conn_id: str = GCS_CONN_ID) -> str:
    """gs://<conn_id>@<bucket>/<path>: an object storage base path that resolves through the connection."""
    return f"gs://{conn_id}@{bucket.bucket}/{path.lstrip('/')}"


def gcs_objects(bucket: GcsBucket, prefix: str = "") -> dict[str, bytes]:
    """Every object in the bucket (name -> bytes) whose name starts with prefix, read with plain gcsfs
    (a fresh, uncached filesystem: independent of Airflow and statectl)."""
    fs = bucket.fs()
    root = f"{bucket.bucket}/"
    names = [p.removeprefix(root) for p in fs.find(bucket.bucket)]
    wanted = sorted(n for n in names if n.startswith(prefix))
    return {n: fs.cat_file(root + n) for n in wanted}


def gcs_replace_objects(bucket: GcsBucket, objects: Mapping[str, bytes]) -> None:
    """Make the bucket hold exactly these objects (name -> bytes)."""
    fs = bucket.fs()
    root = f"{bucket.bucket}/"
    existing = fs.find(bucket.bucket)
    if existing:
        fs.rm(existing)
    if objects:
        fs.pipe({root + name: data for name, data in objects.items()})


def gcs_backdate(server: Any, bucket: GcsBucket, name: str, age_seconds: float) -> None:
    """Set an object's last-modified time (`updated`, also `timeCreated`) `age_seconds` in the past.

    GCS has no API for that (a real object only ages); the in-memory emulator keeps its object
    resources in a dict, so the test reaches into the server it started in this process. Listings and
    info() then report the older time, as they would for an object written that long ago."""
    from datetime import UTC, datetime, timedelta

    resource = server._storage.objects[bucket.bucket][name]
    stamp = (datetime.now(tz=UTC) - timedelta(seconds=age_seconds)).strftime(GCS_UPDATED_FORMAT)
    resource["updated"] = resource["timeCreated"] = stamp


def gcs_wait_for_object(bucket: GcsBucket, name: str, timeout: float = 30) -> bytes:
    """The object's bytes once it exists (AssertionError after timeout seconds).

    With a compression, the common-io provider writes through fs.open(..., compression=...): closing the
    codec does not close the gcsfs file beneath it, so the upload happens when that file is garbage
    collected, and gcsfs >= 2026.10 runs that close on its "gcsfs-deferred-close" thread, after the
    provider has returned the ref (or never, if the process exits first)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        found = gcs_objects(bucket, name)
        if name in found:
            return found[name]
        assert time.monotonic() < deadline, f"gs://{bucket.bucket}/{name} did not appear within {timeout} s"
        time.sleep(0.05)


def widen_gcs_emulator_backlog(server: Any, backlog: int = 128) -> None:
    """Let the emulator accept as many concurrent connections as gcsfs and statectl open (16 in flight).

    gcp-storage-emulator serves from one single-threaded http.server.HTTPServer, whose listen backlog is
    5: a sixth concurrent connect is dropped and retried by TCP after a second, so a concurrent batch
    (fs.pipe of a dict, statectl's migrate/prune/check --deep) stalls for seconds against it, an artefact
    no real store has. Linux lets a listening socket be listen()ed again with a larger backlog."""
    if not server._api.is_running.wait(10):
        raise RuntimeError("the GCS emulator did not start")
    server._api._httpd.socket.listen(backlog)
