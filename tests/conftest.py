"""pytest fixtures: real Airflow metadata DBs (SQLite, PostgreSQL), S3 (moto) and GCS (emulator).

Expensive things (airflow db migrate, servers) are session-scoped; every test gets its own
copy of the DB / database / bucket. See tests/infra.py for the helpers and CI requirements.
"""

from __future__ import annotations

import os

# Must happen before anything in this process imports gcsfs: gcsfs >= 2026 otherwise picks its
# gRPC-probing filesystem class, which stalls for about two minutes against the GCS emulator.
os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.infra import (
    PG_TEMPLATE_DB,
    AirflowEnv,
    GcsBucket,
    PostgresServer,
    S3Bucket,
    airflow_base_env,
    airflow_db_migrate,
    create_gcs_bucket,
    create_s3_bucket,
    find_pg_bin_dir,
    pg_env,
    sqlite_env,
    start_gcs_emulator,
    start_postgres,
)

# --------------------------------------------------------------------------- SQLite


@pytest.fixture(scope="session")
def airflow_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """AIRFLOW_HOME whose airflow.db was built once by `airflow db migrate`."""
    home = tmp_path_factory.mktemp("airflow_template")
    airflow_db_migrate(airflow_base_env(home, f"sqlite:///{home / 'airflow.db'}"))
    return home


@pytest.fixture
def airflow_home(airflow_template: Path, tmp_path: Path) -> AirflowEnv:
    """A fresh copy of the migrated SQLite DB in an airflow.cfg-less AIRFLOW_HOME."""
    return sqlite_env(airflow_template / "airflow.db", tmp_path)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL cluster (Debian's binaries) on a free 127.0.0.1 port."""
    bin_dir = find_pg_bin_dir()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server binaries (apt-get install -y postgresql)")
    server = start_postgres(bin_dir)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pg_airflow_template(postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Name of a database migrated by `airflow db migrate`, used as CREATE DATABASE template."""
    postgres_server.create_database(PG_TEMPLATE_DB)
    home = tmp_path_factory.mktemp("pg_airflow_template")
    airflow_db_migrate(airflow_base_env(home, postgres_server.url(PG_TEMPLATE_DB)))
    return PG_TEMPLATE_DB


@pytest.fixture
def pg_airflow_home(postgres_server: PostgresServer, pg_airflow_template: str, tmp_path: Path) -> Iterator[AirflowEnv]:
    """A fresh PostgreSQL database cloned from the migrated template (takes well under 1 s)."""
    env = pg_env(postgres_server, pg_airflow_template, tmp_path)
    yield env
    postgres_server.drop_database(env.db_name or "")


# --------------------------------------------------------------------------- S3 (moto)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """Endpoint URL of an in-process moto S3 server on 127.0.0.1."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: str) -> S3Bucket:
    """A fresh, uniquely named bucket; conn_env holds AIRFLOW_CONN_STATECTL_S3 for it."""
    return create_s3_bucket(s3_server)


# --------------------------------------------------------------------------- GCS emulator


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[str]:
    """Endpoint URL of an in-memory gcp-storage-emulator on 127.0.0.1."""
    server, endpoint = start_gcs_emulator()
    try:
        yield endpoint
    finally:
        server.stop()


@pytest.fixture
def gcs_bucket(gcs_server: str) -> GcsBucket:
    """A fresh bucket; env holds STORAGE_EMULATOR_HOST and the gcsfs HTTP-only switch."""
    return create_gcs_bucket(gcs_server)
