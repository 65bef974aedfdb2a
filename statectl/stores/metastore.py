"""Access to Airflow's metadata database: the state store tables, dag runs and assets.

Plain DB-API (sqlite3, psycopg2) rather than SQLAlchemy: importing SQLAlchemy and
Airflow's models costs seconds, and these few statements mirror what Airflow's
``MetastoreBackend`` executes. Every write that may race a worker is conditional on the
value that was read.
"""

from __future__ import annotations

import heapq
import itertools
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from statectl.core.config import mask_url
from statectl.core.filters import RowFilter, utcnow
from statectl.core.layout import TaskAddress
from statectl.core.scopes import AssetScope, Scope, TaskScope
from statectl.core.shards import Shard
from statectl.core.snapshot import AssetWriter
from statectl.errors import ConfigError, NotFoundError, StatectlError, UnreachableError

SQLITE_TIMESTAMP = "%Y-%m-%d %H:%M:%S.%f"  # SQLAlchemy's storage format for DateTime on SQLite
STREAM_BATCH = 2000
_CURSOR_SERIAL = itertools.count()  # names of server-side cursors open at the same time
_BATCH_ROWS = 1000  # rows per batched PostgreSQL write statement

_TASK_COLUMNS = 'id, dag_id, run_id, task_id, map_index, "key", value, updated_at, expires_at'
_TASK_COLUMNS_OF_T = ", ".join(f"t.{column.strip()}" for column in _TASK_COLUMNS.split(","))  # table alias t
_ASSET_COLUMNS = (
    'a.id, a.name, a.uri, s."key", s.value, s.updated_at, s.last_updated_by_kind, s.last_updated_by_dag_id, '
    "s.last_updated_by_run_id, s.last_updated_by_task_id, s.last_updated_by_map_index"
)
_ASSET_FROM = "asset_state_store s JOIN asset a ON a.id = s.asset_id"  # rows with their asset's name and uri


@dataclass(frozen=True)
class StateRow:
    """One row of task_state_store or asset_state_store."""

    scope: Scope
    key: str
    value: str
    updated_at: datetime | None
    expires_at: datetime | None = None
    row_id: int | None = None  # task_state_store.id; asset rows are keyed by (asset_id, key)
    writer: AssetWriter | None = None  # asset rows: last_updated_by_*

    @property
    def kind(self) -> str:
        return self.scope.kind

    @property
    def label(self) -> str:
        """How reports name the row: its scope and key."""
        return f"{self.scope} key {self.key!r}"


@dataclass(frozen=True)
class _RowKey:
    """Where a StateRow is stored: its table and the condition (with parameters) that picks it out.

    The conditional writes add ``AND value = ?`` so that a row a worker rewrote meanwhile is left alone.
    """

    table: str
    where: str
    params: tuple[Any, ...]
    expires: bool  # only task rows have expires_at

    @classmethod
    def of(cls, row: StateRow) -> _RowKey:
        if isinstance(row.scope, TaskScope):
            return cls("task_state_store", "id = ?", (row.row_id,), expires=True)
        return cls("asset_state_store", 'asset_id = ? AND "key" = ?', (row.scope.asset_id, row.key), expires=False)


@dataclass(frozen=True)
class NewValue:
    """A row to write: its scope (an asset resolved to its asset_id), key and column text."""

    scope: Scope
    key: str
    value: str
    expires_at: datetime | None = None
    dag_run_id: int | None = None  # task rows: the dag run's id
    writer: AssetWriter | None = None  # asset rows: last_updated_by_* (None: written through the API)


def address(scope: Scope, key: str) -> tuple[Any, ...]:
    """What identifies a row across reads: the task scope and key, or the asset's id and key."""
    if isinstance(scope, TaskScope):
        return ("task", scope.dag_id, scope.run_id, scope.task_id, scope.map_index, key)
    return ("asset", scope.asset_id, key)


_WRITER_COLUMNS = (
    "last_updated_by_kind, last_updated_by_dag_id, last_updated_by_run_id, last_updated_by_task_id, "
    "last_updated_by_map_index"
)
_API_WRITER = AssetWriter("api")  # what the API server records for a write that no task made


def _task_insert_params(value: NewValue, now: Any, expires_at: Any) -> tuple[Any, ...]:
    scope = value.scope
    assert isinstance(scope, TaskScope)
    return (
        value.dag_run_id,
        scope.task_id,
        scope.map_index,
        value.key,
        scope.dag_id,
        scope.run_id,
        value.value,
        now,
        expires_at,
    )


def _asset_params(value: NewValue, now: Any) -> tuple[Any, ...]:
    """asset_id, key, value, updated_at and the writer columns."""
    writer = value.writer or _API_WRITER
    assert isinstance(value.scope, AssetScope)
    return (
        value.scope.asset_id,
        value.key,
        value.value,
        now,
        writer.kind,
        writer.dag_id,
        writer.run_id,
        writer.task_id,
        writer.map_index,
    )


def _pages(params: Sequence[tuple[Any, ...]]) -> Iterator[list[tuple[Any, ...]]]:
    """Statements of at most _BATCH_ROWS rows or ~8 MB of text each."""
    page: list[tuple[Any, ...]] = []
    size = 0
    for row in params:
        page.append(row)
        size += sum(len(p) for p in row if isinstance(p, str))
        if size > 8_000_000 or len(page) >= _BATCH_ROWS:
            yield page
            page, size = [], 0
    if page:
        yield page


def _values_cte(width: int, count: int) -> str:
    """``WITH p(k0, k1, ...) AS (VALUES ...)``: ``count`` rows of ``width`` bound values. Joined on indexed
    columns it makes one index probe per row on both databases; a row-value ``IN (VALUES ...)`` would make
    SQLite scan the whole table (or index) once per statement."""
    names = ", ".join(f"k{i}" for i in range(width))
    row = "(" + ", ".join("?" for _ in range(width)) + ")"
    return f"WITH p({names}) AS (VALUES {', '.join(row for _ in range(count))})"


def _joined_on(alias: str, columns: Sequence[str]) -> str:
    """The join condition of ``alias``'s columns with the rows of :func:`_values_cte`, in order."""
    return " AND ".join(f"{alias}.{column} = p.k{i}" for i, column in enumerate(columns))


def _parse_sqlite_url(url: str) -> str:
    rest = url.split("://", 1)[1]
    if not rest.startswith("/") or rest in ("/", "/:memory:"):
        raise ConfigError("an in-memory SQLite metastore cannot be administered from another process")
    path = rest[1:].split("?", 1)[0]
    return unquote(path)


def _from_db_ts(value: Any) -> datetime | None:
    """A timestamp column as an aware datetime (SQLite returns naive UTC text, psycopg2 datetimes)."""
    if value is None:
        return None
    parsed: datetime = datetime.fromisoformat(value) if isinstance(value, str) else value
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


# SQLAlchemy's text for a DateTime on SQLite (SQLITE_TIMESTAMP), the shape iso_timestamp turns around as text.
_SQLITE_TS_TEXT = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}", re.ASCII)


def iso_timestamp(value: Any) -> str | None:
    """``iso(_from_db_ts(value))`` (ISO 8601, UTC offset, no fraction when it is zero), made from SQLite's text
    without a datetime: half the time of a million-row listing went into parsing and formatting."""
    if value.__class__ is str and _SQLITE_TS_TEXT.fullmatch(value):
        time = value[11:19] if value.endswith(".000000") else value[11:]
        return f"{value[:10]}T{time}+00:00"
    parsed = _from_db_ts(value)
    return None if parsed is None else parsed.isoformat()


# -- dialects ---------------------------------------------------------------------------
class Dialect:
    """What differs between the databases; Metastore asks its dialect instead of testing the name.

    The defaults are those of a DB-API database that needs nothing special.
    """

    name: ClassVar[str]
    # Appended to ORDER BY so that text sorts in byte order, the order object listings come in.
    byte_order: ClassVar[str] = ""
    # Many-row conditional writes go as psycopg2 ``execute_values`` statements: far fewer round trips.
    batched_writes: ClassVar[bool] = False
    # A stream's cursor held a read transaction open that must be ended once the rows run out.
    stream_holds_transaction: ClassVar[bool] = False

    def connect(self, url: str, display_url: str) -> Any:
        raise NotImplementedError

    def sql(self, sql: str) -> str:
        """A statement written with ``?`` placeholders in the driver's parameter style."""
        return sql

    def ts(self, value: datetime | None) -> Any:
        """A timestamp as it is bound to a statement."""
        return value

    def stream_cursor(self, conn: Any, batch_size: int) -> Any:
        """A cursor for a result too large to hold in memory."""
        return conn.cursor()

    def in_list(self, column: str) -> str:
        """``column`` is one of a list bound as the single parameter :meth:`list_param` makes."""
        return f"{column} IN (SELECT value FROM json_each(?))"

    def list_param(self, values: Sequence[str]) -> Any:
        return json.dumps(list(values))


class SQLiteDialect(Dialect):
    # The defaults fit: BINARY, the default collation, compares bytes; sqlite3 steps through a
    # result lazily on a plain cursor; and its reads open no transaction that must be ended.
    name = "sqlite"

    def connect(self, url: str, display_url: str) -> Any:
        import sqlite3

        path = _parse_sqlite_url(url)
        try:
            # mode=rw: never create an empty database where the metastore should be.
            return sqlite3.connect(f"file:{quote(path)}?mode=rw", uri=True, timeout=30)
        except sqlite3.Error as e:
            raise UnreachableError(f"cannot open the SQLite metastore {path}: {e}") from None

    def ts(self, value: datetime | None) -> Any:
        # Timestamps are naive UTC text on SQLite: bind the same text so that comparisons hold.
        return None if value is None else value.astimezone(UTC).strftime(SQLITE_TIMESTAMP)


class PostgresDialect(Dialect):
    name = "postgresql"
    byte_order = ' COLLATE "C"'  # the database's collation may sort by locale
    batched_writes = True
    stream_holds_transaction = True

    def connect(self, url: str, display_url: str) -> Any:
        import psycopg2

        parts = urlsplit(url)
        kwargs: dict[str, Any] = dict(parse_qsl(parts.query))
        if parts.hostname:
            kwargs.setdefault("host", unquote(parts.hostname))
        if parts.port:
            kwargs["port"] = parts.port
        if parts.username:
            kwargs["user"] = unquote(parts.username)
        if parts.password:
            kwargs["password"] = unquote(parts.password)
        kwargs["dbname"] = unquote(parts.path.lstrip("/")) or None
        kwargs.setdefault("connect_timeout", 10)
        try:
            return psycopg2.connect(**{k: v for k, v in kwargs.items() if v is not None})
        except psycopg2.Error as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UnreachableError(f"cannot connect to the metastore {display_url}: {reason}") from None

    def sql(self, sql: str) -> str:
        # psycopg2's pyformat: %s placeholders, so a literal % must be doubled.
        return sql.replace("%", "%%").replace("?", "%s")

    def in_list(self, column: str) -> str:
        return f"{column} = ANY(?)"

    def list_param(self, values: Sequence[str]) -> Any:
        return list(values)  # psycopg2 binds a list as an ARRAY

    def stream_cursor(self, conn: Any, batch_size: int) -> Any:
        # A named (server-side) cursor: a plain psycopg2 cursor fetches the whole result at once.
        cur = conn.cursor(name=f"statectl_stream_{next(_CURSOR_SERIAL)}")
        cur.itersize = batch_size
        return cur


def _dialect_for(url: str, display_url: str) -> Dialect:
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    name = scheme.split("+", 1)[0]  # the driver (postgresql+psycopg2) does not matter here
    if name == "sqlite":
        return SQLiteDialect()
    if name in ("postgresql", "postgres"):
        return PostgresDialect()
    if name in ("mysql", "mariadb"):
        raise ConfigError("MySQL metastores are not supported yet; statectl supports SQLite and PostgreSQL")
    raise ConfigError(f"[database] sql_alchemy_conn has an unknown scheme: {display_url!r}")


# -- the metastore ----------------------------------------------------------------------
class Metastore:
    """A connection to the metadata DB, opened on first use."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.display_url = mask_url(url)
        self.sql_dialect = _dialect_for(url, self.display_url)
        self.dialect: str = self.sql_dialect.name  # "sqlite" or "postgresql", for callers that compare names
        self._conn: Any = None
        self._shard_dags: dict[Shard, list[str]] = {}

    # -- connection -----------------------------------------------------------------
    @property
    def conn(self) -> Any:
        if self._conn is None:
            self._conn = self.sql_dialect.connect(self.url, self.display_url)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn driver errors into one-line statectl errors."""
        try:
            yield
        except StatectlError:
            raise
        except Exception as e:
            module = type(e).__module__
            if not (module.startswith("sqlite3") or module.startswith("psycopg2")):
                raise
            self._rollback()
            message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if re.search(
                r"(no such table|does not exist).*(state_store|dag_run|asset|task_instance)", message
            ) or re.search(r"relation \"(task_state_store|asset_state_store)\"", message):
                raise ConfigError(
                    f"the metastore {self.display_url} has no state store tables: it predates "
                    "Airflow 3.3 or needs `airflow db migrate`"
                ) from None
            if "database is locked" in message or "could not connect" in message or "terminating connection" in message:
                raise UnreachableError(f"metastore {self.display_url}: {message}") from None
            raise UnreachableError(f"metastore error: {message}") from None

    def _rollback(self) -> None:
        if self._conn is not None:
            try:
                self._conn.rollback()
            except Exception:  # the connection may already be gone
                self._conn = None

    @contextmanager
    def _cursor(self, sql: str, params: Sequence[Any]) -> Iterator[Any]:
        """A cursor that has executed one statement; closed afterwards."""
        with self._errors():
            cur = self.conn.cursor()
            try:
                cur.execute(self.sql_dialect.sql(sql), tuple(params))
                yield cur
            finally:
                cur.close()

    def _fetchone(self, sql: str, params: Sequence[Any]) -> Any:
        with self._cursor(sql, params) as cur:
            return cur.fetchone()

    def _fetchall(self, sql: str, params: Sequence[Any]) -> list[Sequence[Any]]:
        with self._cursor(sql, params) as cur:
            return list(cur.fetchall())

    def _execute(self, sql: str, params: Sequence[Any]) -> int:
        """Run a write; how many rows it changed."""
        with self._cursor(sql, params) as cur:
            return int(cur.rowcount)

    def _stream(
        self, sql: str, params: Sequence[Any], batch_size: int, *, end_transaction: bool
    ) -> Iterator[Sequence[Any]]:
        """The rows of a query, fetched ``batch_size`` at a time so that memory stays flat.

        ``end_transaction``: once the rows run out, end the read transaction the stream held
        (PostgreSQL). The value scans pass False: several of their streams share the connection at
        once, and ending the transaction would close the others' cursors; their caller ends it.
        """
        for batch in self._stream_batches(sql, params, batch_size, end_transaction=end_transaction):
            yield from batch

    def _stream_batches(
        self, sql: str, params: Sequence[Any], batch_size: int, *, end_transaction: bool
    ) -> Iterator[list[Sequence[Any]]]:
        """:meth:`_stream`, a fetched batch at a time."""
        with self._errors():
            conn = self.conn
            cur = self.sql_dialect.stream_cursor(conn, batch_size)
            try:
                cur.execute(self.sql_dialect.sql(sql), tuple(params))
                while batch := cur.fetchmany(batch_size):
                    yield batch
            finally:
                if self._conn is conn:  # otherwise close() has closed it along with its connection
                    cur.close()
        if end_transaction and self.sql_dialect.stream_holds_transaction:
            self._rollback()

    def commit(self) -> None:
        with self._errors():
            self.conn.commit()

    def check_schema(self) -> None:
        """Fail with a clear message when the state store tables are missing."""
        self._fetchone("SELECT COUNT(*) FROM task_state_store WHERE 1 = 0", ())
        self._fetchone("SELECT COUNT(*) FROM asset_state_store WHERE 1 = 0", ())

    # -- scopes ---------------------------------------------------------------------
    def dag_run_id(self, scope: TaskScope) -> int:
        row = self._fetchone("SELECT id FROM dag_run WHERE dag_id = ? AND run_id = ?", (scope.dag_id, scope.run_id))
        if row is None:
            raise NotFoundError(f"no dag run {scope.run_id!r} of dag {scope.dag_id!r}")
        return int(row[0])

    def require_task_instance(self, scope: TaskScope) -> int:
        """The dag_run.id for a task instance that exists (as the server requires for writes)."""
        dag_run_id = self.dag_run_id(scope)
        row = self._fetchone(
            "SELECT 1 FROM task_instance WHERE dag_id = ? AND run_id = ? AND task_id = ? AND map_index = ?",
            (scope.dag_id, scope.run_id, scope.task_id, scope.map_index),
        )
        if row is None:
            where = f"task {scope.task_id!r}" + ("" if scope.map_index == -1 else f" map index {scope.map_index}")
            raise NotFoundError(f"no task instance {where} in dag run {scope.run_id!r} of dag {scope.dag_id!r}")
        return dag_run_id

    def resolve_asset(self, scope: AssetScope) -> AssetScope:
        """Find the active asset as the API server does (by name, or by uri)."""
        if scope.asset_id is not None:
            return scope
        column, value = ("name", scope.name) if scope.name else ("uri", scope.uri)
        row = self._fetchone(
            f"SELECT a.id, a.name, a.uri FROM asset a JOIN asset_active aa "
            f"ON aa.name = a.name AND aa.uri = a.uri WHERE a.{column} = ?",
            (value,),
        )
        if row is None:
            raise NotFoundError(f"no active asset with {column} {value!r}")
        # Keep the addressing the user chose: the provider names the folder after it.
        return AssetScope(name=scope.name, uri=scope.uri, asset_id=int(row[0]))

    def asset_identity(self, asset_id: int) -> tuple[str | None, str | None]:
        """(name, uri) of an asset row."""
        row = self._fetchone("SELECT name, uri FROM asset WHERE id = ?", (asset_id,))
        return (None, None) if row is None else (row[0], row[1])

    def asset_names_for_uri(self, uri: str) -> list[str]:
        """Names of the assets with this uri (the provider names an asset's folder by its name)."""
        return [r[0] for r in self._fetchall("SELECT name FROM asset WHERE uri = ?", (uri,)) if r[0]]

    # -- building rows ----------------------------------------------------------------
    @staticmethod
    def _task_row(r: Sequence[Any], previous: StateRow | None = None) -> StateRow:
        """A task_state_store row (``_TASK_COLUMNS``), sharing ``previous``'s scope when it is the same."""
        scope = previous.scope if previous is not None else None
        if not (
            isinstance(scope, TaskScope)
            and scope.map_index == r[4]
            and scope.task_id == r[3]
            and scope.run_id == r[2]
            and scope.dag_id == r[1]
        ):
            scope = TaskScope(r[1], r[2], r[3], int(r[4]))
        return StateRow(
            scope=scope,
            key=r[5],
            value=r[6],
            updated_at=_from_db_ts(r[7]),
            expires_at=_from_db_ts(r[8]),
            row_id=int(r[0]),
        )

    def _task_rows(self, records: Iterable[Sequence[Any]]) -> Iterator[StateRow]:
        # Rows mostly arrive grouped by scope: build each scope once.
        row = None
        for r in records:
            row = self._task_row(r, row)
            yield row

    @staticmethod
    def _asset_row(r: Sequence[Any], scope: AssetScope | None = None) -> StateRow:
        """An asset_state_store row (``_ASSET_COLUMNS``), in ``scope`` if given."""
        row_scope = scope or AssetScope(name=r[1] or None, uri=r[2] or None, asset_id=int(r[0]))
        writer = None
        if len(r) > 6 and any(v is not None for v in r[6:11]):
            writer = AssetWriter(r[6], r[7], r[8], r[9], None if r[10] is None else int(r[10]))
        return StateRow(row_scope, r[3], r[4], _from_db_ts(r[5]), writer=writer)

    # -- single rows ------------------------------------------------------------------
    def get_row(self, scope: Scope, key: str) -> StateRow | None:
        if isinstance(scope, TaskScope):
            r = self._fetchone(
                f"SELECT {_TASK_COLUMNS} FROM task_state_store WHERE dag_id = ? AND run_id = ? "
                'AND task_id = ? AND map_index = ? AND "key" = ?',
                (scope.dag_id, scope.run_id, scope.task_id, scope.map_index, key),
            )
            return None if r is None else self._task_row(r)
        assert scope.asset_id is not None
        r = self._fetchone(
            'SELECT value, updated_at FROM asset_state_store WHERE asset_id = ? AND "key" = ?', (scope.asset_id, key)
        )
        return None if r is None else StateRow(scope, key, r[0], _from_db_ts(r[1]))

    def upsert(
        self, scope: Scope, key: str, value: str, *, expires_at: datetime | None, dag_run_id: int | None = None
    ) -> None:
        """Insert or replace one value exactly as Airflow's MetastoreBackend does; commits."""
        now = self.sql_dialect.ts(utcnow())
        if isinstance(scope, TaskScope):
            assert dag_run_id is not None
            self._execute(
                'INSERT INTO task_state_store (dag_run_id, task_id, map_index, "key", dag_id, run_id, value, '
                "updated_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                'ON CONFLICT (dag_run_id, task_id, map_index, "key") DO UPDATE SET value = excluded.value, '
                "updated_at = excluded.updated_at, expires_at = excluded.expires_at",
                (
                    dag_run_id,
                    scope.task_id,
                    scope.map_index,
                    key,
                    scope.dag_id,
                    scope.run_id,
                    value,
                    now,
                    self.sql_dialect.ts(expires_at),
                ),
            )
        else:
            # Writes through the public API record the writer kind 'api' with no task fields.
            self._execute(
                'INSERT INTO asset_state_store (asset_id, "key", value, updated_at, last_updated_by_kind, '
                "last_updated_by_dag_id, last_updated_by_run_id, last_updated_by_task_id, "
                "last_updated_by_map_index) VALUES (?, ?, ?, ?, 'api', NULL, NULL, NULL, NULL) "
                'ON CONFLICT (asset_id, "key") DO UPDATE SET value = excluded.value, '
                "updated_at = excluded.updated_at, last_updated_by_kind = 'api', "
                "last_updated_by_dag_id = NULL, last_updated_by_run_id = NULL, "
                "last_updated_by_task_id = NULL, last_updated_by_map_index = NULL",
                (scope.asset_id, key, value, now),
            )
        self.commit()

    def update_if_unchanged(self, row: StateRow, new_value: str) -> bool:
        """Replace a row's value only if it is still the one read (a worker may have written)."""
        target = _RowKey.of(row)
        count = self._execute(
            f"UPDATE {target.table} SET value = ?, updated_at = ? WHERE {target.where} AND value = ?",
            (new_value, self.sql_dialect.ts(utcnow()), *target.params, row.value),
        )
        return count == 1

    def update_many_if_unchanged(self, changes: Sequence[tuple[StateRow, str]]) -> list[bool]:
        """update_if_unchanged for many rows (no commit); per row, whether it was updated.

        On PostgreSQL the task rows go in a few statements, each
        ``UPDATE ... FROM (VALUES ...) WHERE t.id = v.id AND t.value = v.old RETURNING t.id``:
        the same condition as one statement per row, far fewer round trips.
        """
        if not self.sql_dialect.batched_writes:
            return [self.update_if_unchanged(row, text) for row, text in changes]
        updated = [False] * len(changes)
        by_id: dict[int, int] = {}
        for index, (row, text) in enumerate(changes):
            # A row id seen twice goes one by one: a VALUES list may name each target row once.
            if isinstance(row.scope, TaskScope) and row.row_id is not None and row.row_id not in by_id:
                by_id[row.row_id] = index
            else:
                updated[index] = self.update_if_unchanged(row, text)
        if not by_id:
            return updated
        now = utcnow()
        values = [(row_id, changes[i][0].value, changes[i][1], now) for row_id, i in by_id.items()]

        sql = (
            "UPDATE task_state_store AS t SET value = v.new, updated_at = v.at "
            "FROM (VALUES %s) AS v(id, old, new, at) WHERE t.id = v.id AND t.value = v.old RETURNING t.id"
        )
        template = "(%s::integer, %s::text, %s::text, %s::timestamptz)"
        for row_id in self._execute_values(sql, template, _pages(values)):
            updated[by_id[row_id]] = True
        return updated

    def delete_many_if_unchanged(
        self, rows: Sequence[StateRow], *, still_expired_at: datetime | None = None
    ) -> list[StateRow]:
        """Delete rows that still hold the value read, in one transaction; return those deleted. Commits.

        With ``still_expired_at`` a task row goes only if it is also still expired at that time: a
        worker that re-set the key meanwhile (new value or new expiry) keeps it. On PostgreSQL the
        task rows go in statements of up to 1000 rows (``DELETE ... USING (VALUES ...) RETURNING``).
        """
        deleted: list[StateRow] = []
        batched: list[StateRow] = []
        for row in rows:
            if self.sql_dialect.batched_writes and isinstance(row.scope, TaskScope) and row.row_id is not None:
                batched.append(row)
            elif self._delete_one_if_unchanged(row, still_expired_at):
                deleted.append(row)
        if batched:
            deleted.extend(self._delete_task_rows_batched(batched, still_expired_at))
        self.commit()
        return deleted

    def _delete_one_if_unchanged(self, row: StateRow, still_expired_at: datetime | None) -> bool:
        target = _RowKey.of(row)
        sql = f"DELETE FROM {target.table} WHERE {target.where} AND value = ?"
        params = [*target.params, row.value]
        if still_expired_at is not None and target.expires:
            sql += " AND expires_at IS NOT NULL AND expires_at < ?"
            params.append(self.sql_dialect.ts(still_expired_at))
        return self._execute(sql, params) > 0

    def _delete_task_rows_batched(self, rows: list[StateRow], still_expired_at: datetime | None) -> list[StateRow]:
        by_id = {row.row_id: row for row in rows}
        condition = " AND t.expires_at IS NOT NULL AND t.expires_at < v.cutoff" if still_expired_at is not None else ""
        sql = (
            "DELETE FROM task_state_store AS t USING (VALUES %s) AS v(id, old, cutoff) "
            f"WHERE t.id = v.id AND t.value = v.old{condition} RETURNING t.id"
        )
        template = "(%s::integer, %s::text, %s::timestamptz)"
        pages = _pages([(r.row_id, r.value, still_expired_at) for r in rows])
        return [by_id[row_id] for row_id in self._execute_values(sql, template, pages)]

    def _execute_values(self, sql: str, template: str, pages: Iterable[Sequence[tuple[Any, ...]]]) -> list[int]:
        """Run a psycopg2 ``execute_values`` statement ending in ``RETURNING t.id`` once per page of
        values (PostgreSQL only); the ids it returned, in order."""
        return [int(row_id) for (row_id,) in self._returning(sql, template, pages)]

    def _returning(self, sql: str, template: str, pages: Iterable[Sequence[tuple[Any, ...]]]) -> list[tuple[Any, ...]]:
        """Run a psycopg2 ``execute_values`` statement with a RETURNING clause once per page of values
        (PostgreSQL only); the rows it returned, in order."""
        from psycopg2.extras import execute_values

        returned: list[tuple[Any, ...]] = []
        with self._errors():
            cur = self.conn.cursor()
            try:
                for page in pages:
                    rows = execute_values(cur, sql, page, template=template, page_size=len(page), fetch=True)
                    returned.extend(tuple(row) for row in rows)
            finally:
                cur.close()
        return returned

    # -- many values at once (import, cp, mv) -------------------------------------------
    def dag_run_ids(self, runs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """dag_run.id of each (dag_id, run_id) that exists; runs that do not are left out."""
        wanted = list(dict.fromkeys(runs))
        found: dict[tuple[str, str], int] = {}
        for start in range(0, len(wanted), _BATCH_ROWS):
            chunk = wanted[start : start + _BATCH_ROWS]
            records = self._fetchall(
                f"{_values_cte(2, len(chunk))} SELECT d.id, d.dag_id, d.run_id FROM p "
                f"JOIN dag_run d ON {_joined_on('d', ('dag_id', 'run_id'))}",
                [part for pair in chunk for part in pair],
            )
            found.update(((dag_id, run_id), int(run)) for run, dag_id, run_id in records)
        return found

    def existing_rows(self, wanted: Sequence[NewValue]) -> dict[tuple[Any, ...], StateRow]:
        """The rows stored now at the addresses of these values, by :func:`address`."""
        found: dict[tuple[Any, ...], StateRow] = {}
        tasks = [v for v in wanted if isinstance(v.scope, TaskScope)]
        for start in range(0, len(tasks), _BATCH_ROWS // 2):
            chunk = tasks[start : start + _BATCH_ROWS // 2]
            params = [p for v in chunk for p in (v.dag_run_id, v.scope.task_id, v.scope.map_index, v.key)]  # type: ignore[union-attr]
            on = _joined_on("t", ("dag_run_id", "task_id", "map_index", '"key"'))
            sql = f"{_values_cte(4, len(chunk))} SELECT {_TASK_COLUMNS_OF_T} FROM p JOIN task_state_store t ON {on}"
            for row in self._task_rows(self._fetchall(sql, params)):
                found[address(row.scope, row.key)] = row
        assets = [v for v in wanted if isinstance(v.scope, AssetScope)]
        for start in range(0, len(assets), _BATCH_ROWS // 2):
            chunk = assets[start : start + _BATCH_ROWS // 2]
            params = [p for v in chunk for p in (v.scope.asset_id, v.key)]  # type: ignore[union-attr]
            on = _joined_on("s", ("asset_id", '"key"'))
            sql = (
                f"{_values_cte(2, len(chunk))} SELECT {_ASSET_COLUMNS} FROM p "
                f"JOIN asset_state_store s ON {on} JOIN asset a ON a.id = s.asset_id"
            )
            for record in self._fetchall(sql, params):
                row = self._asset_row(record)
                found[address(row.scope, row.key)] = row
        return found

    def insert_many_if_absent(self, values: Sequence[NewValue]) -> list[bool]:
        """Insert rows where no row is (a worker may have written one since it was read); per value,
        whether it was inserted. No commit: the caller commits the batch."""
        now = utcnow()
        ts = self.sql_dialect.ts
        inserted = [False] * len(values)
        for kind in ("task", "asset"):
            indices = [i for i, v in enumerate(values) if v.scope.kind == kind]
            if not indices:
                continue
            if kind == "task":
                columns = 'dag_run_id, task_id, map_index, "key", dag_id, run_id, value, updated_at, expires_at'
                conflict = 'dag_run_id, task_id, map_index, "key"'
                template = "(%s::integer, %s, %s::integer, %s, %s, %s, %s, %s::timestamptz, %s::timestamptz)"
                params = [_task_insert_params(values[i], ts(now), ts(values[i].expires_at)) for i in indices]
            else:
                columns = 'asset_id, "key", value, updated_at, ' + _WRITER_COLUMNS
                conflict = 'asset_id, "key"'
                template = "(%s::integer, %s, %s, %s::timestamptz, %s, %s, %s, %s, %s::integer)"
                params = [_asset_params(values[i], ts(now)) for i in indices]
            width = conflict.count(",") + 1  # the params start with the conflict columns
            table = f"{kind}_state_store"
            head = f"INSERT INTO {table} ({columns}) VALUES "
            tail = f" ON CONFLICT ({conflict}) DO NOTHING"
            if self.sql_dialect.batched_writes:
                done = set(self._returning(f"{head}%s{tail} RETURNING {conflict}", template, _pages(params)))
                for index, row_params in zip(indices, params, strict=True):
                    inserted[index] = row_params[:width] in done
            else:
                marks = "(" + ", ".join("?" for _ in params[0]) + ")"
                for index, row_params in zip(indices, params, strict=True):
                    inserted[index] = self._execute(head + marks + tail, row_params) == 1
        return inserted

    def replace_many_if_unchanged(self, changes: Sequence[tuple[StateRow, NewValue]]) -> list[bool]:
        """Replace rows (value, updated_at, and expires_at or the asset's writer) only where they still
        hold the value read; per change, whether it was replaced. No commit."""
        now = utcnow()
        ts = self.sql_dialect.ts
        replaced = [False] * len(changes)
        tasks = [i for i, (row, _) in enumerate(changes) if isinstance(row.scope, TaskScope)]
        assets = [i for i, (row, _) in enumerate(changes) if not isinstance(row.scope, TaskScope)]
        task_params = [
            (changes[i][0].row_id, changes[i][0].value, changes[i][1].value, ts(now), ts(changes[i][1].expires_at))
            for i in tasks
        ]
        asset_params = []
        for i in assets:
            fresh = _asset_params(changes[i][1], ts(now))
            asset_params.append((*fresh[:2], changes[i][0].value, *fresh[2:]))
        writer_set = ", ".join(f"{c} = v.{c}" for c in _WRITER_COLUMNS.split(", "))
        if self.sql_dialect.batched_writes and len({p[0] for p in task_params}) == len(task_params):
            sql = (
                "UPDATE task_state_store AS t SET value = v.new, updated_at = v.at, expires_at = v.exp "
                "FROM (VALUES %s) AS v(id, old, new, at, exp) WHERE t.id = v.id AND t.value = v.old RETURNING t.id"
            )
            template = "(%s::integer, %s::text, %s::text, %s::timestamptz, %s::timestamptz)"
            done = {r[0] for r in self._returning(sql, template, _pages(task_params))}
            for index, params in zip(tasks, task_params, strict=True):
                replaced[index] = params[0] in done
        else:
            sql = "UPDATE task_state_store SET value = ?, updated_at = ?, expires_at = ? WHERE id = ? AND value = ?"
            for index, (row_id, old, new, at, exp) in zip(tasks, task_params, strict=True):
                replaced[index] = self._execute(sql, (new, at, exp, row_id, old)) == 1
        if self.sql_dialect.batched_writes and len({p[:2] for p in asset_params}) == len(asset_params):
            sql = (
                f"UPDATE asset_state_store AS t SET value = v.new, updated_at = v.at, {writer_set} "
                f"FROM (VALUES %s) AS v(asset_id, k, old, new, at, {_WRITER_COLUMNS}) "
                'WHERE t.asset_id = v.asset_id AND t."key" = v.k AND t.value = v.old RETURNING t.asset_id, t."key"'
            )
            template = "(%s::integer, %s, %s::text, %s::text, %s::timestamptz, %s, %s, %s, %s, %s::integer)"
            done_assets = set(self._returning(sql, template, _pages(asset_params)))
            for index, params in zip(assets, asset_params, strict=True):
                replaced[index] = (params[0], params[1]) in done_assets
        else:
            sets = ", ".join(f"{c} = ?" for c in _WRITER_COLUMNS.split(", "))
            sql = (
                f"UPDATE asset_state_store SET value = ?, updated_at = ?, {sets} "
                'WHERE asset_id = ? AND "key" = ? AND value = ?'
            )
            for index, (asset_id, key, old_text, new_text, at, *writer) in zip(assets, asset_params, strict=True):
                replaced[index] = self._execute(sql, (new_text, at, *writer, asset_id, key, old_text)) == 1
        return replaced

    # -- streams in scope order -----------------------------------------------------
    def scope_rows(self, scope: Scope, *, all_map_indices: bool = False) -> list[StateRow]:
        """The rows `clear` removes (a scope holds few keys, so a list is fine)."""
        if isinstance(scope, TaskScope):
            flt = RowFilter(
                dag_id=scope.dag_id,
                run_id=scope.run_id,
                task_id=scope.task_id,
                map_index=None if all_map_indices else scope.map_index,
                assets=False,
            )
            return list(self.iter_rows(flt))
        return list(self._iter_asset_rows(RowFilter(tasks=False), asset_id=scope.asset_id, scope=scope))

    def iter_rows(self, flt: RowFilter, batch_size: int = STREAM_BATCH) -> Iterator[StateRow]:
        """Stream rows in scope order with flat memory (server-side cursor on PostgreSQL)."""
        if flt.wants_tasks:
            for records in self.iter_task_records(flt, batch_size):
                yield from self._task_rows(records)
        if flt.wants_assets:
            yield from self._iter_asset_rows(flt, batch_size=batch_size)

    def iter_task_records(self, flt: RowFilter, batch_size: int = STREAM_BATCH) -> Iterator[list[Sequence[Any]]]:
        """The task rows of :meth:`iter_rows` as the driver returns them, a fetched batch at a time: tuples of
        id, dag_id, run_id, task_id, map_index, key, value, updated_at, expires_at (timestamps for
        :func:`iso_timestamp`). For a listing of millions, where a StateRow per row is most of the cost."""
        clause, params = self._task_where(flt)
        sql = f'SELECT {_TASK_COLUMNS} FROM task_state_store{clause} ORDER BY dag_id, run_id, task_id, map_index, "key"'
        yield from self._stream_batches(sql, params, batch_size, end_transaction=True)

    def _iter_asset_rows(
        self,
        flt: RowFilter,
        batch_size: int = STREAM_BATCH,
        asset_id: int | None = None,
        scope: AssetScope | None = None,
    ) -> Iterator[StateRow]:
        clause, params = self._asset_where(flt, asset_id)
        sql = f'SELECT {_ASSET_COLUMNS} FROM {_ASSET_FROM}{clause} ORDER BY a.name, s."key"'
        for r in self._stream(sql, params, batch_size, end_transaction=True):
            yield self._asset_row(r, scope)

    def _task_where(self, flt: RowFilter) -> tuple[str, list[Any]]:
        where, params = [], []
        for column, value in (
            ("dag_id", flt.dag_id),
            ("run_id", flt.run_id),
            ("task_id", flt.task_id),
            ("map_index", flt.map_index),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if flt.expired_before is not None:
            where.append("expires_at IS NOT NULL AND expires_at < ?")
            params.append(self.sql_dialect.ts(flt.expired_before))
        if flt.shard is not None and not flt.shard.whole:
            where.append(self.sql_dialect.in_list("dag_id"))
            params.append(self.sql_dialect.list_param(self.shard_dags(flt.shard)))
        return (f" WHERE {' AND '.join(where)}" if where else ""), params

    def shard_dags(self, shard: Shard) -> list[str]:
        """The dag_ids with task state that the shard owns, read once per shard and connection: one
        run's plan and execution select the same dags (a dag's first key written since waits for the
        next run, as rows written after a plan do)."""
        if shard not in self._shard_dags:
            dags = self._fetchall("SELECT DISTINCT dag_id FROM task_state_store", ())
            self._shard_dags[shard] = sorted(d for (d,) in dags if shard.owns_dag(d))
        return self._shard_dags[shard]

    @staticmethod
    def _asset_where(flt: RowFilter, asset_id: int | None = None) -> tuple[str, list[Any]]:
        where, params = [], []
        for column, value in (("s.asset_id", asset_id), ("a.name", flt.asset_name), ("a.uri", flt.asset_uri)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        return (f" WHERE {' AND '.join(where)}" if where else ""), params

    # -- rows by the text of their value (the scan's side of the merge join) -------------
    def iter_rows_by_value_prefix(self, prefix: str, batch_size: int = STREAM_BATCH) -> Iterator[StateRow]:
        """Task and asset rows whose value text starts with ``prefix``, in byte order of the value.

        Each table is sorted by the server (PostgreSQL with ``COLLATE "C"``, SQLite's BINARY default)
        and streamed; the two streams are merged here, so memory stays at a batch per table. The
        read transaction stays open (several of these stream at once): the caller ends it, e.g. close().
        """
        order = self.sql_dialect.byte_order
        task_sql = f"SELECT {_TASK_COLUMNS} FROM task_state_store WHERE substr(value, 1, ?) = ? ORDER BY value{order}"
        asset_sql = (
            f"SELECT {_ASSET_COLUMNS} FROM {_ASSET_FROM} WHERE substr(s.value, 1, ?) = ? ORDER BY s.value{order}"
        )
        params = (len(prefix), prefix)
        tasks = self._task_rows(self._stream(task_sql, params, batch_size, end_transaction=False))
        assets = (self._asset_row(r) for r in self._stream(asset_sql, params, batch_size, end_transaction=False))
        yield from heapq.merge(tasks, assets, key=lambda row: row.value)

    def iter_rows_with_value_like(
        self, prefix: str, contains: str, exclude_prefix: str, batch_size: int = STREAM_BATCH
    ) -> Iterator[StateRow]:
        """Task and asset rows whose value starts with ``prefix``, contains ``contains`` and does not
        start with ``exclude_prefix``; unordered, streamed. As above, the caller ends the transaction."""

        def where(column: str) -> str:
            return f"substr({column}, 1, ?) = ? AND substr({column}, 1, ?) <> ? AND {column} LIKE ?"

        params = (len(prefix), prefix, len(exclude_prefix), exclude_prefix, f"%{contains}%")
        task_sql = f"SELECT {_TASK_COLUMNS} FROM task_state_store WHERE {where('value')}"
        yield from self._task_rows(self._stream(task_sql, params, batch_size, end_transaction=False))
        asset_sql = f"SELECT {_ASSET_COLUMNS} FROM {_ASSET_FROM} WHERE {where('s.value')}"
        for r in self._stream(asset_sql, params, batch_size, end_transaction=False):
            yield self._asset_row(r)

    # -- batches for long operations --------------------------------------------------
    def count_rows(self, flt: RowFilter) -> int:
        """How many rows a filter selects (for progress bars and plans)."""
        total = 0
        if flt.wants_tasks:
            clause, params = self._task_where(flt)
            total += int(self._fetchone(f"SELECT COUNT(*) FROM task_state_store{clause}", params)[0])
        if flt.wants_assets:
            clause, params = self._asset_where(flt)
            total += int(self._fetchone(f"SELECT COUNT(*) FROM {_ASSET_FROM}{clause}", params)[0])
        return total

    def iter_batches(self, flt: RowFilter, batch_size: int) -> Iterator[list[StateRow]]:
        """Rows in batches by keyset pagination: no cursor stays open while batches are written.

        Each batch is a fresh query after the last key seen, so rows can be updated between
        batches on either database and memory stays at one batch.
        """
        if flt.wants_tasks:
            clause, params = self._task_where(flt)
            keyset = f"{clause} AND id > ?" if clause else " WHERE id > ?"
            last_id = -1
            while True:
                records = self._fetchall(
                    f"SELECT {_TASK_COLUMNS} FROM task_state_store{keyset} ORDER BY id LIMIT ?",
                    [*params, last_id, batch_size],
                )
                if not records:
                    break
                batch = list(self._task_rows(records))
                last_id = batch[-1].row_id or last_id
                yield batch
        if flt.wants_assets:
            clause, params = self._asset_where(flt)
            after = '(s.asset_id > ? OR (s.asset_id = ? AND s."key" > ?))'
            keyset = f"{clause} AND {after}" if clause else f" WHERE {after}"
            last: tuple[int, str] = (-1, "")
            while True:
                records = self._fetchall(
                    f'SELECT {_ASSET_COLUMNS} FROM {_ASSET_FROM}{keyset} ORDER BY s.asset_id, s."key" LIMIT ?',
                    [*params, last[0], last[0], last[1], batch_size],
                )
                if not records:
                    break
                last = (int(records[-1][0]), records[-1][3])
                yield [self._asset_row(r) for r in records]

    # -- prune ------------------------------------------------------------------------
    def referenced_texts(self, texts: Sequence[str], addresses: Sequence[TaskAddress | None]) -> set[str]:
        """Which of these exact column texts a row holds now: the last check before an object goes,
        against a worker's fresh write. ``addresses[i]``: the task instance whose path the object of
        ``texts[i]`` lies at, or None.

        A text with an address is looked up among that task instance's rows only, where a worker
        writes it: a probe of the lookup index, however large the table. The others are looked for
        in every row, a scan of both tables per 1000 texts (``value`` has no index). Rows holding a
        ref to another task instance's path are the caller's to know (:meth:`iter_ref_holders`).
        """
        found: set[str] = set()
        probes = [(*address, text) for text, address in zip(texts, addresses, strict=True) if address is not None]
        for start in range(0, len(probes), _BATCH_ROWS):
            chunk = probes[start : start + _BATCH_ROWS]
            on = _joined_on("t", ("dag_id", "run_id", "task_id", "map_index", "value"))
            sql = f"{_values_cte(5, len(chunk))} SELECT t.value FROM p JOIN task_state_store t ON {on}"
            found.update(r[0] for r in self._fetchall(sql, [p for probe in chunk for p in probe]))
        unplaced = [text for text, address in zip(texts, addresses, strict=True) if address is None]
        for start in range(0, len(unplaced), _BATCH_ROWS):
            some = unplaced[start : start + _BATCH_ROWS]
            marks = ", ".join("?" for _ in some)
            for table in ("task_state_store", "asset_state_store"):
                rows = self._fetchall(f"SELECT DISTINCT value FROM {table} WHERE value IN ({marks})", some)
                found.update(r[0] for r in rows)
        return found

    def iter_ref_holders(self, prefix: str, batch_size: int = STREAM_BATCH) -> Iterator[tuple[TaskAddress | None, str]]:
        """(task address, or None for an asset row; value) of every row whose value starts with
        ``prefix`` followed closely by '://' (a URL's scheme: the worker's object refs, and not the
        inline values, which may be large), streamed in one read of each table."""
        where = "WHERE substr(value, 1, ?) = ? AND substr(value, ?, 40) LIKE '%://%'"
        params = (len(prefix), prefix, len(prefix) + 1)
        sql = f"SELECT dag_id, run_id, task_id, map_index, value FROM task_state_store {where}"
        for batch in self._stream_batches(sql, params, batch_size, end_transaction=True):
            for dag_id, run_id, task_id, map_index, value in batch:
                yield (dag_id, run_id, task_id, map_index), value
        for (value,) in self._stream(
            f"SELECT value FROM asset_state_store {where}", params, batch_size, end_transaction=True
        ):
            yield None, value

    # -- expire -----------------------------------------------------------------------
    def set_expiry_many_if_unchanged(self, rows: Sequence[StateRow], expires_at: datetime | None) -> list[StateRow]:
        """Set expires_at of task rows that still hold the value read, in one transaction; return those
        updated. Commits. updated_at stays as it is: the value did not change.

        On PostgreSQL in statements of up to 1000 rows or ~8 MB of values each,
        ``UPDATE ... FROM (VALUES ...) WHERE t.id = v.id AND t.value = v.old RETURNING t.id``.
        """
        by_id: dict[int, StateRow] = {}
        for row in rows:
            if not isinstance(row.scope, TaskScope) or row.row_id is None:
                raise ValueError(f"{row.label}: only task rows have expires_at")
            by_id.setdefault(row.row_id, row)
        when = self.sql_dialect.ts(expires_at)
        if not self.sql_dialect.batched_writes:
            sql = "UPDATE task_state_store SET expires_at = ? WHERE id = ? AND value = ?"
            updated = [row for row_id, row in by_id.items() if self._execute(sql, (when, row_id, row.value)) > 0]
            self.commit()
            return updated

        sql = (
            "UPDATE task_state_store AS t SET expires_at = v.expires FROM (VALUES %s) AS v(id, old, expires) "
            "WHERE t.id = v.id AND t.value = v.old RETURNING t.id"
        )
        template = "(%s::integer, %s::text, %s::timestamptz)"
        values = [(row_id, row.value, when) for row_id, row in by_id.items()]
        updated = [by_id[row_id] for row_id in self._execute_values(sql, template, _pages(values))]
        self.commit()
        return updated
