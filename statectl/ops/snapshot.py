"""export: the selected state as a snapshot (JSON Lines, see :mod:`statectl.core.snapshot`); import: a
snapshot written into this deployment as its workers would write each value (:mod:`statectl.ops.ingest`).

Export streams rows in scope order and reads the objects of the next batch while the lines of this one
are written, so memory stays at two batches. Import reads the file twice: first to check every line
(format, checksums, targets, conflicts) before anything changes, then to write.
"""

from __future__ import annotations

import gzip
import io
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from importlib import metadata
from pathlib import Path
from typing import IO, Any

from statectl import __version__
from statectl.core import codec
from statectl.core.filters import RowFilter, utcnow
from statectl.core.readahead import read_ahead
from statectl.core.scopes import AssetScope, TaskScope
from statectl.core.snapshot import GZIP_MAGIC, Record, header_line, parse_header, parse_line
from statectl.errors import DataError, ExitCode, StatectlError, UsageError
from statectl.ops.ingest import Incoming, Ingest, IngestReport, OnConflict, run_ingest
from statectl.ops.read import read_values
from statectl.ops.report import Confirm, Progress
from statectl.ops.write import Expiry
from statectl.stores.bucket import Result
from statectl.stores.metastore import StateRow
from statectl.stores.store import StateStore

DEFAULT_BATCH = 500
ERRORS_LISTED = 1000


# -- files ---------------------------------------------------------------------------------


@contextmanager
def snapshot_writer(path: Path | None, stdout: IO[str]) -> Iterator[IO[str]]:
    """Where export writes: ``stdout`` (path None), else PATH (gzip when it ends in .gz), written beside it
    and renamed into place only once complete, so a killed export never leaves half a snapshot."""
    if path is None:
        yield stdout
        return
    partial = path.with_name(f".{path.name}.partial")
    try:
        raw = partial.open("wb")
    except OSError as e:
        raise UsageError(f"cannot write --file {path}: {e.strerror or e}") from None
    try:
        binary: Any = io.BufferedWriter(_GzipOffThread(raw), 1 << 20) if path.name.endswith(".gz") else raw
        with io.TextIOWrapper(binary, encoding="utf-8", newline="\n") as text:
            yield text
        raw.close()
        os.replace(partial, path)
    except BaseException:
        raw.close()
        partial.unlink(missing_ok=True)
        raise


class _GzipOffThread(io.RawIOBase):
    """gzip in a thread of its own (zlib releases the GIL), so that compressing the snapshot overlaps
    the export's object reads and JSON. Level 6, gzip's own default: level 9 took twice the time for a
    snapshot 1% smaller. mtime=0: the same state exports to the same bytes."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._gzip = gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=6)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="statectl-gzip")
        self._pending: deque[Future[int]] = deque()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        while len(self._pending) >= 4:  # at most a few chunks in memory
            self._pending.popleft().result()
        self._pending.append(self._thread.submit(self._gzip.write, chunk))
        return len(chunk)

    def flush(self) -> None:
        while self._pending:
            self._pending.popleft().result()

    def close(self) -> None:
        if not self.closed:
            try:
                self.flush()
                self._gzip.close()
            finally:
                self._thread.shutdown()
                super().close()


def iter_snapshot(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of a snapshot file, gzip or not (told by its first bytes, not its name)."""
    try:
        raw = path.open("rb")
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror or e}") from None
    with raw:
        gzipped = raw.read(2) == GZIP_MAGIC
        raw.seek(0)
        binary: io.BufferedIOBase = gzip.GzipFile(fileobj=raw, mode="rb") if gzipped else raw
        number = 0
        try:
            for number, line in enumerate(binary, start=1):
                text = line.decode("utf-8").rstrip("\n")
                if text:
                    yield number, text
        except (OSError, EOFError) as e:  # a damaged or truncated gzip stream
            raise DataError(f"line {number + 1}: the gzip stream is damaged or truncated ({e})") from None
        except UnicodeDecodeError:
            raise DataError(f"line {number}: not UTF-8 text") from None


# -- export --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportOptions:
    flt: RowFilter = field(default_factory=RowFilter)
    key_glob: str | None = None
    batch_size: int = DEFAULT_BATCH

    def check(self) -> None:
        if self.batch_size < 1:
            raise UsageError("--batch-size must be 1 or more")


@dataclass
class ExportReport:
    destination: str
    dry_run: bool = False
    keys: int = 0
    task_keys: int = 0
    asset_keys: int = 0
    objects_read: int = 0
    error_count: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)  # (row label, why its value is missing)

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.PARTIAL if self.error_count else ExitCode.OK

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": self.destination,
            "dry_run": self.dry_run,
            "keys": self.keys,
            "task_keys": self.task_keys,
            "asset_keys": self.asset_keys,
            "objects_read": self.objects_read,
            "unreadable": self.error_count,
            "errors": [{"key": label, "error": why} for label, why in self.errors],
        }


def _versions() -> dict[str, str | None]:
    def version(distribution: str) -> str | None:
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            return None

    return {
        "statectl_version": __version__,
        "airflow_version": version("apache-airflow-core") or version("apache-airflow"),
        "provider_version": version("apache-airflow-providers-common-io"),
    }


def _selection(flt: RowFilter, key_glob: str | None) -> dict[str, Any]:
    chosen = {
        "dag_id": flt.dag_id,
        "run_id": flt.run_id,
        "task_id": flt.task_id,
        "map_index": flt.map_index,
        "asset_name": flt.asset_name,
        "asset_uri": flt.asset_uri,
        "tasks": flt.wants_tasks,
        "assets": flt.wants_assets,
        "key": key_glob,
    }
    return {k: v for k, v in chosen.items() if v is not None}


def plan_export(store: StateStore, options: ExportOptions, destination: str = "-") -> ExportReport:
    """What an export would write (keys, and objects to read), from the rows alone: no object is read."""
    options.check()
    store.metastore.check_schema()
    report = ExportReport(destination, dry_run=True)
    for batch in _batches(store, options.flt, options.key_glob, options.batch_size):
        for row in batch:
            report.keys += 1
            report.task_keys += isinstance(row.scope, TaskScope)
            report.objects_read += codec.classify(row.value).object_url is not None
    report.asset_keys = report.keys - report.task_keys
    return report


def run_export(
    store: StateStore, options: ExportOptions, out: IO[str], *, destination: str = "-", progress: Progress | None = None
) -> ExportReport:
    """Write the header and one line per selected key to ``out``; unreadable values are lines with an
    ``error`` (never a silent gap) and make the exit code PARTIAL."""
    options.check()
    store.metastore.check_schema()
    config = store.config
    flt, report = options.flt, ExportReport(destination)
    source = {
        "backend": "objectstorage" if config.offloads else "metastore",
        "base_path": str(store.base) if store.base is not None else None,
        "compression": config.compression,
        "threshold": config.threshold,
    }
    out.write(
        header_line(
            exported_at=utcnow(), versions=_versions(), source=source, selection=_selection(flt, options.key_glob)
        )
        + "\n"
    )
    if progress is not None:
        progress("export", 0, total=store.metastore.count_rows(flt))
    with ThreadPoolExecutor(1, thread_name_prefix="statectl-export") as reader:
        pending: tuple[list[StateRow], Future[list[Result[Any]]]] | None = None
        for batch in _batches(store, flt, options.key_glob, options.batch_size):
            # The next batch's objects are read while this batch's lines are written.
            upcoming = (batch, reader.submit(read_values, store, batch))
            if pending is not None:
                _write_lines(pending[0], pending[1].result(), out, report, progress)
            pending = upcoming
        if pending is not None:
            _write_lines(pending[0], pending[1].result(), out, report, progress)
    out.flush()
    return report


def _batches(store: StateStore, flt: RowFilter, key_glob: str | None, size: int) -> Iterator[list[StateRow]]:
    batch: list[StateRow] = []
    for row in store.metastore.iter_rows(flt, batch_size=max(size, 100)):
        if key_glob is not None and not fnmatchcase(row.key, key_glob):
            continue
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _write_lines(
    rows: list[StateRow], values: list[Result[Any]], out: IO[str], report: ExportReport, progress: Progress | None
) -> None:
    lines = []
    for row, value in zip(rows, values, strict=True):
        stored = codec.classify(row.value)
        error = value.message if isinstance(value, StatectlError) else None
        record = Record(
            row.scope,
            row.key,
            None if error else value,
            row.expires_at,
            row.updated_at,
            row.writer,
            stored.location.value,
            stored.object_url,
            error,
        )
        lines.append(record.to_line())
        report.keys += 1
        if isinstance(row.scope, TaskScope):
            report.task_keys += 1
        else:
            report.asset_keys += 1
        if stored.object_url is not None and error is None:
            report.objects_read += 1
        if error is not None:
            report.error_count += 1
            if len(report.errors) < ERRORS_LISTED:
                report.errors.append((row.label, error))
    out.write("\n".join(lines) + "\n")
    if progress is not None:
        progress("export", len(rows))


# -- import --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportOptions:
    path: Path
    flt: RowFilter = field(default_factory=RowFilter)
    key_glob: str | None = None
    on_conflict: OnConflict = OnConflict.SKIP
    expiry: Expiry = field(default_factory=Expiry)
    batch_size: int = DEFAULT_BATCH

    def check(self) -> None:
        if self.batch_size < 1:
            raise UsageError("--batch-size must be 1 or more")


def _incoming(record: Record) -> Incoming:
    scope = record.scope
    if isinstance(scope, AssetScope) and scope.name:
        scope = AssetScope(name=scope.name)  # as workers address an asset: by name
    return Incoming(scope, record.key, record.value, record.expires_at, record.writer, error=record.error)


def _records(options: ImportOptions, header: dict[str, Any]) -> Iterator[list[Incoming]]:
    lines = iter_snapshot(options.path)
    first = next(lines, None)
    if first is None:
        raise DataError(f"{options.path} is empty: not a snapshot")
    header.update(parse_header(first[1]))
    batch: list[Incoming] = []
    flt, key_glob = options.flt, options.key_glob
    for number, text in lines:
        record = parse_line(text, number)
        if not flt.selects(record.scope, record.expires_at):
            continue
        if key_glob is not None and not fnmatchcase(record.key, key_glob):
            continue
        batch.append(_incoming(record))
        if len(batch) >= options.batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def run_import(
    store: StateStore,
    options: ImportOptions,
    *,
    dry_run: bool = False,
    confirm: Confirm[IngestReport] | None = None,
    progress: Progress | None = None,
) -> IngestReport:
    """Check the whole snapshot and plan against the target (nothing changes on bad input or, with
    --on-conflict fail, on a conflict), ask, then write it batch by batch."""
    options.check()
    ingest = Ingest(store, "import", options.on_conflict, options.expiry)
    store.check_reachable(ingest.base)
    header: dict[str, Any] = {}
    # The snapshot is parsed and checked a batch ahead, while the current batch's objects upload.
    report = run_ingest(
        ingest, lambda: read_ahead(_records(options, header)), dry_run=dry_run, confirm=confirm, progress=progress
    )
    report.header = {k: header.get(k) for k in ("exported_at", "statectl_version", "airflow_version", "source")}
    return report
