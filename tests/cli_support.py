"""Helpers for the CLI tests: a metadata DB seeded by ONE real DAG run, copied per test.

The DAG run happens once per session (per backend); every test gets a fresh copy of the
seeded SQLite file (or a PostgreSQL database cloned from a seeded template), so tests can
write freely. Fixtures here are imported by the test modules; the memo dicts make sure the
DAG runs only once even though each module registers its own copy of the fixture.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.infra import VENV_BIN, AirflowEnv, PostgresServer, airflow_base_env, pg_env, run_dag, sqlite_env

STATECTL = str(VENV_BIN / "statectl")

DAG_ID = "statectl_ops"
TASK = "writer"
MAPPED = "mapped"
ASSET = "ops_asset"
ASSET_URI = "file:///tmp/statectl-ops-asset"

# Creates a dag run, task instances (one plain, three mapped) and an active asset. It writes no
# state: the tests write through statectl into their own copy.
SEED_DAG = f'''
from datetime import datetime

from airflow.sdk import Asset, dag, task

OPS_ASSET = Asset(name="{ASSET}", uri="{ASSET_URI}")


@dag(schedule=None, start_date=datetime(2024, 1, 1), catchup=False)
def {DAG_ID}():
    @task(outlets=[OPS_ASSET])
    def {TASK}():
        return 1

    @task
    def {MAPPED}(x):
        return x

    {TASK}() >> {MAPPED}.expand(x=[1, 2, 3])


d = {DAG_ID}()

if __name__ == "__main__":
    d.test()
'''


@dataclass(frozen=True)
class Seed:
    db_path: Path | None  # SQLite file; None for PostgreSQL
    pg_template: str | None
    run_id: str


_memo: dict[str, Seed] = {}


def _run_id_sqlite(db: Path) -> str:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT run_id FROM dag_run WHERE dag_id = ?", (DAG_ID,)).fetchall()
    assert len(rows) == 1, rows
    return rows[0][0]


def sqlite_seed(airflow_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Seed:
    if "sqlite" not in _memo:
        home = tmp_path_factory.mktemp("seeded_sqlite")
        db = home / "airflow.db"
        shutil.copyfile(airflow_template / "airflow.db", db)
        run_dag(airflow_base_env(home, f"sqlite:///{db}"), SEED_DAG, home)
        _memo["sqlite"] = Seed(db, None, _run_id_sqlite(db))
    return _memo["sqlite"]


def pg_seed(server: PostgresServer, pg_template: str, tmp_path_factory: pytest.TempPathFactory) -> Seed:
    if "pg" not in _memo:
        name = "statectl_seeded_template"
        server.drop_database(name)
        server.create_database(name, template=pg_template)
        home = tmp_path_factory.mktemp("seeded_pg")
        env = AirflowEnv(home, None, server.url(name), home, airflow_base_env(home, server.url(name)), name)
        run_dag(env.env, SEED_DAG, home)
        rows = env.query("SELECT run_id FROM dag_run WHERE dag_id = :d", d=DAG_ID)
        _memo["pg"] = Seed(None, name, rows[0][0])
    return _memo["pg"]


def sqlite_env_from_seed(seed: Seed, tmp_path: Path) -> AirflowEnv:
    assert seed.db_path is not None
    return sqlite_env(seed.db_path, tmp_path)


def pg_env_from_seed(seed: Seed, server: PostgresServer, tmp_path: Path) -> AirflowEnv:
    assert seed.pg_template is not None
    return pg_env(server, seed.pg_template, tmp_path)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def seeded_sqlite(airflow_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Seed:
    return sqlite_seed(airflow_template, tmp_path_factory)


@pytest.fixture
def seeded(seeded_sqlite: Seed, tmp_path: Path) -> AirflowEnv:
    """A fresh copy of the seeded SQLite metastore, with an empty file:// bucket dir."""
    return sqlite_env_from_seed(seeded_sqlite, tmp_path)


@pytest.fixture(scope="session")
def seeded_pg_template(
    postgres_server: PostgresServer, pg_airflow_template: str, tmp_path_factory: pytest.TempPathFactory
) -> Seed:
    return pg_seed(postgres_server, pg_airflow_template, tmp_path_factory)


@pytest.fixture
def pg_seeded(seeded_pg_template: Seed, postgres_server: PostgresServer, tmp_path: Path):
    env = pg_env_from_seed(seeded_pg_template, postgres_server, tmp_path)
    yield env
    postgres_server.drop_database(env.db_name or "")


@pytest.fixture
def run_id(seeded_sqlite: Seed) -> str:
    return seeded_sqlite.run_id


# --------------------------------------------------------------------------- running statectl


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    def __str__(self) -> str:
        return f"exit {self.code}\n--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"


def statectl(env: dict[str, str], *args: str, input: str | None = None, cwd: Path | None = None) -> Result:
    """Run the real entry point in a subprocess with exactly this environment."""
    proc = subprocess.run(
        [STATECTL, *args],
        env=env,
        input=input,
        capture_output=True,
        text=True,
        timeout=300,  # a safety net only: a loaded 2-core machine runs a migrate in minutes
        check=False,
        cwd=cwd,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def statectl_on_terminal(env: dict[str, str], *args: str, answer: str, prompt: str = "[y/N]") -> Result:
    """Run the entry point with stdin and stderr on a pseudo-terminal (as a person at a shell),
    type ``answer`` once ``prompt`` shows on stderr; stdout stays a pipe."""
    import os
    import pty
    import select
    import time

    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [STATECTL, *args], env=env, stdin=slave, stderr=slave, stdout=subprocess.PIPE, text=True, close_fds=True
    )
    os.close(slave)
    seen, answered, deadline = b"", False, time.monotonic() + 300
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
            if not answered and prompt.encode() in seen:
                os.write(master, answer.encode() + b"\n")
                answered = True
        elif proc.poll() is not None:
            break
    if proc.poll() is None and not answered:
        proc.kill()  # never asked: do not wait on a question that will not come
    assert proc.stdout is not None
    stdout = proc.stdout.read()
    code = proc.wait(timeout=60)
    os.close(master)
    return Result(code, stdout, seen.decode(errors="replace").replace("\r\n", "\n"))


def task_flags(run_id: str, task: str = TASK, map_index: int | None = None) -> list[str]:
    flags = ["--dag", DAG_ID, "--run", run_id, "--task", task]
    if map_index is not None:
        flags += ["--map-index", str(map_index)]
    return flags


# --------------------------------------------------------------------------- snapshots


def db_snapshot(env: AirflowEnv) -> dict[str, list[tuple[Any, ...]]]:
    return {
        "task": sorted(
            env.query(
                'SELECT dag_id, run_id, task_id, map_index, "key", value, updated_at, expires_at FROM task_state_store'
            ),
            key=repr,
        ),
        "asset": sorted(
            env.query('SELECT asset_id, "key", value, updated_at, last_updated_by_kind FROM asset_state_store'),
            key=repr,
        ),
    }


def files_snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def task_rows(env: AirflowEnv) -> dict[tuple[str, int, str], str]:
    rows = env.query('SELECT task_id, map_index, "key", value FROM task_state_store')
    return {(r[0], int(r[1]), r[2]): r[3] for r in rows}


def asset_rows(env: AirflowEnv) -> dict[str, tuple[str, str | None]]:
    rows = env.query('SELECT s."key", s.value, s.last_updated_by_kind FROM asset_state_store s')
    return {r[0]: (r[1], r[2]) for r in rows}


def ref_of(value: str) -> str:
    return json.loads(value)["__airflow_state_ref__"]


def local_path(url: str) -> Path:
    assert url.startswith("file://"), url
    return Path(url.removeprefix("file://"))


def env_without(env: dict[str, str], *names: str) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in names}


# --------------------------------------------------------------------------- in-process writes


def core_store(env: dict[str, str]) -> Any:
    """statectl's own core on this environment (for quick set-up and the core-API tests)."""
    from statectl.core.config import Config
    from statectl.stores.store import StateStore

    return StateStore(Config(environ=env))


def core_put(env: dict[str, str], scope: Any, key: str, value: Any, **kwargs: Any) -> Any:
    from statectl.ops.write import put_value

    store = core_store(env)
    try:
        return put_value(store, scope, key, value, **kwargs)
    finally:
        store.close()
