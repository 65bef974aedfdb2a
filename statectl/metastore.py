"""Access to Airflow's metadata database: the state store tables, dag runs and assets.

Plain DB-API (sqlite3, psycopg2) rather than SQLAlchemy: importing SQLAlchemy and
Airflow's models costs seconds, and these few statements mirror what Airflow's
``MetastoreBackend`` executes. Every write that may race a worker is conditional on the
value that was read.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from statectl.config import mask_url
from statectl.errors import ConfigError, NotFoundError, StatectlError, UnreachableError
from statectl.scopes import AssetScope, Scope, TaskScope

SQLITE_TIMESTAMP = "%Y-%m-%d %H:%M:%S.%f"  # SQLAlchemy's storage format for DateTime on SQLite
STREAM_BATCH = 2000
_CURSOR_SERIAL = itertools.count()  # names of server-side cursors open at the same time


@dataclass(frozen=True)
class StateRow:
    """One row of task_state_store or asset_state_store."""

    scope: Scope
    key: str
    value: str
    updated_at: datetime | None
    expires_at: datetime | None = None
    row_id: int | None = None  # task_state_store.id; asset rows are keyed by (asset_id, key)

    @property
    def kind(self) -> str:
        return self.scope.kind


@dataclass(frozen=True)
class RowFilter:
    dag_id: str | None = None
    run_id: str | None = None
    task_id: str | None = None
    map_index: int | None = None
    asset_name: str | None = None
    asset_uri: str | None = None
    tasks: bool = True
    assets: bool = True
    expired_before: datetime | None = None  # only task rows with expires_at < this

    @property
    def wants_tasks(self) -> bool:
        return self.tasks and self.asset_name is None and self.asset_uri is None

    @property
    def wants_assets(self) -> bool:
        has_task_filter = any(v is not None for v in (self.dag_id, self.run_id, self.task_id, self.map_index))
        return self.assets and not has_task_filter and self.expired_before is None


def utcnow() -> datetime:
    return datetime.now(tz=UTC)


def _parse_sqlite_url(url: str) -> str:
    rest = url.split("://", 1)[1]
    if not rest.startswith("/") or rest in ("/", "/:memory:"):
        raise ConfigError("an in-memory SQLite metastore cannot be administered from another process")
    path = rest[1:].split("?", 1)[0]
    return unquote(path)


class Metastore:
    """A connection to the metadata DB, opened on first use."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.display_url = mask_url(url)
        scheme = url.split("://", 1)[0].lower() if "://" in url else ""
        dialect = scheme.split("+", 1)[0]
        if dialect == "sqlite":
            self.dialect = "sqlite"
        elif dialect in ("postgresql", "postgres"):
            self.dialect = "postgresql"
        elif dialect in ("mysql", "mariadb"):
            raise ConfigError("MySQL metastores are not supported yet; statectl supports SQLite and PostgreSQL")
        else:
            raise ConfigError(f"[database] sql_alchemy_conn has an unknown scheme: {self.display_url!r}")
        self._conn: Any = None

    # -- connection -----------------------------------------------------------------
    def _connect(self) -> Any:
        if self.dialect == "sqlite":
            import sqlite3

            path = _parse_sqlite_url(self.url)
            try:
                # mode=rw: never create an empty database where the metastore should be.
                conn = sqlite3.connect(f"file:{quote(path)}?mode=rw", uri=True, timeout=30)
            except sqlite3.Error as e:
                raise UnreachableError(f"cannot open the SQLite metastore {path}: {e}") from None
            return conn
        import psycopg2

        parts = urlsplit(self.url)
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
            raise UnreachableError(f"cannot connect to the metastore {self.display_url}: {reason}") from None

    @property
    def conn(self) -> Any:
        if self._conn is None:
            self._conn = self._connect()
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _sql(self, sql: str) -> str:
        return sql if self.dialect == "sqlite" else sql.replace("%", "%%").replace("?", "%s")

    def _ts(self, value: datetime | None) -> Any:
        if value is None or self.dialect != "sqlite":
            return value
        return value.astimezone(UTC).strftime(SQLITE_TIMESTAMP)

    @staticmethod
    def _from_db_ts(value: Any) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        return value if value.tzinfo else value.replace(tzinfo=UTC)

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

    def _fetchone(self, sql: str, params: Sequence[Any]) -> Any:
        with self._errors():
            cur = self.conn.cursor()
            cur.execute(self._sql(sql), tuple(params))
            row = cur.fetchone()
            cur.close()
            return row

    def _execute(self, sql: str, params: Sequence[Any]) -> int:
        with self._errors():
            cur = self.conn.cursor()
            cur.execute(self._sql(sql), tuple(params))
            count = cur.rowcount
            cur.close()
            return count

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

    # -- rows -----------------------------------------------------------------------
    _TASK_COLUMNS = 'id, dag_id, run_id, task_id, map_index, "key", value, updated_at, expires_at'

    def _task_row(self, r: Sequence[Any], previous: StateRow | None = None) -> StateRow:
        scope = previous.scope if previous is not None else None
        if not (
            isinstance(scope, TaskScope)
            and scope.map_index == r[4]
            and scope.task_id == r[3]
            and scope.run_id == r[2]
            and scope.dag_id == r[1]
        ):
            scope = TaskScope(r[1], r[2], r[3], int(r[4]))  # rows arrive grouped by scope: build each once
        return StateRow(
            scope=scope,
            key=r[5],
            value=r[6],
            updated_at=self._from_db_ts(r[7]),
            expires_at=self._from_db_ts(r[8]),
            row_id=int(r[0]),
        )

    def get_row(self, scope: Scope, key: str) -> StateRow | None:
        if isinstance(scope, TaskScope):
            r = self._fetchone(
                f"SELECT {self._TASK_COLUMNS} FROM task_state_store WHERE dag_id = ? AND run_id = ? "
                'AND task_id = ? AND map_index = ? AND "key" = ?',
                (scope.dag_id, scope.run_id, scope.task_id, scope.map_index, key),
            )
            return None if r is None else self._task_row(r)
        assert scope.asset_id is not None
        r = self._fetchone(
            'SELECT value, updated_at FROM asset_state_store WHERE asset_id = ? AND "key" = ?', (scope.asset_id, key)
        )
        return None if r is None else StateRow(scope, key, r[0], self._from_db_ts(r[1]))

    def upsert(
        self, scope: Scope, key: str, value: str, *, expires_at: datetime | None, dag_run_id: int | None = None
    ) -> None:
        """Insert or replace one value exactly as Airflow's MetastoreBackend does; commits."""
        now = utcnow()
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
                    self._ts(now),
                    self._ts(expires_at),
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
                (scope.asset_id, key, value, self._ts(now)),
            )
        self.commit()

    def delete_if_unchanged(self, rows: Sequence[StateRow]) -> list[StateRow]:
        """Delete rows whose value is still the one read; return those deleted. Commits."""
        deleted = []
        for row in rows:
            if isinstance(row.scope, TaskScope):
                count = self._execute(
                    "DELETE FROM task_state_store WHERE id = ? AND value = ?", (row.row_id, row.value)
                )
            else:
                count = self._execute(
                    'DELETE FROM asset_state_store WHERE asset_id = ? AND "key" = ? AND value = ?',
                    (row.scope.asset_id, row.key, row.value),
                )
            if count:
                deleted.append(row)
        self.commit()
        return deleted

    def update_if_unchanged(self, row: StateRow, new_value: str) -> bool:
        """Replace a row's value only if it is still the one read (a worker may have written)."""
        now = self._ts(utcnow())
        if isinstance(row.scope, TaskScope):
            count = self._execute(
                "UPDATE task_state_store SET value = ?, updated_at = ? WHERE id = ? AND value = ?",
                (new_value, now, row.row_id, row.value),
            )
        else:
            count = self._execute(
                'UPDATE asset_state_store SET value = ?, updated_at = ? WHERE asset_id = ? AND "key" = ? AND value = ?',
                (new_value, now, row.scope.asset_id, row.key, row.value),
            )
        return count == 1

    def update_many_if_unchanged(self, changes: Sequence[tuple[StateRow, str]]) -> list[bool]:
        """update_if_unchanged for many rows (no commit); per row, whether it was updated.

        On PostgreSQL the task rows go in a few statements, each
        ``UPDATE ... FROM (VALUES ...) WHERE t.id = v.id AND t.value = v.old RETURNING t.id``:
        the same condition as one statement per row, far fewer round trips.
        """
        if self.dialect != "postgresql":
            return [self.update_if_unchanged(row, text) for row, text in changes]
        from psycopg2.extras import execute_values

        updated = [False] * len(changes)
        by_id: dict[int, int] = {}
        for index, (row, text) in enumerate(changes):
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
        with self._errors():
            cur = self.conn.cursor()
            page: list[tuple[int, str, str, datetime]] = []
            page_bytes = 0
            for i, value in enumerate(values):
                page.append(value)
                page_bytes += len(value[1]) + len(value[2])
                # Statements of at most ~8 MB of values or 1000 rows.
                if page_bytes > 8_000_000 or len(page) >= 1000 or i == len(values) - 1:
                    for (row_id,) in execute_values(cur, sql, page, template=template, page_size=len(page), fetch=True):
                        updated[by_id[int(row_id)]] = True
                    page, page_bytes = [], 0
            cur.close()
        return updated

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
            yield from self._iter_task_rows(flt, batch_size)
        if flt.wants_assets:
            yield from self._iter_asset_rows(flt, batch_size=batch_size)

    def _stream(self, sql: str, params: Sequence[Any], batch_size: int) -> Iterator[Sequence[Any]]:
        with self._errors():
            if self.dialect == "postgresql":
                cur = self.conn.cursor(name=f"statectl_stream_{id(params)}")
                cur.itersize = batch_size
            else:
                cur = self.conn.cursor()
            cur.execute(self._sql(sql), tuple(params))
            while True:
                batch = cur.fetchmany(batch_size)
                if not batch:
                    break
                yield from batch
            cur.close()
        if self.dialect == "postgresql":
            self._rollback()  # end the read transaction that held the named cursor

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
            params.append(self._ts(flt.expired_before))
        return (f" WHERE {' AND '.join(where)}" if where else ""), params

    @staticmethod
    def _asset_where(flt: RowFilter, asset_id: int | None = None) -> tuple[str, list[Any]]:
        where, params = [], []
        for column, value in (("s.asset_id", asset_id), ("a.name", flt.asset_name), ("a.uri", flt.asset_uri)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        return (f" WHERE {' AND '.join(where)}" if where else ""), params

    def _iter_task_rows(self, flt: RowFilter, batch_size: int) -> Iterator[StateRow]:
        clause, params = self._task_where(flt)
        sql = (
            f"SELECT {self._TASK_COLUMNS} FROM task_state_store{clause} "
            'ORDER BY dag_id, run_id, task_id, map_index, "key"'
        )
        row = None
        for r in self._stream(sql, params, batch_size):
            row = self._task_row(r, row)
            yield row

    def _iter_asset_rows(
        self,
        flt: RowFilter,
        batch_size: int = STREAM_BATCH,
        asset_id: int | None = None,
        scope: AssetScope | None = None,
    ) -> Iterator[StateRow]:
        clause, params = self._asset_where(flt, asset_id)
        sql = (
            'SELECT a.id, a.name, a.uri, s."key", s.value, s.updated_at FROM asset_state_store s '
            f'JOIN asset a ON a.id = s.asset_id{clause} ORDER BY a.name, s."key"'
        )
        for r in self._stream(sql, params, batch_size):
            yield self._asset_row(r, scope)

    def _asset_row(self, r: Sequence[Any], scope: AssetScope | None = None) -> StateRow:
        row_scope = scope or AssetScope(name=r[1] or None, uri=r[2] or None, asset_id=int(r[0]))
        return StateRow(row_scope, r[3], r[4], self._from_db_ts(r[5]))

    # -- rows by the text of their value (the scan's side of the merge join) -------------
    _ASSET_REF_COLUMNS = 'a.id, a.name, a.uri, s."key", s.value, s.updated_at'

    def iter_rows_by_value_prefix(self, prefix: str, batch_size: int = STREAM_BATCH) -> Iterator[StateRow]:
        """Task and asset rows whose value text starts with ``prefix``, in byte order of the value.

        Each table is sorted by the server (PostgreSQL with ``COLLATE "C"``, SQLite's BINARY default)
        and streamed; the two streams are merged here, so memory stays at a batch per table. The
        read transaction stays open (several of these stream at once): the caller ends it, e.g. close().
        """
        import heapq

        order = ' COLLATE "C"' if self.dialect == "postgresql" else ""
        where = "substr(value, 1, ?) = ?"
        task_sql = f"SELECT {self._TASK_COLUMNS} FROM task_state_store WHERE {where} ORDER BY value{order}"
        asset_sql = (
            f"SELECT {self._ASSET_REF_COLUMNS} FROM asset_state_store s JOIN asset a ON a.id = s.asset_id "
            f"WHERE substr(s.value, 1, ?) = ? ORDER BY s.value{order}"
        )
        params = (len(prefix), prefix)

        def tasks() -> Iterator[StateRow]:
            row = None
            for r in self._stream_open(task_sql, params, batch_size):
                row = self._task_row(r, row)
                yield row

        assets = (self._asset_row(r) for r in self._stream_open(asset_sql, params, batch_size))
        yield from heapq.merge(tasks(), assets, key=lambda row: row.value)

    def iter_rows_with_value_like(
        self, prefix: str, contains: str, exclude_prefix: str, batch_size: int = STREAM_BATCH
    ) -> Iterator[StateRow]:
        """Task and asset rows whose value starts with ``prefix``, contains ``contains`` and does not
        start with ``exclude_prefix``; unordered, streamed. As above, the caller ends the transaction."""
        where = "substr(value, 1, ?) = ? AND substr(value, 1, ?) <> ? AND value LIKE ?"
        params = (len(prefix), prefix, len(exclude_prefix), exclude_prefix, f"%{contains}%")
        task_sql = f"SELECT {self._TASK_COLUMNS} FROM task_state_store WHERE {where}"
        yield from (self._task_row(r) for r in self._stream_open(task_sql, params, batch_size))
        asset_sql = (
            f"SELECT {self._ASSET_REF_COLUMNS} FROM asset_state_store s JOIN asset a ON a.id = s.asset_id "
            f"WHERE {where.replace('value', 's.value')}"
        )
        yield from (self._asset_row(r) for r in self._stream_open(asset_sql, params, batch_size))

    def _stream_open(self, sql: str, params: Sequence[Any], batch_size: int) -> Iterator[Sequence[Any]]:
        """Like _stream, but leaves the transaction open so that several cursors can stream at once;
        the caller ends it."""
        with self._errors():
            if self.dialect == "postgresql":
                cur = self.conn.cursor(name=f"statectl_scan_{next(_CURSOR_SERIAL)}")
                cur.itersize = batch_size
            else:
                cur = self.conn.cursor()
            cur.execute(self._sql(sql), tuple(params))
            try:
                while batch := cur.fetchmany(batch_size):
                    yield from batch
            finally:
                cur.close()

    def asset_names_for_uri(self, uri: str) -> list[str]:
        """Names of the assets with this uri (the provider names an asset's folder by its name)."""
        return [r[0] for r in self._fetchall("SELECT name FROM asset WHERE uri = ?", (uri,)) if r[0]]

    # -- batches for long operations --------------------------------------------------
    def count_rows(self, flt: RowFilter) -> int:
        """How many rows a filter selects (for progress bars and plans)."""
        total = 0
        if flt.wants_tasks:
            clause, params = self._task_where(flt)
            total += int(self._fetchone(f"SELECT COUNT(*) FROM task_state_store{clause}", params)[0])
        if flt.wants_assets:
            clause, params = self._asset_where(flt)
            total += int(
                self._fetchone(
                    f"SELECT COUNT(*) FROM asset_state_store s JOIN asset a ON a.id = s.asset_id{clause}", params
                )[0]
            )
        return total

    def iter_batches(self, flt: RowFilter, batch_size: int) -> Iterator[list[StateRow]]:
        """Rows in batches by keyset pagination: no cursor stays open while batches are written.

        Each batch is a fresh query after the last key seen, so rows can be updated between
        batches on either database and memory stays at one batch.
        """
        if flt.wants_tasks:
            clause, params = self._task_where(flt)
            last_id = -1
            while True:
                keyset = f"{clause} AND id > ?" if clause else " WHERE id > ?"
                rows = self._fetchall(
                    f"SELECT {self._TASK_COLUMNS} FROM task_state_store{keyset} ORDER BY id LIMIT ?",
                    [*params, last_id, batch_size],
                )
                if not rows:
                    break
                previous = None
                batch = []
                for r in rows:
                    previous = self._task_row(r, previous)
                    batch.append(previous)
                last_id = batch[-1].row_id or last_id
                yield batch
        if flt.wants_assets:
            clause, params = self._asset_where(flt)
            last: tuple[int, str] = (-1, "")
            while True:
                keyset = '(s.asset_id > ? OR (s.asset_id = ? AND s."key" > ?))'
                where = f"{clause} AND {keyset}" if clause else f" WHERE {keyset}"
                rows = self._fetchall(
                    'SELECT a.id, a.name, a.uri, s."key", s.value, s.updated_at FROM asset_state_store s '
                    f'JOIN asset a ON a.id = s.asset_id{where} ORDER BY s.asset_id, s."key" LIMIT ?',
                    [*params, last[0], last[0], last[1], batch_size],
                )
                if not rows:
                    break
                batch = [self._asset_row(r) for r in rows]
                last = (int(rows[-1][0]), rows[-1][3])
                yield batch

    def _fetchall(self, sql: str, params: Sequence[Any]) -> list[Sequence[Any]]:
        with self._errors():
            cur = self.conn.cursor()
            cur.execute(self._sql(sql), tuple(params))
            rows = cur.fetchall()
            cur.close()
            return rows

    # -- prune ------------------------------------------------------------------------
    def delete_many_if_unchanged(
        self, rows: Sequence[StateRow], *, still_expired_at: datetime | None = None
    ) -> list[StateRow]:
        """Delete rows that still hold the value read, in one transaction; return those deleted. Commits.

        With ``still_expired_at`` a task row goes only if it is also still expired at that time: a
        worker that re-set the key meanwhile (new value or new expiry) keeps it. On PostgreSQL the
        task rows go in statements of up to 1000 rows (``DELETE ... USING (VALUES ...) RETURNING``).
        """
        expired_clause = " AND expires_at IS NOT NULL AND expires_at < ?" if still_expired_at is not None else ""
        deleted: list[StateRow] = []
        batched: list[StateRow] = []
        for row in rows:
            if isinstance(row.scope, TaskScope) and self.dialect == "postgresql" and row.row_id is not None:
                batched.append(row)
            elif isinstance(row.scope, TaskScope):
                params: list[Any] = [row.row_id, row.value]
                if still_expired_at is not None:
                    params.append(self._ts(still_expired_at))
                if self._execute(f"DELETE FROM task_state_store WHERE id = ? AND value = ?{expired_clause}", params):
                    deleted.append(row)
            elif self._execute(
                'DELETE FROM asset_state_store WHERE asset_id = ? AND "key" = ? AND value = ?',
                (row.scope.asset_id, row.key, row.value),
            ):
                deleted.append(row)
        if batched:
            deleted.extend(self._delete_task_rows_batched(batched, still_expired_at))
        self.commit()
        return deleted

    def _delete_task_rows_batched(self, rows: list[StateRow], still_expired_at: datetime | None) -> list[StateRow]:
        from psycopg2.extras import execute_values

        by_id = {row.row_id: row for row in rows}
        condition = " AND t.expires_at IS NOT NULL AND t.expires_at < v.cutoff" if still_expired_at else ""
        sql = (
            "DELETE FROM task_state_store AS t USING (VALUES %s) AS v(id, old, cutoff) "
            f"WHERE t.id = v.id AND t.value = v.old{condition} RETURNING t.id"
        )
        template = "(%s::integer, %s::text, %s::timestamptz)"
        deleted: list[StateRow] = []
        with self._errors():
            cur = self.conn.cursor()
            for start in range(0, len(rows), 1000):
                page = [(r.row_id, r.value, still_expired_at) for r in rows[start : start + 1000]]
                for (row_id,) in execute_values(cur, sql, page, template=template, page_size=len(page), fetch=True):
                    deleted.append(by_id[int(row_id)])
            cur.close()
        return deleted

    def referenced_texts(self, texts: Sequence[str]) -> set[str]:
        """Which of these exact column texts some task or asset row holds now (one query per table
        per 1000 texts): the last check before an object goes, against a worker's fresh write."""
        found: set[str] = set()
        for start in range(0, len(texts), 1000):
            chunk = list(texts[start : start + 1000])
            marks = ", ".join("?" for _ in chunk)
            for table in ("task_state_store", "asset_state_store"):
                rows = self._fetchall(f"SELECT DISTINCT value FROM {table} WHERE value IN ({marks})", chunk)
                found.update(r[0] for r in rows)
        return found
