"""Which Airflow provider gives workers each object store scheme, and which connections it takes.

A worker reaches ``gs://conn@bucket/...`` through the provider that registers ``gs`` with Airflow's
object storage, with the credentials of ``conn``. When that provider is missing, or the connection
is undefined or of another type, the worker fails, and so does statectl: with a configuration error
(exit 4) that says what to install or define, not with "unreachable".
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from statectl.errors import ConfigError


@dataclass(frozen=True)
class Scheme:
    protocols: tuple[str, ...]
    provider: str  # the distribution that registers the protocols with Airflow's object storage
    module: str  # its object storage module, importable exactly when the provider is installed
    extra: str | None  # statectl's extra that installs it (None: a core dependency)
    conn_types: tuple[str, ...]  # the connection types its filesystem reads
    fsspec_package: str  # the fsspec implementation it builds on

    def install_hint(self) -> str:
        here = f"pip install 'statectl[{self.extra}]'" if self.extra else f"pip install {self.provider}"
        return f"{here} (and {self.provider} on every worker)"


SCHEMES = (
    Scheme(
        ("s3", "s3a", "s3n"),
        "apache-airflow-providers-amazon",
        "airflow.providers.amazon.aws.fs.s3",
        None,
        ("aws",),
        "s3fs",
    ),
    Scheme(
        ("gs", "gcs"),
        "apache-airflow-providers-google",
        "airflow.providers.google.cloud.fs.gcs",
        "google",
        ("google_cloud_platform",),
        "gcsfs",
    ),
    Scheme(
        ("abfs", "abfss", "adl"),
        "apache-airflow-providers-microsoft-azure",
        "airflow.providers.microsoft.azure.fs.adls",
        "azure",
        ("adls", "azure_data_lake", "wasb"),
        "adlfs",
    ),
)


def scheme_for(protocol: str) -> Scheme | None:
    return next((s for s in SCHEMES if protocol in s.protocols), None)


def require_provider(protocol: str) -> Scheme | None:
    """The scheme's provider, refusing one that is not installed (None: a scheme statectl has no table for)."""
    scheme = scheme_for(protocol)
    if scheme is None:
        return None
    missing = next((m for m in (scheme.module, scheme.fsspec_package) if not _importable(m)), None)
    if missing is not None:
        package = scheme.provider if missing == scheme.module else scheme.fsspec_package
        raise ConfigError(f"{protocol}:// needs {package}, which is not installed: {scheme.install_hint()}")
    return scheme


def require_connection_type(protocol: str, conn_id: str, conn_type: str | None) -> None:
    scheme = scheme_for(protocol)
    if scheme is not None and conn_type not in scheme.conn_types:
        wanted = " or ".join(scheme.conn_types)
        raise ConfigError(
            f"connection {conn_id!r} is of type {conn_type!r}; {protocol}:// reads a {wanted} connection "
            f"(fix the connection or the conn_id in the base path)"
        )


def connection_env_var(conn_id: str) -> str:
    return f"AIRFLOW_CONN_{conn_id.upper()}"


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False
