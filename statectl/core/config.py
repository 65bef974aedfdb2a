"""Resolve the settings statectl shares with Airflow, with the source of each value.

Airflow's own lookup order is followed (``AirflowConfigParser._lookup_sequence``):
environment variable, its ``_CMD`` / ``_SECRET`` forms (sensitive keys only), airflow.cfg,
its ``_cmd`` / ``_secret`` forms (sensitive keys only), then Airflow's default. Importing
Airflow costs seconds, so this module reads the same sources itself and asks Airflow only
for what it cannot resolve alone (a value held by a secrets backend).
"""

from __future__ import annotations

import configparser
import os
import re
import shlex
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from statectl.errors import ConfigError, UsageError

# Parallel object requests in flight, unless --concurrency says otherwise.
DEFAULT_CONCURRENCY = 16
MAX_CONCURRENCY = 256

OBJECT_STORAGE_BACKEND = "airflow.providers.common.io.state_store.backend.StateStoreObjectStorageBackend"


@dataclass(frozen=True)
class Option:
    section: str
    key: str
    default: str
    sensitive: bool = False
    deprecated: tuple[str, str] | None = None  # (section, key) Airflow still reads

    @property
    def env_var(self) -> str:
        return f"AIRFLOW__{self.section.upper().replace('.', '_')}__{self.key.upper()}"

    @property
    def name(self) -> str:
        return f"[{self.section}] {self.key}"


SQL_ALCHEMY_CONN = Option(
    "database",
    "sql_alchemy_conn",
    "sqlite:///{AIRFLOW_HOME}/airflow.db",
    sensitive=True,
    deprecated=("core", "sql_alchemy_conn"),
)
WORKER_BACKEND = Option("workers", "state_store_backend", "")
BASE_PATH = Option("common.io", "state_store_objectstorage_path", "")
THRESHOLD = Option("common.io", "state_store_objectstorage_threshold", "0")
COMPRESSION = Option("common.io", "state_store_objectstorage_compression", "")
RETENTION_DAYS = Option("state_store", "default_retention_days", "30")
MAX_VALUE_BYTES = Option("state_store", "max_value_storage_bytes", "65535")
SERVER_BACKEND = Option("state_store", "backend", "airflow.state.metastore.MetastoreBackend")

OPTIONS = (
    SQL_ALCHEMY_CONN,
    WORKER_BACKEND,
    BASE_PATH,
    THRESHOLD,
    COMPRESSION,
    RETENTION_DAYS,
    MAX_VALUE_BYTES,
    SERVER_BACKEND,
)


@dataclass(frozen=True)
class Setting:
    option: Option
    value: str
    source: str

    @property
    def display_value(self) -> str:
        return mask_url(self.value) if self.option.sensitive else self.value


@dataclass(frozen=True)
class Overrides:
    """Command-line values; ``None`` means "not given"."""

    sql_alchemy_conn: str | None = None
    path: str | None = None
    compression: str | None = None
    threshold: int | None = None
    backend: str | None = None  # "metastore" | "objectstorage"


BACKEND_CHOICES = ("metastore", "objectstorage")


def check_backend_choice(backend: str) -> str:
    if backend not in BACKEND_CHOICES:
        raise UsageError(f"--backend must be metastore or objectstorage, not {backend!r}")
    return backend


def check_concurrency(concurrency: int) -> int:
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise UsageError(f"--concurrency must be between 1 and {MAX_CONCURRENCY}")
    return concurrency


_ENV_VAR = re.compile(r"\$(\w+|\{[^}]*\})", re.ASCII)  # what posixpath.expandvars matches


def _expandvars(value: str, environ: Mapping[str, str]) -> str:
    """os.path.expandvars over ``environ`` (not necessarily os.environ); unknown names stay."""

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        name = name[1:-1] if name.startswith("{") else name
        return environ.get(name, match.group(0))

    return _ENV_VAR.sub(substitute, value) if "$" in value else value


def expand_env_var(value: str, environ: Mapping[str, str] | None = None) -> str:
    """Airflow's expand_env_var: expandvars and expanduser until nothing changes."""
    environ = os.environ if environ is None else environ
    while True:
        expanded = os.path.expanduser(_expandvars(value, environ))
        if expanded == value:
            return expanded
        value = expanded


def airflow_home(environ: os._Environ[str] | dict[str, str]) -> Path:
    return Path(expand_env_var(environ.get("AIRFLOW_HOME", "~/airflow"), environ))


def airflow_config_file(environ: os._Environ[str] | dict[str, str]) -> Path:
    if "AIRFLOW_CONFIG" in environ:
        return Path(expand_env_var(environ["AIRFLOW_CONFIG"], environ))
    return airflow_home(environ) / "airflow.cfg"


def _run_command(command: str, what: str) -> str:
    try:
        done = subprocess.run(shlex.split(command), capture_output=True, check=False, text=True)
    except OSError as e:
        raise ConfigError(f"cannot run the command for {what}: {e.strerror}") from None
    if done.returncode != 0:
        # The command's output may be the secret itself: never echo it.
        raise ConfigError(f"the command for {what} failed with exit code {done.returncode}")
    return done.stdout


def _from_airflow(option: Option) -> str:
    """Ask Airflow itself (secrets backends): slow, so only when a _secret form is set."""
    try:
        from airflow.configuration import conf
    except ImportError as e:
        raise ConfigError(f"{option.name} comes from a secrets backend but Airflow is not importable: {e}") from None
    try:
        return conf.get(option.section, option.key)
    except Exception as e:
        raise ConfigError(
            f"{option.name}: Airflow could not read it from the secrets backend: {type(e).__name__}"
        ) from None


class Config:
    """The effective settings, read once from the environment, airflow.cfg and overrides."""

    def __init__(self, overrides: Overrides | None = None, environ: dict[str, str] | None = None) -> None:
        self.environ = dict(os.environ if environ is None else environ)
        self.overrides = overrides or Overrides()
        self.config_file = airflow_config_file(self.environ)
        self._parser = configparser.ConfigParser(strict=False)
        if self.config_file.is_file():
            try:
                self._parser.read(self.config_file, encoding="utf-8")
            except configparser.Error as e:
                raise ConfigError(f"cannot parse {self.config_file}: {e.message}") from None
        self.settings: dict[Option, Setting] = {}
        for option in OPTIONS:
            self.settings[option] = self._resolve(option)
        self._apply_overrides()

    # -- resolution -----------------------------------------------------------------
    def _candidates(self, option: Option) -> list[Option]:
        names = [option]
        if option.deprecated:
            names.append(Option(*option.deprecated, option.default, option.sensitive))
        return names

    def _resolve(self, option: Option) -> Setting:
        candidates = self._candidates(option)
        for o in candidates:
            if o.env_var in self.environ:
                return Setting(option, expand_env_var(self.environ[o.env_var], self.environ), f"env {o.env_var}")
            if option.sensitive and f"{o.env_var}_CMD" in self.environ:
                value = _run_command(self.environ[f"{o.env_var}_CMD"], f"{o.env_var}_CMD")
                return Setting(option, value, f"env {o.env_var}_CMD")
            if option.sensitive and f"{o.env_var}_SECRET" in self.environ:
                return Setting(option, _from_airflow(option), f"secrets backend (env {o.env_var}_SECRET)")
        where = str(self.config_file)
        for o in candidates:
            if self._parser.has_option(o.section, o.key):
                try:
                    raw = self._parser.get(o.section, o.key)
                except configparser.Error as e:
                    raise ConfigError(f"{where}: {o.name}: {e.message}") from None
                return Setting(option, expand_env_var(raw, self.environ), f"{where} [{o.section}]")
        if option.sensitive:
            for o in candidates:
                if self._parser.has_option(o.section, f"{o.key}_cmd"):
                    command = self._parser.get(o.section, f"{o.key}_cmd")
                    value = _run_command(command, f"[{o.section}] {o.key}_cmd")
                    return Setting(option, value, f"{where} [{o.section}] {o.key}_cmd")
            for o in candidates:
                if self._parser.has_option(o.section, f"{o.key}_secret"):
                    return Setting(option, _from_airflow(option), f"secrets backend ({where})")
        home = str(airflow_home(self.environ))
        return Setting(option, expand_env_var(option.default.replace("{AIRFLOW_HOME}", home), self.environ), "default")

    def _apply_overrides(self) -> None:
        o = self.overrides
        given = {
            SQL_ALCHEMY_CONN: o.sql_alchemy_conn,
            BASE_PATH: o.path,
            COMPRESSION: o.compression,
            THRESHOLD: None if o.threshold is None else str(o.threshold),
        }
        if o.backend is not None:
            check_backend_choice(o.backend)
            given[WORKER_BACKEND] = OBJECT_STORAGE_BACKEND if o.backend == "objectstorage" else ""
        for option, value in given.items():
            if value is not None:
                self.settings[option] = Setting(option, value, "command line")

    # -- typed accessors ------------------------------------------------------------
    def value(self, option: Option) -> str:
        return self.settings[option].value

    def _int(self, option: Option, minimum: int | None = None) -> int:
        setting = self.settings[option]
        try:
            number = int(setting.value.strip())
        except ValueError:
            raise ConfigError(f"{option.name} must be an integer, got {setting.value!r} ({setting.source})") from None
        if minimum is not None and number < minimum:
            raise ConfigError(f"{option.name} must be >= {minimum}, got {number} ({setting.source})")
        return number

    @property
    def sql_alchemy_conn(self) -> str:
        return self.value(SQL_ALCHEMY_CONN).strip()

    @property
    def worker_backend(self) -> str:
        return self.value(WORKER_BACKEND).strip()

    @property
    def offloads(self) -> bool:
        """True when workers write through the object storage backend."""
        backend = self.worker_backend
        if backend and backend != OBJECT_STORAGE_BACKEND:
            raise ConfigError(
                f"[workers] state_store_backend is {backend!r}; statectl writes only for the object "
                "storage backend or none (use --backend metastore|objectstorage)"
            )
        return bool(backend)

    @property
    def base_path(self) -> str | None:
        return self.value(BASE_PATH).strip() or None

    @property
    def threshold(self) -> int:
        return self._int(THRESHOLD, minimum=0)

    @property
    def compression(self) -> str | None:
        return self.value(COMPRESSION).strip() or None

    @property
    def retention_days(self) -> int:
        return self._int(RETENTION_DAYS, minimum=0)

    @property
    def max_value_bytes(self) -> int:
        return self._int(MAX_VALUE_BYTES)

    def describe(self) -> list[Setting]:
        return [self.settings[o] for o in OPTIONS]


_PASSWORD_QUERY = re.compile(r"(?i)((?:password|passwd|pwd|secret|token)=)[^&]*")


def mask_url(url: str) -> str:
    """Hide the password of a database URL (and password-like query parameters)."""
    scheme, sep, rest = url.partition("://")
    if sep:
        netloc, slash, tail = rest.partition("/")
        userinfo, at, host = netloc.rpartition("@")
        if at and ":" in userinfo:
            netloc = f"{userinfo.split(':', 1)[0]}:***@{host}"
        url = f"{scheme}://{netloc}{slash}{tail}"
    return _PASSWORD_QUERY.sub(r"\1***", url)


def url_password(url: str) -> str | None:
    try:
        password = urlsplit(url).password
    except ValueError:
        return None
    return unquote(password) if password else None


__all__ = [
    "OPTIONS",
    "Config",
    "Option",
    "Overrides",
    "Setting",
    "mask_url",
    "url_password",
]
