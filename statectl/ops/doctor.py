"""`doctor`: check an installation end to end; each finding says what is wrong and how to fix it.

Every check is a small function registered with :func:`check`; one failing check (a database
that is down, a missing library) never stops the others. Findings never hold secrets: the
database password and the connection's credentials are scrubbed from every line.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from typing import Any
from uuid import uuid4

from statectl.core import layout
from statectl.core.config import DEFAULT_CONCURRENCY, OBJECT_STORAGE_BACKEND, SERVER_BACKEND, Config, url_password
from statectl.core.filters import RowFilter
from statectl.core.layout import ObjectURL
from statectl.errors import ConfigError, ExitCode, StatectlError
from statectl.stores import schemes
from statectl.stores.store import StateStore

METASTORE_SERVER_BACKEND = SERVER_BACKEND.default
# Distributions whose versions matter here (read from metadata: no import).
DISTRIBUTIONS = (
    "statectl",
    "apache-airflow",
    "apache-airflow-core",
    "apache-airflow-task-sdk",
    "apache-airflow-providers-common-io",
    "apache-airflow-providers-amazon",
    "apache-airflow-providers-google",
    "apache-airflow-providers-microsoft-azure",
    "fsspec",
    "s3fs",
    "gcsfs",
    "adlfs",
)
MIN_AIRFLOW_CORE = (3, 3)
MIN_PROVIDER = (1, 8)  # the first common-io release with StateStoreObjectStorageBackend


class Status(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True)
class Finding:
    check: str
    status: Status
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"check": self.check, "status": self.status.value, "detail": self.detail, "fix": self.fix}


@dataclass
class DoctorReport:
    findings: list[Finding]
    settings: list[dict[str, str]] = field(default_factory=list)
    versions: dict[str, str | None] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return any(f.status is Status.FAIL for f in self.findings)

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.UNHEALTHY if self.failed else ExitCode.OK

    @property
    def status(self) -> Status:
        statuses = {f.status for f in self.findings}
        return Status.FAIL if Status.FAIL in statuses else Status.WARN if Status.WARN in statuses else Status.OK

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "findings": [f.as_dict() for f in self.findings],
            "settings": self.settings,
            "versions": self.versions,
        }


class Context:
    """What the checks share: the configuration, the store, results of earlier checks, the secrets."""

    def __init__(self, config: Config, concurrency: int) -> None:
        self.config = config
        self.store = StateStore(config, concurrency=concurrency)
        self.secrets: set[str] = set()
        password = url_password(config.sql_alchemy_conn)
        if password:
            self.secrets.add(password)
        self.bucket_ok = False
        self.connection_missing = False
        self.provider_missing = False

    @cached_property
    def base(self) -> ObjectURL | None:
        """The base path, or None when not configured or unusable (the base_path check reports it)."""
        try:
            return self.store.base
        except ConfigError:
            return None

    def scrub(self, text: str) -> str:
        for secret in sorted(self.secrets, key=len, reverse=True):
            if len(secret) >= 3:
                text = text.replace(secret, "***")
        return text


@dataclass(frozen=True)
class Verdict:
    """What a check says; the runner names it after the check (a Finding)."""

    status: Status
    detail: str
    fix: str = ""

    def named(self, check: str, scrub: Callable[[str], str] = str) -> Finding:
        return Finding(check, self.status, scrub(self.detail), scrub(self.fix))


def ok(detail: str) -> Verdict:
    return Verdict(Status.OK, detail)


def warn(detail: str, fix: str) -> Verdict:
    return Verdict(Status.WARN, detail, fix)


def fail(detail: str, fix: str) -> Verdict:
    return Verdict(Status.FAIL, detail, fix)


CheckFunction = Callable[[Context], Verdict | None]  # None: nothing to say (the check does not apply)
CHECKS: list[tuple[str, str, CheckFunction]] = []


def check(name: str, fix: str) -> Callable[[CheckFunction], CheckFunction]:
    """Register a check; ``fix`` is the line shown when it raises instead of reporting."""

    def register(function: CheckFunction) -> CheckFunction:
        CHECKS.append((name, fix, function))
        return function

    return register


# --------------------------------------------------------------------------- versions


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def installed_versions(*names: str) -> dict[str, str | None]:
    """Versions of these distributions (default: the ones that matter here), None if not installed."""
    versions: dict[str, str | None] = {}
    for name in names or DISTRIBUTIONS:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


@check("versions", "install Airflow >= 3.3 and apache-airflow-providers-common-io >= 1.8 (as on the workers)")
def check_versions(ctx: Context) -> Verdict | None:
    versions = installed_versions()
    listed = ", ".join(f"{name} {v}" for name, v in versions.items() if v)
    core = versions["apache-airflow-core"] or versions["apache-airflow"]
    if core is None or _version_tuple(core) < MIN_AIRFLOW_CORE:
        return fail(
            f"Airflow {core or 'not installed'}: the state store needs Airflow 3.3 ({listed})",
            "pip install 'apache-airflow>=3.3' in statectl's environment (the same version as the deployment)",
        )
    provider = versions["apache-airflow-providers-common-io"]
    if provider is None or _version_tuple(provider) < MIN_PROVIDER:
        status = Status.FAIL if ctx.config.worker_backend == OBJECT_STORAGE_BACKEND else Status.WARN
        return Verdict(
            status,
            f"apache-airflow-providers-common-io {provider or 'not installed'}: "
            f"StateStoreObjectStorageBackend needs 1.8.0 or later ({listed})",
            "pip install 'apache-airflow-providers-common-io>=1.8' here and on every worker",
        )
    return ok(listed)


# --------------------------------------------------------------------------- metastore


@check("metastore", "check [database] sql_alchemy_conn (host, port, user, password, database)")
def check_metastore(ctx: Context) -> Verdict | None:
    metastore = ctx.store.metastore
    try:
        metastore.check_schema()
    except ConfigError as e:
        return fail(
            e.message,
            "point [database] sql_alchemy_conn at the deployment's DB, or run `airflow db migrate` (Airflow >= 3.3)",
        )
    tasks = metastore.count_rows(RowFilter(assets=False))
    assets = metastore.count_rows(RowFilter(tasks=False))
    return ok(
        f"{metastore.display_url} reachable; state tables present ({tasks} task rows, {assets} asset rows)",
    )


@check("server_backend", "set [state_store] backend to the metastore backend or leave it unset")
def check_server_backend(ctx: Context) -> Verdict | None:
    dotted = ctx.config.value(SERVER_BACKEND).strip()
    if dotted == METASTORE_SERVER_BACKEND:
        return ok(f"[state_store] backend = {dotted}")
    try:
        backend = import_dotted(dotted)
    except ImportError as e:
        return fail(
            f"[state_store] backend {dotted!r} does not import ({e}): the API server cannot serve state requests",
            f"fix the class path or unset [state_store] backend (default {METASTORE_SERVER_BACKEND})",
        )
    from airflow.state.metastore import MetastoreBackend

    # `airflow state-store clean` runs only for an isinstance of MetastoreBackend.
    if isinstance(backend, type) and issubclass(backend, MetastoreBackend):
        return ok(f"[state_store] backend = {dotted} (a MetastoreBackend)")
    return warn(
        f"[state_store] backend is {dotted!r}, not a MetastoreBackend: `airflow state-store clean` "
        "skips it and deletes nothing, and statectl only sees what that backend keeps in the state tables",
        f"unset [state_store] backend (default {METASTORE_SERVER_BACKEND}) unless the custom backend is intended",
    )


def import_dotted(dotted: str) -> Any:
    """The object at a dotted path, imported as Airflow's import_string does (ImportError otherwise)."""
    module_name, _, attribute = dotted.rpartition(".")
    if not module_name:
        raise ImportError(f"{dotted!r} is not a dotted path")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except AttributeError as e:
        raise ImportError(f"AttributeError: {e}") from None
    except ImportError as e:
        raise ImportError(f"{type(e).__name__}: {e}") from None


@check("retention", "set [state_store] default_retention_days to 0 (no expiry) or more")
def check_retention(ctx: Context) -> Verdict | None:
    try:
        days = ctx.config.retention_days
    except ConfigError as e:
        return fail(
            f"{e.message}: workers raise ValueError on every set() without retention=",
            "set [state_store] default_retention_days to 0 (no expiry) or more",
        )
    if days == 0:
        return warn(
            "[state_store] default_retention_days = 0: task values never expire; `airflow state-store clean` "
            "finds nothing and `statectl prune` only finds orphan objects",
            "set [state_store] default_retention_days (e.g. 30) unless state should live forever",
        )
    return ok(f"task values expire after {days} days unless the task sets retention")


# --------------------------------------------------------------------------- workers' backend


@check("worker_backend", "set [workers] state_store_backend to an importable class path, or empty")
def check_worker_backend(ctx: Context) -> Verdict | None:
    dotted = ctx.config.worker_backend
    if not dotted:
        return ok("[workers] state_store_backend is empty: workers keep values in the metastore")
    try:
        cls = import_dotted(dotted)
    except ImportError as e:
        return fail(
            f"[workers] state_store_backend {dotted!r} does not import ({e}); workers fail "
            "with 'Could not load worker state backend' at the first state store access",
            f"fix the class path (the provider's is {OBJECT_STORAGE_BACKEND}) and install its package on every worker",
        )
    if dotted != OBJECT_STORAGE_BACKEND:
        return warn(
            f"[workers] state_store_backend is {cls.__module__}.{cls.__qualname__}: statectl reads and writes "
            "only as the object storage backend or no backend does",
            f"use {OBJECT_STORAGE_BACKEND}, or pass --backend to statectl knowing values may differ",
        )
    return ok(f"{dotted} imports")


@check(
    "base_path",
    "set [common.io] state_store_objectstorage_path to a URL with a scheme: file:///data/state, s3://conn@bucket/state",
)
def check_base_path(ctx: Context) -> Verdict | None:
    path = ctx.config.base_path
    offloads = bool(ctx.config.worker_backend)
    if path is None:
        if offloads:
            return fail(
                "[workers] state_store_backend is set but [common.io] state_store_objectstorage_path is empty: "
                "workers still run, write objects relative to their working directory (the provider's "
                "ObjectStoragePath('') is '.') and store refs without a scheme: reading one back fails "
                "with JSONDecodeError",
                "set [common.io] state_store_objectstorage_path (AIRFLOW__COMMON_IO__STATE_STORE_OBJECTSTORAGE_PATH) "
                "on every worker, e.g. s3://conn_id@bucket/state",
            )
        return ok("no object storage base path (workers keep values in the metastore)")
    layout.parse_base_path(path)  # raises with the fix for a path without a scheme
    if not offloads:
        return warn(
            f"a base path {path} is configured but [workers] state_store_backend is empty: workers do not offload",
            f"set [workers] state_store_backend = {OBJECT_STORAGE_BACKEND} to offload, or unset the path",
        )
    return ok(f"workers offload under {path}")


@check("compression", "set [common.io] state_store_objectstorage_compression to gzip, bz2, xz, lzma, zip or empty")
def check_compression(ctx: Context) -> Verdict | None:
    compression = ctx.config.compression
    if compression is None:
        return ok("objects are written uncompressed")
    try:
        suffix = layout.compression_suffix(compression)
    except ConfigError as e:
        library = {"zstd": "zstandard", "lz4": "lz4"}.get(compression)
        return fail(
            f"{e.message}; the provider raises 'Compression ... is not supported' on every offloaded write",
            (f"pip install {library} here and on every worker, or " if library else "")
            + "set [common.io] state_store_objectstorage_compression to gzip (or bz2, xz, lzma, zip), or empty",
        )
    if compression in ("zstd", "lz4"):
        library = "zstandard" if compression == "zstd" else "lz4"
        return warn(
            f"{compression} ({suffix}) works here, but every worker and reader needs the {library!r} library "
            "or it fails to write and to read these objects",
            f"pip install {library} on every worker image, or use gzip",
        )
    return ok(f"{compression}: objects end in {suffix}")


@check("threshold", "set [common.io] state_store_objectstorage_threshold to an integer >= 0")
def check_threshold(ctx: Context) -> Verdict | None:
    threshold = ctx.config.threshold
    limit = ctx.config.max_value_bytes
    if ctx.config.worker_backend and limit > 0 and threshold > limit:
        return warn(
            f"state_store_objectstorage_threshold {threshold} > [state_store] max_value_storage_bytes {limit}: "
            f"values of {limit} to {threshold} bytes stay inline in the row; workers only log a warning and "
            "the server stores them, but the REST API refuses to write such values (and `statectl put` "
            "without --force)",
            f"lower the threshold below {limit} (inline refs are JSON-escaped: keep it under half, e.g. "
            f"{limit // 2}) or raise max_value_storage_bytes",
        )
    return ok(f"values of {threshold} bytes or more go to objects (max_value_storage_bytes {limit})")


# --------------------------------------------------------------------------- connection and bucket


@check("provider", "install the Airflow provider of the base path's scheme here and on every worker")
def check_provider(ctx: Context) -> Verdict | None:
    base = ctx.base
    if base is None or base.is_local:
        return ok("no provider needed" + (f" for {base.protocol}://" if base else ""))
    scheme = schemes.scheme_for(base.protocol)
    if scheme is None:
        return warn(
            f"{base.protocol}:// is not a scheme statectl knows the Airflow provider of",
            "use s3://, gs:// or abfs:// (statectl resolves them as workers do), or check the scheme",
        )
    try:
        schemes.require_provider(base.protocol)
    except ConfigError as e:
        ctx.provider_missing = True
        return fail(f"{e.message}; workers without it fail on every offloaded value", scheme.install_hint())
    version = installed_versions(scheme.provider).get(scheme.provider)
    return ok(f"{base.protocol}:// through {scheme.provider} {version}")


@check("connection", "define the connection (AIRFLOW_CONN_<ID>, a secrets backend or `airflow connections add`)")
def check_connection(ctx: Context) -> Verdict | None:
    base = ctx.base
    if base is None or base.is_local:
        return ok("no connection needed" + (f" for {base.protocol}://" if base else ""))
    if not base.conn_id:
        return ok(f"{base.protocol}:// without a conn_id: the filesystem's default credentials")
    env_var = f"AIRFLOW_CONN_{base.conn_id.upper()}"
    from airflow.sdk import Connection

    try:
        conn = Connection.get(base.conn_id)
    except Exception as e:
        if type(e).__name__ != "AirflowNotFoundException":
            raise
        ctx.connection_missing = True
        return fail(
            f"connection {base.conn_id!r} (from the base path) not found here; workers resolve it the same way "
            f"(note: {env_var} may be set only on the workers)",
            f"set {env_var} (or add the connection to the metadata DB or a secrets backend) where statectl runs",
        )
    for secret in (conn.password, *_extra_secrets(conn)):
        if secret:
            ctx.secrets.add(str(secret))
    try:
        schemes.require_connection_type(base.protocol, base.conn_id, conn.conn_type)
    except ConfigError as e:
        ctx.connection_missing = True  # another store's credentials: nothing to probe with
        return fail(e.message, f"point the base path at a connection of the right type, or fix {env_var}")
    return ok(f"connection {base.conn_id!r} found (type {conn.conn_type})")


def _extra_secrets(conn: Any) -> list[str]:
    try:
        extra = conn.extra_dejson
    except Exception:
        return []
    found = [
        str(v) for k, v in extra.items() if re.search(r"secret|password|token|key|connection_string|sas", k, re.I) and v
    ]
    # An Azure connection string carries the account key (and maybe a SAS token) inside it.
    for value in found[:]:
        found.extend(re.findall(r"(?:AccountKey|SharedAccessSignature)=([^;]+)", value))
    return found


@check("bucket", "make the base path reachable and writable for statectl and the workers")
def check_bucket(ctx: Context) -> Verdict | None:
    base = ctx.base
    if base is None:
        return ok("no bucket configured")
    if ctx.provider_missing:
        return warn(f"{base} not probed: its provider is not installed", "see provider")
    if ctx.connection_missing:
        # Without it the filesystem falls back to default credentials and endpoint: another store.
        return warn(f"{base} not probed: its connection was not found", "see connection")
    buckets = ctx.store.buckets
    try:
        compression = ctx.config.compression
        suffix = layout.compression_suffix(compression)
    except ConfigError:
        compression, suffix = None, ""  # reported by the compression check; probe the store itself
    probe = layout.reserved_url(base, f"doctor-{uuid4().hex}{suffix}")
    text = '{"statectl": "doctor probe"}'
    failure: str | None = None
    try:
        buckets.write_text(probe, text, compression)  # reads it back and compares
        if buckets.read_text(probe) != text:
            failure = f"probe object {probe} read back different bytes"
    except StatectlError as e:
        failure = e.message
    # Whatever happened above, the probe must not stay behind (a missing object counts as deleted).
    try:
        errors = [error.message for error in buckets.delete_many([probe]) if error is not None]
    except StatectlError as e:
        errors = [e.message]
    if failure is not None:
        leftover = f"; could not delete {probe}: {errors[0]}" if errors else ""
        return fail(
            f"write/read probe under {base} failed: {failure}{leftover}",
            "check the endpoint, the bucket name and the credentials/permissions for the base path (write, read, "
            "delete)",
        )
    if errors:
        return fail(
            f"wrote and read {probe}, but could not delete it: {errors[0]}",
            f"grant delete permission under {base} and remove {probe} by hand",
        )
    ctx.bucket_ok = True
    return ok(f"wrote, read back ({compression or 'uncompressed'}) and deleted a probe under {base}")


@check("create_if_absent", "use a store that honours conditional writes (If-None-Match) for prune's lock")
def check_create_if_absent(ctx: Context) -> Verdict | None:
    base = ctx.base
    if base is None or not ctx.bucket_ok:
        return None
    if ctx.store.buckets.honours_if_absent(base):
        return ok(f"{base.protocol}:// honours atomic create-if-absent writes")
    return warn(
        f"{base.protocol}:// does not honour atomic create-if-absent writes: statectl checks before writing "
        "(not atomic), so two statectl runs at once could both take prune's lock",
        "run one `statectl prune` at a time against this bucket",
    )


# --------------------------------------------------------------------------- running


def _run_check(ctx: Context, name: str, fix: str, function: CheckFunction) -> list[Finding]:
    try:
        verdict = function(ctx)
        verdicts = [] if verdict is None else [verdict]
    except StatectlError as e:
        verdicts = [fail(e.message, fix)]
    except Exception as e:  # an unexpected error in one check must not hide the others
        verdicts = [fail(f"{type(e).__name__}: {e}", fix)]
    return [v.named(name, ctx.scrub) for v in verdicts]


def run_doctor(make_config: Callable[[], Config], concurrency: int = DEFAULT_CONCURRENCY) -> DoctorReport:
    """Run every check; a configuration that cannot even be read is the one fatal finding.

    Unlike other operations doctor builds its own store: reading the configuration is one of its
    checks, so ``make_config`` is called here and a failure is reported, not raised."""
    try:
        config = make_config()
    except StatectlError as e:
        fix = "fix the Airflow configuration (airflow.cfg, AIRFLOW__* variables, *_cmd / *_secret sources)"
        return DoctorReport([fail(e.message, fix).named("config")], versions=installed_versions())
    ctx = Context(config, concurrency)
    settings = [{"setting": s.option.name, "value": s.display_value, "source": s.source} for s in config.describe()]
    where = "" if config.config_file.is_file() else " (absent)"
    findings = [ok(f"AIRFLOW__* variables, {config.config_file}{where}, Airflow's defaults").named("config")]
    try:
        for name, fix, function in CHECKS:
            findings.extend(_run_check(ctx, name, fix, function))
    finally:
        ctx.store.close()
    settings = [{k: ctx.scrub(v) for k, v in setting.items()} for setting in settings]
    return DoctorReport(findings, settings, installed_versions())
